"""A real etcd server for integration tests: free loopback ports, a private data dir, no orphans.

`EtcdServer.start()` launches `/usr/bin/etcd` (or `$RINGCAST_ETCD_BINARY`) and waits until its
/health endpoint answers; `stop()` kills it (SIGKILL, then reaps it); `restart()` does both on the same
data dir and the same ports, which is what a crashed and restarted etcd looks like to its clients.
The child asks the kernel to SIGKILL it when its parent dies (PR_SET_PDEATHSIG), so a test run that
is itself killed leaves no etcd behind. The kernel means the parent *thread*: start etcd from a thread
that outlives it (the test's main thread), never from `asyncio.to_thread`, or it dies with that thread.
The request is made with util-linux's `setpriv --pdeathsig` when it is there, so Python can spawn
without running fork handlers (gRPC warns about forks while its threads run); else in `preexec_fn`.

The server runs with a 50 ms heartbeat and a 500 ms election timeout. etcd refuses lease TTLs below
1.5 election timeouts rounded up to whole seconds (2 s with its defaults); these settings let tests use
1 s leases.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from ringcast_tools.cluster.topology import free_ports

etcd_binary_default = "/usr/bin/etcd"
etcd_start_timeout_s = 15.0
etcd_stop_timeout_s = 5.0
etcd_health_poll_interval_s = 0.02

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGKILL me when my parent dies (Linux only)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """A loopback TCP port nothing listens on right now, reserved for a while (`free_ports`)."""
    return free_ports(1)[0]


class EtcdServer:
    """One single-member etcd cluster on loopback, owned by the test that started it."""

    def __init__(self, data_dir: Path, *, binary: str | None = None) -> None:
        self.data_dir = data_dir
        self.binary = binary or os.environ.get("RINGCAST_ETCD_BINARY", etcd_binary_default)
        self.client_port = free_port()
        self.peer_port = free_port()
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.last_start_s = 0.0
        """How long the last start took, from exec to a healthy answer."""
        self._started_at = 0.0

    @property
    def endpoint(self) -> str:
        """What `Etcd.connect` takes: host:port of the client URL."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *, wait: bool = True) -> None:
        """Launch etcd; with `wait`, return once it is healthy (else call `wait_healthy` later)."""
        if shutil.which(self.binary) is None:
            raise RuntimeError(f"etcd binary not found: {self.binary}")
        assert not self.running, "etcd already running"
        client_url = f"http://127.0.0.1:{self.client_port}"
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        command = [
            self.binary,
            "--name=default",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--log-level=warn",
            "--logger=zap",
        ]
        setpriv = shutil.which("setpriv")
        self._started_at = time.monotonic()
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [setpriv, "--pdeathsig", "KILL", "--", *command] if setpriv else command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=None if setpriv else _die_with_parent,
            )
        if wait:
            self.wait_healthy()

    def wait_healthy(self) -> None:
        """Return once etcd's /health says true (safe to call from any thread); kill it on failure."""
        try:
            self._wait_healthy(self._started_at + etcd_start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.last_start_s = time.monotonic() - self._started_at

    def _wait_healthy(self, deadline: float) -> None:
        url = f"http://127.0.0.1:{self.client_port}/health"
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}: {self.log_tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError, ValueError),
                urllib.request.urlopen(url, timeout=1.0) as response,
            ):
                if b'"health":"true"' in response.read():
                    return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"etcd not healthy within {etcd_start_timeout_s} s: {self.log_tail()}")
            time.sleep(etcd_health_poll_interval_s)

    def stop(self) -> None:
        """SIGKILL etcd and reap it. etcd fsyncs its WAL before answering, so nothing acked is lost."""
        process = self.process
        self.process = None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(timeout=etcd_stop_timeout_s)

    def pause(self) -> None:
        """SIGSTOP: etcd keeps its sockets open but answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def restart(self, down_s: float = 0.0) -> None:
        """Kill etcd, stay down for `down_s`, start it again on the same data dir and ports."""
        self.stop()
        if down_s > 0:
            time.sleep(down_s)
        self.start()

    def wipe(self) -> None:
        """Kill etcd, delete its data directory, start it again on the same ports: etcd has lost
        everything, and its revisions start again from 1 (an operator's worst day)."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.start()

    def call(self, path: str, body: Mapping[str, object]) -> dict[str, object]:
        """One call to etcd's JSON gateway (`/v3/...`), so tests can reach past the adapter under test."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.client_port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5.0) as response:
            answer: dict[str, object] = json.loads(response.read())
            return answer

    def put(self, key: str, value: bytes) -> int:
        """Write a key with no lease; the revision of the write."""
        encoded = {"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value).decode()}
        header = self.call("/v3/kv/put", encoded)["header"]
        assert isinstance(header, dict)
        return int(header["revision"])

    def compact(self, revision: int) -> None:
        """Forget the history before `revision`: watches and reads from before it then fail."""
        self.call("/v3/kv/compaction", {"revision": revision, "physical": True})

    def log_tail(self, characters: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return "(no etcd log)"
