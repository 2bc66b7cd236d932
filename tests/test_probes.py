"""The HTTP probes every process serves beside /metrics (services/common/probes.py): liveness is
the event loop turning and nothing needed having died; readiness adds the gRPC server serving and
the service's own check. In process, over a real HTTP socket."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

import pytest

from services.common import probes


def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def beat_once() -> None:
    """One beat of the event loop (and so one run of the readiness check)."""

    async def beat() -> None:
        beating = asyncio.create_task(probes.beat_forever())
        await asyncio.sleep(0.05)
        beating.cancel()

    asyncio.run(beat())


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> probes._State:
    fresh = probes._State()
    monkeypatch.setattr(probes, "_state", fresh)
    return fresh


def test_a_process_is_ready_only_once_its_loop_beats_it_serves_and_its_check_passes(state: probes._State) -> None:
    port = probes.serve("127.0.0.1:0")
    assert get(port, "/readyz") == (503, "starting\n")
    unready = "no ring from placement yet"
    probes.set_readiness(lambda: unready)

    beat_once()
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz") == (503, f"{unready}\n")  # its own reason first
    unready = ""
    beat_once()
    assert get(port, "/readyz") == (503, "starting: gRPC is not serving\n")
    probes.set_serving(True)
    assert get(port, "/readyz") == (200, "ready\n")
    assert get(port, "/readyz", "HEAD") == (200, "")
    probes.set_serving(False)
    assert get(port, "/readyz") == (503, "stopping: gRPC is not serving\n")
    assert get(port, "/healthz") == (200, "ok\n")  # stopping is not dead
    status, text = get(port, "/metrics")
    assert status == 200 and "python_info" in text
    assert get(port, "/nothing")[0] == 404


def test_a_stuck_loop_or_a_dead_task_fails_liveness(state: probes._State) -> None:
    port = probes.serve("127.0.0.1:0")
    state.beat, state.serving = time.monotonic() - probes.beat_stale_s - 1, "serving"
    status, text = get(port, "/healthz")
    assert status == 503 and text.startswith("event loop stuck for")
    assert get(port, "/readyz")[0] == 503
    state.beat = time.monotonic()
    assert get(port, "/healthz") == (200, "ok\n")
    probes.set_failed("the ring watcher ended: RuntimeError()")
    assert get(port, "/healthz") == (503, "failed: the ring watcher ended: RuntimeError()\n")
    assert get(port, "/readyz")[0] == 503


def test_a_readiness_check_that_raises_makes_the_process_unready_not_dead(state: probes._State) -> None:
    def broken() -> str:
        raise KeyError("x")

    probes.set_readiness(broken)

    beat_once()
    state.serving = "serving"
    assert state.readiness(time.monotonic()) == "readiness check failed: KeyError('x')"
    assert state.liveness(time.monotonic()) == ""
