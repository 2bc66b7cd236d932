'use strict';
// A small ringcast client for Node.js, built at run time from the repo's protos (no generated code).
//
// The rules it follows are the public API's (protos/ringcast/v1/realtime_service.proto):
// - every message carries a client-chosen id, so a publish can be retried safely: the platform
//   answers a repeated id with the original serial and duplicates[i] = true;
// - only UNAVAILABLE is retried (and a per-attempt DEADLINE_EXCEEDED, which is the same thing seen
//   from the client: no answer in time), always with the same ids, on the next gateway, with
//   jittered exponential backoff, until an overall deadline; INVALID_ARGUMENT and every other code
//   is thrown at once, with the google.rpc.ErrorInfo reason the gateway put in the status details;
// - a subscription that breaks for any reason but INVALID_ARGUMENT resumes on the next gateway
//   from the last serial it delivered, and drops anything at or below it, so the consumer sees each
//   message once and in order.

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

// The repo's protos: the public package ringcast.v1 only, and the google.rpc files it imports
// (vendored there, so loading works offline).
const PROTOS = path.resolve(__dirname, '../../protos');
const INCLUDE_DIRS = [PROTOS];

// Field names as in the protos (after_serial, not afterSerial); uint64 serials as JS numbers (exact
// up to 2^53); oneofs tell which member is set (`item.item` is "message" or "gap").
const LOAD_OPTIONS = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };

const definition = protoLoader.loadSync('ringcast/v1/realtime_service.proto', {
  ...LOAD_OPTIONS,
  includeDirs: INCLUDE_DIRS,
});
const RealtimeService = grpc.loadPackageDefinition(definition).ringcast.v1.RealtimeService;

// The two types an error's details are decoded with: google.rpc.Status (the grpc-status-details-bin
// trailer) and the google.rpc.ErrorInfo packed in it. @grpc/proto-loader builds on protobufjs but
// hands out no decoders for plain messages, so they are loaded from the same vendored files here.
const errorTypes = (() => {
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => {
    // Files under google/protobuf/ resolve to the copies protobufjs bundles.
    if (target.startsWith('google/protobuf/')) return target;
    return path.join(PROTOS, target);
  };
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
  return { status: root.lookupType('google.rpc.Status'), errorInfo: root.lookupType('google.rpc.ErrorInfo') };
})();

const ERROR_INFO_TYPE_URL = 'type.googleapis.com/google.rpc.ErrorInfo';
const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

const defaults = Object.freeze({
  deadlineMs: 30_000, // a whole call, retries included
  attemptMs: 5_000, // one attempt at one gateway
  backoffMinMs: 50,
  backoffMaxMs: 2_000,
  unreachableMs: 3_000, // give up this soon when no gateway can even be connected to
});

const CHANNEL_OPTIONS = {
  // Reconnect soon after a gateway comes back (grpc-js waits up to 120 s by default).
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 2_000,
  // A gateway that dies closes its connections, and its streams end at once; one that hangs with
  // its connections open (SIGSTOP, a partition) is noticed by pings: no answer within 5 s of a ping
  // ends its streams. The gateways accept a ping every 5 s (services/common/server.py).
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
};

/** A failed call: the gRPC code, and the platform's reason (UPPER_SNAKE_CASE) when it gave one. */
class RingcastError extends Error {
  constructor(grpcError, { gateway, attempts }) {
    const info = errorInfoOf(grpcError);
    const codeName = CODE_NAMES[grpcError.code] ?? String(grpcError.code);
    const reason = info ? ` ${info.reason}` : '';
    super(`${codeName}${reason}: ${grpcError.details} (gateway ${gateway}, attempt ${attempts})`);
    this.name = 'RingcastError';
    this.code = grpcError.code;
    this.codeName = codeName;
    this.reason = info?.reason ?? '';
    this.domain = info?.domain ?? '';
    this.metadata = info?.metadata ?? {};
    this.details = grpcError.details;
    this.gateway = gateway;
    this.attempts = attempts;
    this.cause = grpcError;
  }
}

