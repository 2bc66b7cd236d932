'use strict';
// What publish.js and subscribe.js share: a client on RINGCAST_GATEWAYS (with RINGCAST_CA and
// RINGCAST_TOKEN for a secure cluster), errors as one line on stderr, and the exit code.
const { RingcastClient, gatewaysFromEnv, securityFromEnv } = require('./ringcast');

/** Runs `body(client)`, which returns the exit code; a thrown error prints `error: ...` and exits 1. */
async function runWithClient(options, body) {
  const client = new RingcastClient({ gateways: gatewaysFromEnv(), ...securityFromEnv(), ...options });
  try {
    process.exitCode = await body(client);
  } catch (error) {
    console.error(`error: ${error.message}`);
    process.exitCode = 1;
  } finally {
    client.close();
  }
}

module.exports = { runWithClient };
