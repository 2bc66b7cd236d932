"""Real Prometheus (Debian's) with the shipped rules, scraping a real local cluster: every service is
up and ready, and a SIGKILLed store raises RingcastProcessDown until it is back.

The rules' `for` durations are a minute or more, so this test sees the alert pending, not firing;
tests/prometheus/rules_test.yml checks the firing, minute by minute, without a clock.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from ringcast_tools.cluster.launcher import Launcher
from ringcast_tools.cluster.topology import free_ports

pytestmark = pytest.mark.slow

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules.yml"


def free_port() -> int:
    """A loopback TCP port nothing listens on right now, reserved for a while (`free_ports`)."""
    return free_ports(1)[0]


class Prometheus:
    def __init__(self, address: str) -> None:
        self.address = address

    def api(self, path: str, **query: str) -> Any:
        url = f"http://{self.address}/api/v1/{path}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return json.loads(answer.read())["data"]

    def value(self, expression: str) -> float | None:
        result = self.api("query", query=expression)["result"]
        return float(result[0]["value"][1]) if result else None

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [alert for alert in self.api("alerts")["alerts"] if alert["labels"]["alertname"] == name]


def until(what: str, condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.2)


def test_prometheus_scrapes_every_service_and_alerts_while_a_store_is_down(cluster: Launcher, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary is not None, "prometheus is missing: `./dev test` installs Debian's prometheus package"
    targets: dict[str, list[str]] = {}
    for spec in cluster.topology.processes:
        if spec.metrics:
            targets.setdefault(spec.role, []).append(spec.metrics)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "ringcast",
                "static_configs": [{"targets": names, "labels": {"role": role}} for role, names in targets.items()],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    with open(tmp_path / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address={address}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        prometheus = Prometheus(address)
        scraped = sum(len(names) for names in targets.values())

        def all_up_and_ready() -> bool:
            try:
                up = prometheus.value('count(up{job="ringcast"} == 1)')
                ready = prometheus.value("count(ringcast_ready == 1)")
            except OSError:
                return False  # not listening yet
            return up == scraped and ready == scraped

        until(f"all {scraped} services up and ready", all_up_and_ready)
        assert prometheus.value('max(ringcast_ring_members{kind="channel"})') == 3
        assert prometheus.alerts("RingcastProcessDown") == []

        store = next(spec for spec in cluster.topology.processes if spec.role == "store")
        cluster.kill(store.name, signal.SIGKILL)

        def store_down_alert() -> bool:
            return [alert["labels"]["instance"] for alert in prometheus.alerts("RingcastProcessDown")] == [
                store.metrics
            ]

        until(f"RingcastProcessDown for {store.name}", store_down_alert)
        (alert,) = prometheus.alerts("RingcastProcessDown")
        assert alert["state"] in ("pending", "firing") and alert["labels"]["role"] == "store"

        cluster.restart(store.name)
        until("the alert gone once the store is back", lambda: prometheus.alerts("RingcastProcessDown") == [])
    finally:
        process.terminate()
        process.wait(timeout=30)
