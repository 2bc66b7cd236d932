#!/usr/bin/env node
'use strict';
// node members.js CHANNEL [--enter DATA] [--client-id ID]
//
// A channel's member list, kept up to date: one JSON line each time it changes,
// {"serial": ..., "members": [{"client_id": ..., "connection_id": ..., "data": ...}, ...]},
// ordered by client id and connection id; the first line is the whole set when it starts. With
// --enter it also holds this client present (data DATA; --client-id on a cluster without tokens)
// until SIGINT / SIGTERM. Across any failure it resumes after the last change shown (and enters
// again with the same ids), so the list never skips or repeats a change.
const { parseArgs } = require('node:util');
const { runWithClient } = require('./cli');

const { values, positionals } = parseArgs({
  options: {
    enter: { type: 'string' },
    'client-id': { type: 'string', default: '' },
  },
  allowPositionals: true,
});
const [channel] = positionals;
if (!channel || positionals.length !== 1) {
  console.error('usage: node members.js CHANNEL [--enter DATA] [--client-id ID]');
  process.exitCode = 2;
} else {
  runWithClient({}, async (client) => {
    const stop = new AbortController();
    for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => stop.abort());
    const members = new Map();
    const key = (member) => `${member.client_id}\u0000${member.connection_id}`;
    const show = (serial) => {
      const list = [...members.values()]
        .sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0))
        .map(({ client_id, connection_id, data }) => ({ client_id, connection_id, data: data.toString('utf8') }));
      console.log(JSON.stringify({ serial, members: list }));
    };
    const watching = client.watchPresence(channel, {
      signal: stop.signal,
      onSync({ members: present, serial }) {
        for (const member of present) members.set(key(member), member);
        show(serial);
      },
      onChange({ action, member }) {
        if (action === 'PRESENCE_ACTION_LEAVE') members.delete(key(member));
        else members.set(key(member), member);
        show(member.serial);
      },
    });
    const entering =
      values.enter === undefined
        ? Promise.resolve()
        : client.enterPresence(channel, {
            clientId: values['client-id'],
            data: values.enter,
            signal: stop.signal,
            onEntered: (serial) => console.error(`entered ${channel} at presence serial ${serial}`),
          });
    await Promise.all([watching, entering]);
    return 0;
  });
}
