"""The compose stack under podman, for the compose tier: up, wait for every healthcheck, kill and
start containers, read logs and files inside them, down, and check nothing is left.

Podman 4.3 runs healthchecks from systemd timers, which these machines do not have, and
podman-compose ignores `depends_on` conditions: `wait_healthy` runs each container's healthcheck
itself (`podman healthcheck run`) until every one passes, the way a timer would. Podman does not
restart a container stopped by `podman kill` (its restart policy is for containers that exit on
their own), so a test starts a killed one again itself, as an orchestrator would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
CONTAINERS_CONF = REPO / "deploy" / "ci" / "containers.conf"
PROJECT_LABEL = "io.podman.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


def podman_environment() -> dict[str, str]:
    return dict(os.environ, CONTAINERS_CONF=str(CONTAINERS_CONF))


def podman(*args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args], env=podman_environment(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result


@dataclass
class Stack:
    """The compose project `project` (docker-compose.yml's `name:`)."""

    project: str
    healthy_after_s: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        command = [str(Path(sys.executable).parent / "podman-compose"), "-f", str(COMPOSE_FILE), *args]
        result = subprocess.run(
            command, cwd=REPO, env=podman_environment(), capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise AssertionError(f"podman-compose {' '.join(args)} exited {result.returncode}: {result.stderr[-3000:]}")
        return result

    def containers(self) -> dict[str, str]:
        """Service name → container name, for every container of the project (running or not)."""
        listed = podman("ps", "-a", "--filter", f"label={PROJECT_LABEL}={self.project}", "--format", "json").stdout
        return {item["Labels"][SERVICE_LABEL]: item["Names"][0] for item in json.loads(listed or "[]")}

    def leftovers(self) -> list[str]:
        """Containers, volumes and networks of the project that still exist."""
        found = [f"container {name}" for name in self.containers().values()]
        volumes = podman("volume", "ls", "--filter", f"label={PROJECT_LABEL}={self.project}", "--format", "{{.Name}}")
        found += [f"volume {name}" for name in volumes.stdout.split()]
        networks = podman("network", "ls", "--format", "{{.Name}}").stdout.split()
        found += [f"network {name}" for name in networks if name.startswith(f"{self.project}_")]
        return found

    def state(self, service: str) -> tuple[str, int]:
        """The container's status (running, exited, ...) and exit code."""
        name = self.containers()[service]
        status, code = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name).stdout.split()
        return status, int(code)

    def has_healthcheck(self, service: str) -> bool:
        name = self.containers()[service]
        test = podman("inspect", "--format", "{{json .Config.Healthcheck}}", name).stdout.strip()
        return test not in ("", "null", "{}")

    def healthy(self, service: str) -> bool:
        return podman("healthcheck", "run", self.containers()[service], check=False, timeout=30).returncode == 0

    def wait_healthy(self, services: list[str], timeout_s: float, since: float | None = None) -> None:
        """Run each service's healthcheck every 2 s until all pass; fail, with the laggards' logs,
        after `timeout_s`. Records how long each took (from `since`) in `healthy_after_s`."""
        started = since if since is not None else time.monotonic()
        deadline = time.monotonic() + timeout_s
        pending = list(services)
        while pending:
            for service in list(pending):
                if self.healthy(service):
                    self.healthy_after_s[service] = round(time.monotonic() - started, 1)
                    pending.remove(service)
            if not pending:
                return
            if time.monotonic() > deadline:
                logs = {service: self.logs(service, 15) for service in pending}
                raise AssertionError(
                    f"not healthy after {timeout_s:.0f} s: {pending}\n"
                    + "\n".join(f"--- {service}:\n{text}" for service, text in logs.items())
                )
            time.sleep(2)

    def logs(self, service: str, lines: int = 30, tail_bytes: int | None = 4000) -> str:
        """The container's last `lines` lines of output (stdout and stderr), at most `tail_bytes`."""
        result = podman("logs", "--tail", str(lines), self.containers()[service], check=False)
        text = result.stdout + result.stderr
        return text if tail_bytes is None else text[-tail_bytes:]

    def kill(self, service: str) -> None:
        podman("kill", self.containers()[service])

    def start(self, service: str) -> None:
        podman("start", self.containers()[service])

    def exec(self, service: str, *command: str) -> str:
        return podman("exec", self.containers()[service], *command, timeout=60).stdout
