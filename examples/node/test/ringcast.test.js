'use strict';
// The example client against a real cluster: gateways from RINGCAST_GATEWAYS (default: `ringcast up`'s).
// Run with `node --test test/ringcast.test.js`; tests/integration/test_node_example.py runs it on a
// cluster of its own. Every test uses channels of its own, so it can run again on the same cluster.
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { promisify } = require('node:util');
const { after, before, test } = require('node:test');
const grpc = require('@grpc/grpc-js');
const { RingcastClient, RingcastError, gatewaysFromEnv } = require('../ringcast');

const gateways = gatewaysFromEnv();
const client = new RingcastClient({ gateways, deadlineMs: 30_000 });
const run = crypto.randomUUID().slice(0, 8);
before(async () => {
  // Fail fast, and say why, when there is no cluster at these addresses.
  const probe = new RingcastClient({ gateways, deadlineMs: 5_000 });
  try {
    await probe.getChannel(channelFor('probe'));
  } catch (error) {
    const hint = 'start a cluster with ./dev up, or set RINGCAST_GATEWAYS';
    throw new Error(`no gateway answers at ${gateways} (${hint}): ${error.message}`);
  } finally {
    probe.close();
  }
});
after(() => client.close());

function channelFor(name) {
  return `node-${name}-${run}`;
}

async function rejection(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  assert.fail('expected the call to fail');
}

/** Subscribes until `count` messages arrived, then stops; resolves with them. */
function collect(subscriber, channel, count, options = {}) {
  const stop = new AbortController();
  const messages = [];
  const gaps = [];
  const done = subscriber.subscribe(channel, {
    ...options,
    signal: stop.signal,
    onMessage(message) {
      messages.push(message);
      if (messages.length === count) stop.abort();
    },
    onGap: (gap) => gaps.push(gap),
  });
  return done.then((last) => ({ last, messages, gaps }));
}

test('a publish with ids is stored once: the same ids again get the same serials, as duplicates', async () => {
  const channel = channelFor('dedup');
  const messages = ['a', 'b', 'c'].map((data) => ({ id: `id-${data}`, data }));
  const first = await client.publish(channel, messages);
  assert.deepEqual(first.serials, [1, 2, 3]);
  assert.deepEqual(first.duplicates, [false, false, false]);
  assert.deepEqual(first.ids, ['id-a', 'id-b', 'id-c']);
  const again = await client.publish(channel, messages);
  assert.deepEqual(again.serials, [1, 2, 3]);
  assert.deepEqual(again.duplicates, [true, true, true]);
  const stored = await client.history(channel, { after: 0, limit: 10 });
  assert.deepEqual(
    stored.map((message) => [message.serial, message.id, message.data.toString()]),
    [
      [1, 'id-a', 'a'],
      [2, 'id-b', 'b'],
      [3, 'id-c', 'c'],
    ],
  );
});

test('messages without an id get a random one, kept by the client', async () => {
  const channel = channelFor('random-ids');
  const result = await client.publish(channel, [{ data: 'x' }, { data: Buffer.from('y') }]);
  assert.deepEqual(result.serials, [1, 2]);
  assert.equal(new Set(result.ids).size, 2);
  for (const id of result.ids) assert.match(id, /^[0-9a-f-]{36}$/);
  const stored = await client.history(channel);
  assert.deepEqual(
    stored.map((message) => message.id),
    result.ids,
  );
});

test('bad input is INVALID_ARGUMENT with the reason, thrown at once and never retried', async () => {
  const cases = [
    [() => client.publish('', [{ id: 'a', data: 'x' }]), 'CHANNEL_NAME_EMPTY'],
    [() => client.publish('bad name!', [{ id: 'a', data: 'x' }]), 'CHANNEL_NAME_INVALID'],
    // Sent raw: publish() would have given the message an id.
    [
      () => client.call('Publish', { channel: channelFor('raw'), messages: [{ data: Buffer.from('x') }] }),
      'MESSAGE_ID_MISSING',
    ],
    [() => client.history(''), 'CHANNEL_NAME_EMPTY'],
  ];
  for (const [call, reason] of cases) {
    const error = await rejection(call());
    assert.ok(error instanceof RingcastError, String(error));
    assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(error.codeName, 'INVALID_ARGUMENT');
    assert.equal(error.reason, reason);
    assert.equal(error.domain, 'ringcast');
    assert.equal(error.attempts, 1);
    assert.match(error.message, new RegExp(`^INVALID_ARGUMENT ${reason}: `));
  }
  assert.deepEqual(await client.history(channelFor('raw')), []);
});

