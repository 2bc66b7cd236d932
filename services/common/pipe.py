"""The serving side of a PublishPipe stream (see `ringcast.pipe` for the calling side).

`serve_pipe` reads the caller's requests, starts each publish as soon as it arrives, and answers
each as it finishes: results that finish in the same turn of the event loop (one commit answers
many publishes), or while a response is being written, go together in the next response. At most
`inflight_max` publishes of one stream are worked on at once; past that it stops reading, so HTTP/2
flow control pushes back on the caller instead of memory growing here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from ringcast.reasons import Reason
from services.common.errors import ServiceError, abort

log = logging.getLogger("ringcast.pipe")

pipe_inflight_max = 4_096
"""Publishes of one PublishPipe stream worked on at once."""

pipe_results_per_response_max = 256
"""Results one response message carries."""

pipe_publishes_per_request_max = 256
"""Publishes one request message may carry; a request with more ends the stream (INVALID_ARGUMENT)."""


async def serve_pipe(
    context: grpc.aio.ServicerContext,
    requests: AsyncIterator[Any],
    handle: Callable[[Any], Awaitable[Any]],
    response_type: Any,
    result_type: Any,
    *,
    inflight_max: int = pipe_inflight_max,
) -> AsyncIterator[Any]:
    """Yield responses for the publishes read from `requests`.

    `handle(item)` works on one piped publish (`tag`, `publish`, `timeout_ms`, `trace_context`) and
    returns the response to send back, or raises a ServiceError to answer with.
    """
    finished: asyncio.Queue[Any] = asyncio.Queue()
    room = asyncio.Semaphore(inflight_max)
    running: set[asyncio.Task[None]] = set()
    active = 0  # publishes started and not yet in `finished`
    reading = True
    refused: ServiceError | None = None

    async def run(item: Any) -> None:
        nonlocal active
        try:
            result = result_type(tag=item.tag, response=await handle(item))
        except ServiceError as error:
            result = result_type(tag=item.tag, error=error.to_status())
        except Exception as error:  # a bug must fail one publish, not the stream
            log.exception("publish on a pipe failed")
            failure = ServiceError(grpc.StatusCode.INTERNAL, Reason.INTERNAL, f"{type(error).__name__}: {error}")
            result = result_type(tag=item.tag, error=failure.to_status())
        finally:
            room.release()
            active -= 1
        finished.put_nowait(result)

    async def read() -> None:
        nonlocal reading, active, refused
        try:
            async for request in requests:
                if len(request.publishes) > pipe_publishes_per_request_max:
                    raise ServiceError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        Reason.TOO_MANY_PUBLISHES,
                        f"{len(request.publishes)} publishes in one message; at most {pipe_publishes_per_request_max}",
                        {"limit": str(pipe_publishes_per_request_max)},
                    )
                for item in request.publishes:
                    await room.acquire()
                    active += 1
                    task = asyncio.create_task(run(item))
                    running.add(task)
                    task.add_done_callback(running.discard)
        except ServiceError as error:
            refused = error
        finally:
            reading = False
            finished.put_nowait(None)  # wakes the writer to notice the end

    reader = asyncio.create_task(read())
    try:
        while (reading or active or not finished.empty()) and refused is None:
            first = await finished.get()
            await asyncio.sleep(0)  # one turn: publishes answered by the same event join this response
            results = [] if first is None else [first]
            while not finished.empty() and len(results) < pipe_results_per_response_max:
                more = finished.get_nowait()
                if more is not None:
                    results.append(more)
            if results:
                yield response_type(results=results)
        if refused is not None:
            await abort(context, refused)
    finally:
        reader.cancel()
        for task in list(running):
            task.cancel()
