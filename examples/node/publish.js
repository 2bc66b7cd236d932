#!/usr/bin/env node
'use strict';
// node publish.js CHANNEL DATA... [--id ID] [--name NAME]
//
// Publishes one batch, one message per DATA, and prints one JSON line per message:
// {"id": ..., "serial": ..., "duplicate": ...}. With --id, the messages get the ids ID-0, ID-1, ...
// (ID itself for a single message), so running the same command again is answered with the same
// serials and "duplicate": true. Gateways: RINGCAST_GATEWAYS (comma-separated host:port).
const { parseArgs } = require('node:util');
const { runWithClient } = require('./cli');

/** The ids --id asks for; without it, none (the client gives each message a random one). */
function idsFor(prefix, count) {
  if (!prefix) return Array(count).fill(undefined);
  return count === 1 ? [prefix] : Array.from({ length: count }, (_, index) => `${prefix}-${index}`);
}

const { values, positionals } = parseArgs({
  options: { id: { type: 'string' }, name: { type: 'string', default: '' } },
  allowPositionals: true,
});
const [channel, ...data] = positionals;
if (!channel || data.length === 0) {
  console.error('usage: node publish.js CHANNEL DATA... [--id ID] [--name NAME]');
  process.exitCode = 2;
} else {
  runWithClient({}, async (client) => {
    const ids = idsFor(values.id, data.length);
    const messages = data.map((text, index) => ({ id: ids[index], name: values.name, data: text }));
    const result = await client.publish(channel, messages);
    result.ids.forEach((id, index) => {
      console.log(JSON.stringify({ id, serial: result.serials[index], duplicate: result.duplicates[index] }));
    });
    return 0;
  });
}