test('history pages through what was published, in serial order', async () => {
  const channel = channelFor('history');
  const ids = Array.from({ length: 25 }, (_, index) => `h${index}`);
  for (let first = 0; first < ids.length; first += 10) {
    const batch = ids.slice(first, first + 10).map((id) => ({ id, data: `data of ${id}` }));
    await client.publish(channel, batch);
  }
  const pages = [];
  let last = 0;
  for (;;) {
    const page = await client.history(channel, { after: last, limit: 10 });
    if (page.length === 0) break;
    pages.push(page.length);
    last = page[page.length - 1].serial;
    const expected = ids.slice(last - page.length, last);
    assert.deepEqual(
      page.map((message) => message.id),
      expected,
    );
    assert.deepEqual(
      page.map((message) => message.data.toString()),
      expected.map((id) => `data of ${id}`),
    );
  }
  assert.deepEqual(pages, [10, 10, 5]);
  const newest = await client.history(channel, { reverse: true, limit: 3 });
  assert.deepEqual(
    newest.map((message) => message.serial),
    [25, 24, 23],
  );
  assert.equal((await client.getChannel(channel)).last_serial, 25);
});

test('a subscription from after=0 gets every message in order, then live ones', async () => {
  const channel = channelFor('subscribe');
  await client.publish(
    channel,
    ['s1', 's2', 's3'].map((id) => ({ id, data: id })),
  );
  const subscriber = new RingcastClient({ gateways });
  try {
    const following = collect(subscriber, channel, 6, { after: 0 });
    // Published while the subscription runs (it may or may not have reached the owner yet: the
    // stream starts after serial 0 either way).
    await client.publish(
      channel,
      ['s4', 's5', 's6'].map((id) => ({ id, data: id })),
    );
    const { last, messages, gaps } = await following;
    assert.equal(last, 6);
    assert.deepEqual(gaps, []);
    assert.deepEqual(
      messages.map((message) => [message.serial, message.id, message.data.toString()]),
      [1, 2, 3, 4, 5, 6].map((serial) => [serial, `s${serial}`, `s${serial}`]),
    );
    const middle = await collect(subscriber, channel, 2, { after: 4 });
    assert.deepEqual(
      middle.messages.map((message) => message.serial),
      [5, 6],
    );
  } finally {
    subscriber.close();
  }
});

test('a gateway that does not answer is skipped: calls and subscriptions go on at the next', async () => {
  const channel = channelFor('failover');
  // A port with nothing behind it: connection refused, UNAVAILABLE.
  const dead = '127.0.0.1:1';
  const startingAtTheDeadOne = () => new RingcastClient({ gateways: [dead, ...gateways], preferFirst: true });
  const publisher = startingAtTheDeadOne();
  const subscriber = startingAtTheDeadOne();
  try {
    const published = await publisher.publish(channel, [{ id: 'f1', data: 'x' }]);
    assert.deepEqual(published.serials, [1]);
    assert.notEqual(publisher.gateways[publisher.current], dead);
    const resumed = [];
    const { messages } = await collect(subscriber, channel, 1, {
      after: 0,
      onResume: (event) => resumed.push(event),
    });
    assert.deepEqual(
      messages.map((message) => message.id),
      ['f1'],
    );
    assert.equal(resumed.length, 1);
    assert.equal(resumed[0].error.code, grpc.status.UNAVAILABLE);
    assert.equal(resumed[0].after, 0);
  } finally {
    publisher.close();
    subscriber.close();
  }
});

test('an outage longer than the deadline is thrown as UNAVAILABLE after the retries', async () => {
  const nowhere = new RingcastClient({ gateways: ['127.0.0.1:1', '127.0.0.1:2'], deadlineMs: 1_000 });
  try {
    const started = Date.now();
    const error = await rejection(nowhere.publish(channelFor('nowhere'), [{ id: 'n1', data: 'x' }]));
    assert.equal(error.code, grpc.status.UNAVAILABLE);
    assert.ok(error.attempts > 1, `attempts: ${error.attempts}`);
    assert.ok(Date.now() - started < 5_000);
  } finally {
    nowhere.close();
  }
});