/** The google.rpc.ErrorInfo in a failed call's grpc-status-details-bin trailer, or null. */
function errorInfoOf(grpcError) {
  const [bytes] = grpcError.metadata?.get('grpc-status-details-bin') ?? [];
  if (!bytes) return null;
  const status = errorTypes.status.decode(bytes);
  const detail = status.details.find((any) => any.type_url === ERROR_INFO_TYPE_URL);
  if (!detail) return null;
  return errorTypes.errorInfo.toObject(errorTypes.errorInfo.decode(detail.value), { defaults: true });
}

/** Whether a failed attempt never reached a gateway (refused, unresolvable, no route): grpc-js says
 * UNAVAILABLE with "No connection established" (or the connect error) in its details. */
function unreachable(grpcError) {
  return (
    grpcError.code === grpc.status.UNAVAILABLE &&
    /No connection established|ECONNREFUSED|ENOTFOUND|EHOSTUNREACH|ENETUNREACH|failed to connect/i.test(grpcError.details ?? '')
  );
}

const renewalsMax = 3;
const streamInPlaceMs = 1_000;

/** Stream endings that resuming cannot cure: bad input, or a caller the gateway will not serve. */
const refusedForGood = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.UNAUTHENTICATED,
  grpc.status.PERMISSION_DENIED,
]);

function retryable(grpcError) {
  return grpcError.code === grpc.status.UNAVAILABLE || grpcError.code === grpc.status.DEADLINE_EXCEEDED;
}

function jittered(backoffMs) {
  return backoffMs * (0.5 + Math.random() / 2);
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
  });
}

function toBuffer(data) {
  if (data === undefined || data === null) return Buffer.alloc(0);
  if (typeof data === 'string') return Buffer.from(data, 'utf8');
  return Buffer.from(data);
}

class RingcastClient {
  /**
   * @param {object} options
   * @param {string[]} options.gateways host:port of every gateway; calls go to one and fail over to the next.
   * @param {number} [options.deadlineMs] how long one call may take, retries included.
   * @param {number} [options.attemptMs] how long one attempt at one gateway may take.
   * @param {number} [options.unreachableMs] give a call up this soon when no gateway could be
   *   connected to at all (every one refused or unresolvable), instead of retrying to the deadline.
   * @param {boolean} [options.preferFirst] start at gateways[0] rather than at a random one.
   * @param {string|Buffer} [options.ca] the CA (PEM) the gateways' TLS certificates are checked with;
   *   without it the client talks plaintext (a cluster started with `ringcast up --insecure`).
   * @param {string} [options.token] a bearer token sent with every call (`ringcast token --sub ID`).
   * @param {() => Promise<string>} [options.tokenProvider] fetches a new token when a gateway refuses
   *   the one held as expired or revoked; the call is retried, the subscription resumes after its
   *   last serial.
   */
  constructor({
    gateways,
    deadlineMs,
    attemptMs,
    backoffMinMs,
    backoffMaxMs,
    unreachableMs,
    preferFirst = false,
    ca,
    token,
    tokenProvider,
  }) {
    if (!Array.isArray(gateways) || gateways.length === 0) throw new TypeError('gateways: give at least one host:port');
    this.gateways = [...gateways];
    this.deadlineMs = deadlineMs ?? defaults.deadlineMs;
    this.attemptMs = attemptMs ?? defaults.attemptMs;
    this.backoffMinMs = backoffMinMs ?? defaults.backoffMinMs;
    this.backoffMaxMs = backoffMaxMs ?? defaults.backoffMaxMs;
    this.unreachableMs = unreachableMs ?? defaults.unreachableMs;
    this.token = token;
    this.tokenProvider = tokenProvider;
    const credentials = ca ? grpc.credentials.createSsl(Buffer.from(ca)) : grpc.credentials.createInsecure();
    this.stubs = this.gateways.map((address) => new RealtimeService(address, credentials, CHANNEL_OPTIONS));
    this.current = preferFirst ? 0 : Math.floor(Math.random() * this.gateways.length);
  }

