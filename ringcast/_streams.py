"""Server streams that outlive the failure of anything between them and the channel.

`resumed` is the loop every long-lived stream of the SDK runs (a subscription, a presence member's
enter stream, a presence subscription): open the stream on the healthiest gateway; once the gateway
sends its headers (it does when the stream is in place) count the gateway as answering; hand on
every response; after any failure — the gateway killed, paused or partitioned, the stream cut or
cancelled by it, the channel's owner failing over behind it — open it again, on the healthiest
gateway, with jittered backoff. A token that expires under the stream is renewed and the stream
opened again at once; a RATE_LIMITED refusal waits as long as the gateway says. The caller's
`open_call` is called for each stream, so it starts where the last one left off.

It ends when a stream ends OK and `resume_on_eof` is off, or when the stream is closed by its owner
(`closed()`); it raises the refusal (a RingcastError) for an answer that no retry changes, and
Unavailable when no gateway served it for `resume_timeout_s`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any

import grpc

from ringcast._endpoints import Outcome
from ringcast._errors import ClientClosed, Unavailable, from_rpc_error
from ringcast._transport import Stub, Transport, token_renewals_max
from ringcast.reasons import Reason


class _NoAnswer(Exception):
    pass


async def resumed(
    transport: Transport,
    open_call: Callable[[Stub], grpc.aio.UnaryStreamCall],
    *,
    what: str,
    resume_timeout_s: float,
    closed: Callable[[], bool],
    on_call: Callable[[grpc.aio.UnaryStreamCall | None], None] = lambda call: None,
    on_resume: Callable[[], None] = lambda: None,
    resume_on_eof: bool = True,
    hint: Callable[[], str] = lambda: "",
) -> AsyncGenerator[Any, None]:
    """Every response of the streams `open_call` opens, across failures (see the module). `on_call`
    is told of each stream opened (and None when it is over), so its owner can cancel it;
    `on_resume` of each stream opened again; `hint` ends the message of the Unavailable raised."""
    loop = asyncio.get_running_loop()
    failing_since: float | None = None
    attempts = 0
    renewals = 0
    limited_since: float | None = None
    previous: str | None = None
    while not closed():
        address = transport.pool.pick(loop.time(), avoid=previous)
        await transport.ensure_token()
        token = transport.token
        started = loop.time()
        call = open_call(transport.stub(address))
        on_call(call)
        try:
            # The gateway sends its headers once the stream is in place; a gateway that does not
            # within the attempt timeout is paused or cut off.
            try:
                await asyncio.wait_for(call.initial_metadata(), transport.attempt_timeout_s)
            except TimeoutError:
                raise _NoAnswer() from None
            if not call.done():
                transport.succeeded(address, loop.time() - started)
                # In place with the token held: a later expiry is a new one, not the same refusal
                # again (a quiet stream outlives any number of tokens).
                failing_since, attempts, renewals = None, 0, 0
            async for response in call:
                limited_since = None
                yield response
            if not resume_on_eof:
                return
            outcome, reason = Outcome.SOFT_FAILURE, str(Reason.STREAM_ENDED)
        except grpc.aio.AioRpcError as error:
            verdict = transport.classify(error)
            if verdict is None and transport.renewable(error) and renewals < token_renewals_max:
                # The token expired (or was revoked) under the stream: a new one, and open the
                # stream again at once (the gateway is fine).
                renewals += 1
                await transport.renew_token(token)
                on_resume()
                continue
            delay = transport.rate_limited_for(error)
            if verdict is None and delay is not None:
                # Too many streams at once (RATE_LIMITED): try again when the gateway says, for as
                # long as a failing stream would be resumed.
                limited_since = limited_since if limited_since is not None else loop.time()
                if loop.time() - limited_since > resume_timeout_s:
                    raise from_rpc_error(error) from None
                await asyncio.sleep(delay)
                continue
            if verdict is None:
                if error.code() == grpc.StatusCode.CANCELLED and closed():
                    return
                if error.code() == grpc.StatusCode.CANCELLED and transport.closed:
                    raise ClientClosed() from None
                if error.code() != grpc.StatusCode.CANCELLED:
                    raise from_rpc_error(error) from None
                # Not by us: the gateway (its server stopping, say) ended the stream. Resume.
                verdict = Outcome.SOFT_FAILURE, "CANCELLED"
            outcome, reason = verdict
        except asyncio.CancelledError:
            if closed():  # closed under us: the iteration ends
                return
            raise
        except _NoAnswer:
            outcome, reason = Outcome.HARD_FAILURE, str(Reason.NO_ANSWER)
        except grpc.aio.UsageError as error:
            raise ClientClosed() from error
        finally:
            call.cancel()
            on_call(None)
        transport.failed(address, outcome, reason)
        previous = address
        now = loop.time()
        failing_since = failing_since if failing_since is not None else now
        if now - failing_since > resume_timeout_s:
            raise Unavailable(
                f"{what}: no gateway served it for {resume_timeout_s:.0f} s (last: {reason}){hint()}",
                reason=reason,
                attempts=attempts,
                endpoints=transport.pool.addresses,
            )
        attempts += 1
        on_resume()
        await asyncio.sleep(transport.backoff(attempts))


__all__ = ["resumed"]
