"""Every process's HTTP port beside its gRPC one (`--metrics-listen HOST:PORT`): `/metrics` for
Prometheus, and two probes an orchestrator can call for milliseconds of CPU instead of starting a
gRPC client (`ringcast health` costs ~0.45 s of CPU: an interpreter and gRPC's start-up).

Rules:

1. `/healthz` — liveness: 200 while the process's event loop turns (a beat at least every
   `beat_stale_s`) and nothing it needs has died (`server.not_serving`); otherwise 503 and why.
   A process that fails it should be restarted.
2. `/readyz` — readiness: 200 when it is live, its gRPC server is serving (after start-up, before
   a stop) and its own check says it can do its job; otherwise 503 and the reason. Each service
   sets its check (`set_readiness`): a store is ready when its engine answers, a channel node when
   it holds a valid lease under a ring that names it, a gateway when it has a ring with channel
   nodes, placement when it has read the membership. A process that fails it is alive: wait, do not
   restart it.
3. Checks run on the event loop once per beat (they read the service's state where it lives); the
   HTTP thread only reads the last answer, so a probe never waits for a busy loop and never races
   it. A probe's answer is therefore up to a beat old.
4. Answers are plain text, first line `ok` / `ready` or the reason; no secrets, so the port is
   plaintext even in a secure cluster (as /metrics is), and `HEAD` works too.
"""

from __future__ import annotations

import asyncio
import http.server
import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from services.common import metrics

log = logging.getLogger("ringcast.probes")

beat_interval_s = 1.0
"""How often the event loop beats and the readiness check runs."""

beat_stale_s = 10.0
"""A loop that has not beaten for this long is not live (a tick 10 s late is a stuck process)."""


class _State:
    def __init__(self) -> None:
        self.beat = 0.0  # monotonic time of the event loop's last beat (0: not started)
        self.serving = "starting"  # the gRPC server: "starting", "serving" or "stopping"
        self.failed = ""  # why the process can no longer do its job ("" while it can)
        self.unready = "starting"  # the readiness check's last answer ("" when ready)
        self.check: Callable[[], str] = lambda: ""

    def liveness(self, now: float) -> str:
        if self.failed:
            return f"failed: {self.failed}"
        if self.beat and now - self.beat > beat_stale_s:
            return f"event loop stuck for {now - self.beat:.1f} s"
        return ""

    def readiness(self, now: float) -> str:
        dead = self.liveness(now)
        if dead:
            return dead
        if not self.beat:
            return "starting"
        if self.unready:  # the service's own reason says most: what it waits for
            return self.unready
        if self.serving != "serving":
            return f"{self.serving}: gRPC is not serving"
        return ""


_state = _State()


def set_readiness(check: Callable[[], str]) -> None:
    """This service's own readiness: "" when it can do its job, otherwise why not (rule 2). Called
    on the event loop once per beat; it must be quick and must not block."""
    _state.check = check


def set_serving(serving: bool) -> None:
    """The gRPC server serves now (True), or stops (False)."""
    _state.serving = "serving" if serving else "stopping"


def set_failed(reason: str) -> None:
    _state.failed = _state.failed or reason


async def beat_forever() -> None:
    """The event loop's beat, and the readiness check after each (rule 3)."""
    while True:
        _state.beat = time.monotonic()
        try:
            _state.unready = _state.check()
        except Exception as error:  # a broken check makes the process unready, not dead
            _state.unready = f"readiness check failed: {error!r}"
        metrics.ready.set(0 if _state.readiness(_state.beat) else 1)
        await asyncio.sleep(beat_interval_s)


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "ringcast"

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def _answer(self, *, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        now = time.monotonic()
        if path == "/metrics":
            status, content_type, body = 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
        elif path in ("/healthz", "/readyz"):
            reason = _state.liveness(now) if path == "/healthz" else _state.readiness(now)
            status = 503 if reason else 200
            text = reason or ("ok" if path == "/healthz" else "ready")
            content_type, body = "text/plain; charset=utf-8", f"{text}\n".encode()
        else:
            status, content_type, body = 404, "text/plain; charset=utf-8", b"not found: /metrics, /healthz, /readyz\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the http.server API
        """Probes come every few seconds: not one log line each."""


def serve(listen: str) -> int:
    """Serve /metrics, /healthz and /readyz at `listen` (HOST:PORT) from a background thread; the
    port (0 in `listen`: one the system picks). Nothing, and 0, when `listen` is empty."""
    if not listen:
        return 0
    host, port = listen.rsplit(":", 1)
    server = http.server.ThreadingHTTPServer((host, int(port)), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http-probes", daemon=True).start()
    bound = int(server.server_address[1])
    log.info("metrics and probes at http://%s:%d/metrics, /healthz, /readyz", host, bound)
    return bound