  /** What every call carries: the token, when there is one. */
  metadata() {
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set('authorization', `Bearer ${this.token}`);
    return metadata;
  }

  /**
   * After a refusal: true when a new token from the provider may cure it (and it now holds one).
   * At most `renewalsMax` in a row, so a provider that hands out bad tokens cannot loop for ever.
   */
  async renewed(grpcError, renewals) {
    const reason = errorInfoOf(grpcError)?.reason;
    if (!this.tokenProvider || grpcError.code !== grpc.status.UNAUTHENTICATED || renewals >= renewalsMax) return false;
    if (reason !== 'TOKEN_EXPIRED' && reason !== 'TOKEN_REVOKED') return false;
    this.token = await this.tokenProvider();
    return true;
  }

  /** Moves on from the gateway at `index` (unless a concurrent call already did). */
  failedOver(index) {
    if (this.current === index) this.current = (index + 1) % this.gateways.length;
  }

  /**
   * Publishes a batch to one channel. A message without an id gets a random one, which the
   * retries keep. Returns {serials, duplicates, ids}, each in message order.
   */
  async publish(channel, messages, { deadlineMs } = {}) {
    const batch = messages.map((message) => ({
      ...message,
      id: message.id || crypto.randomUUID(),
      data: toBuffer(message.data),
    }));
    const response = await this.call('Publish', { channel, messages: batch }, { deadlineMs });
    return { serials: response.serials, duplicates: response.duplicates, ids: batch.map((message) => message.id) };
  }

  /** One page of committed messages after serial `after` (at most `limit`, at most 1000). */
  async history(channel, { after = 0, limit = 100, reverse = false, deadlineMs } = {}) {
    const response = await this.call('History', { channel, after_serial: after, limit, reverse }, { deadlineMs });
    return response.messages;
  }

  /** The channel's owner node, epoch and last committed serial. */
  async getChannel(channel, { deadlineMs } = {}) {
    return this.call('GetChannel', { channel }, { deadlineMs });
  }

  /**
   * Any unary RPC of RealtimeService, as is (no ids filled in), with the retry rules above.
   * Throws a RingcastError; its `attempts` tells how many attempts were made (1: not retried).
   */
  async call(method, request, { deadlineMs } = {}) {
    const started = Date.now();
    const deadline = started + (deadlineMs ?? this.deadlineMs);
    const unreached = new Set(); // gateways whose last attempt could not connect
    let backoffMs = this.backoffMinMs;
    let renewals = 0;
    for (let attempts = 1; ; attempts++) {
      const index = this.current;
      try {
        return await this.attempt(index, method, request, Math.min(deadline, Date.now() + this.attemptMs));
      } catch (grpcError) {
        if (grpcError.code === undefined) throw grpcError; // not a gRPC failure: a bug, not an outage
        if (await this.renewed(grpcError, renewals++)) continue;
        if (unreachable(grpcError)) unreached.add(index);
        else unreached.delete(index);
        const pauseMs = jittered(backoffMs);
        const noneReachable = unreached.size === this.gateways.length && Date.now() - started >= this.unreachableMs;
        if (noneReachable) {
          grpcError.details = `no gateway reachable (${this.gateways.join(', ')}) for ${Date.now() - started} ms: ${grpcError.details}`;
        }
        if (!retryable(grpcError) || noneReachable || Date.now() + pauseMs >= deadline) {
          throw new RingcastError(grpcError, { gateway: this.gateways[index], attempts });
        }
        this.failedOver(index);
        await sleep(pauseMs);
        backoffMs = Math.min(backoffMs * 2, this.backoffMaxMs);
      }
    }
  }

  /** One call at one gateway; rejects with grpc-js's error. */
  attempt(index, method, request, deadline) {
    return new Promise((resolve, reject) => {
      this.stubs[index][method](request, this.metadata(), { deadline }, (error, response) => {
        if (error) reject(error);
        else resolve(response);
      });
    });
  }

