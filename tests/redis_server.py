"""A real redis-server for tests: on a free loopback port, in its own directory, syncing every write.

    with RedisServer(tmp_path / "redis") as server:
        client = open_redis(server.url)

It runs the same flags as `ringcast up --engine redis` (`ringcast_tools.cluster.topology.redis_argv`), dies
with the test process (PR_SET_PDEATHSIG), and is killed when the block ends.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

from ringcast_tools.cluster.launcher import pdeathsig_prefix
from ringcast_tools.cluster.topology import free_ports, redis_argv

ready_timeout_s = 20.0


class RedisServer:
    """With `acl` (an ACL file's text and the user and password to check it with), it loads that file."""

    def __init__(self, directory: Path, acl: tuple[str, str, str] | None = None) -> None:
        self.directory = directory
        self.address = f"127.0.0.1:{free_ports(1)[0]}"
        self.acl = acl
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.address}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "redis.log").open("ab")
        argv = redis_argv(self.address, str(self.directory))
        login: dict[str, str] = {}
        if self.acl is not None:
            text, user, password = self.acl
            (self.directory / "users.acl").write_text(text)
            argv = (*argv, "--aclfile", str(self.directory / "users.acl"))
            login = {"username": user, "password": password}
        self.process = subprocess.Popen([*pdeathsig_prefix(), *argv], stdout=log, stderr=log)
        host, port = self.address.rsplit(":", 1)
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                with redis.Redis(host=host, port=int(port), socket_timeout=1, **login) as client:
                    if client.ping():
                        return self
            except redis.ConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(self.directory / 'redis.log').read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
