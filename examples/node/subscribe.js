#!/usr/bin/env node
'use strict';
// node subscribe.js CHANNEL [--after SERIAL] [--count N] [--prefer-first]
//
// Follows a channel and prints one JSON line per message, in serial order:
// {"serial": ..., "id": ..., "name": ..., "data": ..., "timestamp_ms": ...} (data as UTF-8 text),
// and {"gap": {"next_serial": ..., "reason": ...}} where the platform no longer has what was asked
// for. Without --after it prints only new messages. When a stream breaks it resumes on the next
// gateway after the last serial printed, and says so on stderr. --prefer-first starts at the first
// gateway of RINGCAST_GATEWAYS (comma-separated host:port) instead of a random one. Stops after
// --count messages, or on SIGINT / SIGTERM.
const { parseArgs } = require('node:util');
const { runWithClient } = require('./cli');

const { values, positionals } = parseArgs({
  options: {
    after: { type: 'string' },
    count: { type: 'string' },
    'prefer-first': { type: 'boolean', default: false },
  },
  allowPositionals: true,
});
const [channel] = positionals;
if (!channel || positionals.length !== 1) {
  console.error('usage: node subscribe.js CHANNEL [--after SERIAL] [--count N] [--prefer-first]');
  process.exitCode = 2;
} else {
  runWithClient({ preferFirst: values['prefer-first'] }, async (client) => {
    const stop = new AbortController();
    for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => stop.abort());
    const count = values.count === undefined ? Infinity : Number(values.count);
    let received = 0;
    console.error(`subscribing to ${channel} at ${client.gateways[client.current]}`);
    await client.subscribe(channel, {
      after: values.after === undefined ? undefined : Number(values.after),
      signal: stop.signal,
      onMessage(message) {
        const { serial, id, name, timestamp_ms } = message;
        console.log(JSON.stringify({ serial, id, name, data: message.data.toString('utf8'), timestamp_ms }));
        if (++received >= count) stop.abort();
      },
      onGap(gap) {
        console.log(JSON.stringify({ gap: { next_serial: gap.next_serial, reason: gap.reason } }));
      },
      onResume({ gateway, after, error }) {
        const why = error ? error.message : 'the stream ended';
        console.error(`resuming after serial ${after} at ${gateway} (${why})`);
      },
    });
    return 0;
  });
}