  /**
   * Follows a channel: every message after serial `after` (default: only new ones), in order, to
   * onMessage(message), and on to the next gateway whenever a stream breaks. Resolves with the last
   * serial delivered once `signal` aborts; rejects with a RingcastError on INVALID_ARGUMENT, or
   * with what onMessage or onGap threw.
   *
   * @param {object} handlers
   * @param {number} [handlers.after] deliver messages with serials above this one (0: all).
   * @param {(message: object) => void} handlers.onMessage called once per message, in serial order.
   * @param {(gap: {next_serial: number, reason: string}) => void} [handlers.onGap] messages no longer retained.
   * @param {(event: {gateway: string, after: number, error: Error|null}) => void} [handlers.onResume]
   *   told before each resumption, with the gateway it resumes on and why the last stream ended.
   * @param {AbortSignal} [handlers.signal] stops the subscription.
   */
  async subscribe(channel, { after, onMessage, onGap = () => {}, onResume = () => {}, signal } = {}) {
    // Resuming needs a serial to resume after, so "only new ones" is pinned to the last serial now.
    let last = after ?? (await this.getChannel(channel)).last_serial;
    await this.followed(
      (index, answered) =>
        this.stream(index, channel, last, signal, (item) => {
          answered();
          if (item.item === 'gap') {
            last = Math.max(last, item.gap.next_serial - 1);
            onGap(item.gap);
          } else if (item.message.serial > last) {
            last = item.message.serial;
            onMessage(item.message);
          }
        }),
      signal,
      { onRetry: (gateway, error) => onResume({ gateway, after: last, error }) },
    );
    return last;
  }

  /** One Subscribe stream at one gateway (see openStream). */
  stream(index, channel, after, signal, onItem) {
    return this.openStream(index, 'Subscribe', { channel, after_serial: after }, signal, onItem);
  }

  /**
   * One server stream at one gateway; resolves with the error that ended it (null: a clean end).
   * Rejects with what a handler threw, after cancelling the stream.
   */
  openStream(index, method, request, signal, onItem) {
    return new Promise((resolve, reject) => {
      const call = this.stubs[index][method](request, this.metadata());
      const cancel = () => call.cancel();
      signal?.addEventListener('abort', cancel, { once: true });
      const finish = (error) => {
        signal?.removeEventListener('abort', cancel);
        resolve(error);
      };
      call.on('data', (item) => {
        try {
          onItem(item);
        } catch (consumerError) {
          signal?.removeEventListener('abort', cancel);
          call.cancel();
          reject(consumerError);
        }
      });
      call.on('error', finish);
      call.on('end', () => finish(null));
    });
  }

  /**
   * Follows a stream across failures: `open(index, answered)` opens it at a gateway (resolving like
   * openStream, and calling answered() on each item); after a failure it is opened again at the next
   * gateway, with backoff (onRetry(gateway, error) is told), until `signal` aborts or a stream ends
   * cleanly (when `endsOnEof`). Throws a RingcastError for a refusal no retry changes
   * (`refusedForGood`, unless `keepGoing(error)` says to go on). A token refused as expired is renewed
   * and the stream opened again at once.
   */
  async followed(open, signal, { endsOnEof = false, keepGoing = () => false, onRetry = () => {} } = {}) {
    let backoffMs = this.backoffMinMs;
    let attempts = 0;
    let renewals = 0;
    while (!signal?.aborted) {
      const index = this.current;
      attempts++;
      const started = Date.now();
      const ended = await open(index, () => {
        attempts = 0;
        backoffMs = this.backoffMinMs;
      });
      if (signal?.aborted) break;
      if (ended === null && endsOnEof) return;
      if (Date.now() - started >= streamInPlaceMs) renewals = 0;
      if (ended && (await this.renewed(ended, renewals++))) continue;
      if (ended && refusedForGood.has(ended.code) && !keepGoing(ended)) {
        throw new RingcastError(ended, { gateway: this.gateways[index], attempts });
      }
      this.failedOver(index);
      await sleep(jittered(backoffMs), signal);
      backoffMs = Math.min(backoffMs * 2, this.backoffMaxMs);
      if (!signal?.aborted) onRetry(this.gateways[this.current], ended);
    }
  }