test('the command-line programs: publish.js twice with --id, then subscribe.js prints JSON lines', async () => {
  const channel = channelFor('cli');
  const node = (...args) =>
    promisify(execFile)(process.execPath, args, {
      cwd: path.join(__dirname, '..'),
      env: { ...process.env, RINGCAST_GATEWAYS: gateways.join(',') },
      timeout: 30_000,
    });
  const lines = (output) => output.stdout.trim().split('\n').map((line) => JSON.parse(line));
  const first = lines(await node('publish.js', channel, 'one', 'two', '--id', 'cli'));
  assert.deepEqual(first, [
    { id: 'cli-0', serial: 1, duplicate: false },
    { id: 'cli-1', serial: 2, duplicate: false },
  ]);
  const again = lines(await node('publish.js', channel, 'one', 'two', '--id', 'cli'));
  assert.deepEqual(
    again.map((line) => line.duplicate),
    [true, true],
  );
  const printed = lines(await node('subscribe.js', channel, '--after', '0', '--count', '2'));
  assert.deepEqual(
    printed.map(({ serial, id, data }) => ({ serial, id, data })),
    [
      { serial: 1, id: 'cli-0', data: 'one' },
      { serial: 2, id: 'cli-1', data: 'two' },
    ],
  );
});

test('presence: two members enter, a watcher sees the set then each change, one leaves', async () => {
  const channel = channelFor('room');
  const stop = new AbortController();
  const events = [];
  let synced = null;
  const watching = client.watchPresence(channel, {
    signal: stop.signal,
    onSync: (set) => {
      synced = set;
    },
    onChange: (change) => events.push(change),
  });
  const adaHolding = client.enterPresence(channel, { clientId: 'ada', connectionId: 'c-ada', data: 'hi', signal: stop.signal });
  const bobSerial = await new Promise((resolve, reject) => {
    client.enterPresence(channel, { clientId: 'bob', data: 'yo', signal: stop.signal, onEntered: resolve }).catch(reject);
  });
  const present = await waitFor(async () => {
    const set = await client.presence(channel);
    return set.members.length === 2 ? set : null;
  });
  assert.deepEqual(
    present.members.map(({ client_id, data }) => [client_id, data.toString()]),
    [
      ['ada', 'hi'],
      ['bob', 'yo'],
    ],
  );
  assert.ok(bobSerial > 0 && present.serial >= bobSerial);
  const left = await client.leavePresence(channel, 'c-ada', { clientId: 'ada' });
  await adaHolding; // its stream ended: it left
  assert.equal(await client.leavePresence(channel, 'c-ada', { clientId: 'ada' }), left); // again: nothing happens
  await waitFor(() => (events.some((change) => change.member.serial === left) ? true : null));
  assert.ok(synced !== null);
  const seen = [...synced.members.map((m) => `present ${m.client_id}`), ...events.map((c) => `${c.action} ${c.member.client_id}`)];
  assert.equal(seen.filter((line) => line.endsWith('ada')).at(-1), 'PRESENCE_ACTION_LEAVE ada');
  assert.ok(seen.some((line) => line.endsWith('bob')));
  stop.abort();
  await watching;
});

async function waitFor(check, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = await check();
    if (found) return found;
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

test('with no gateway to connect to, a call fails within seconds and says so', async () => {
  // Ports nothing listens on: every attempt is refused. Without the fail-fast rule the call would
  // retry until its 30 s deadline (25 attempts).
  const nowhere = new RingcastClient({ gateways: ['127.0.0.1:1', '127.0.0.1:2'], deadlineMs: 30_000 });
  const started = Date.now();
  const error = await rejection(nowhere.publish(channelFor('nowhere'), [{ data: 'x' }]));
  const tookMs = Date.now() - started;
  nowhere.close();
  assert.ok(error instanceof RingcastError, String(error));
  assert.equal(error.code, grpc.status.UNAVAILABLE);
  assert.match(error.message, /no gateway reachable \(127\.0\.0\.1:1, 127\.0\.0\.1:2\)/);
  assert.ok(tookMs < 8_000, `took ${tookMs} ms`);
});