  /**
   * Holds this client present in a channel's presence set (docs/presence.md) until `signal` aborts
   * or the member leaves (leavePresence, from here or elsewhere): the first time it is entered,
   * onEntered(serial) is called. After any failure it enters again on the next gateway with the same
   * ids, which changes nothing within the namespace's grace period (15 s by default).
   *
   * @param {object} options
   * @param {string} [options.connectionId] the member's connection (default: a random one).
   * @param {string} [options.clientId] the member's client id on a cluster without tokens.
   * @param {string|Buffer} [options.data] the member's data.
   */
  async enterPresence(channel, { connectionId = crypto.randomUUID(), clientId = '', data = '', signal, onEntered = () => {} } = {}) {
    const request = { channel, connection_id: connectionId, client_id: clientId, data: toBuffer(data) };
    let entered = false;
    await this.followed(
      (index, answered) =>
        this.openStream(index, 'EnterPresence', request, signal, (item) => {
          answered();
          if (item.serial && !entered) {
            entered = true;
            onEntered(item.serial);
          }
        }),
      signal,
      // NOT_PRESENT: its grace ran out while it could not reach the platform; enter again.
      { endsOnEof: true, keepGoing: (error) => entered && errorInfoOf(error)?.reason === 'NOT_PRESENT' },
    );
    return connectionId;
  }

  /** Leaves a channel's presence set now (a member not present: nothing happens). */
  async leavePresence(channel, connectionId, { clientId = '', deadlineMs } = {}) {
    const request = { channel, connection_id: connectionId, client_id: clientId };
    return (await this.call('LeavePresence', request, { deadlineMs })).serial;
  }

  /** A channel's members, and the presence serial they are valid at. */
  async presence(channel, { deadlineMs } = {}) {
    return this.call('GetPresence', { channel }, { deadlineMs });
  }

  /**
   * Follows a channel's presence set until `signal` aborts: onSync({members, serial}) with the whole
   * set first, then onChange(change) for every change after it (change.action is
   * PRESENCE_ACTION_ENTER, _UPDATE or _LEAVE; change.member.serial its serial), once each and in
   * order, resuming after the last serial seen across any failure.
   */
  async watchPresence(channel, { signal, onSync = () => {}, onChange = () => {} } = {}) {
    let last = 0;
    let synced = false;
    await this.followed((index, answered) => {
      const parts = [];
      const request = synced ? { channel, after_serial: last } : { channel, sync: true };
      return this.openStream(index, 'SubscribePresence', request, signal, (item) => {
        answered();
        if (item.sync && !synced) {
          parts.push(...item.sync.members);
          if (item.sync.complete) {
            synced = true;
            last = item.sync.serial;
            onSync({ members: parts, serial: last });
          }
        } else if (item.change && synced && item.change.member.serial > last) {
          last = item.change.member.serial;
          onChange(item.change);
        }
      });
    }, signal);
    return last;
  }

  close() {
    for (const stub of this.stubs) stub.close();
  }
}

/**
 * Security from the environment: RINGCAST_CA (a PEM file: TLS checked against it) and RINGCAST_TOKEN.
 * Nothing set: plaintext, no token (a cluster started with `ringcast up --insecure`).
 */
function securityFromEnv(env = process.env) {
  const options = {};
  if (env.RINGCAST_CA) options.ca = fs.readFileSync(env.RINGCAST_CA);
  if (env.RINGCAST_TOKEN) options.token = env.RINGCAST_TOKEN;
  return options;
}

/** Gateways from RINGCAST_GATEWAYS (comma-separated host:port), else those of `ringcast up`. */
function gatewaysFromEnv(env = process.env) {
  const text = env.RINGCAST_GATEWAYS || '127.0.0.1:7409,127.0.0.1:7410';
  return text
    .split(',')
    .map((address) => address.trim())
    .filter(Boolean);
}

module.exports = { RingcastClient, RingcastError, gatewaysFromEnv, securityFromEnv, errorInfoOf, defaults };
