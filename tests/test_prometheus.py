"""The alerting and recording rules shipped for operators (deploy/prometheus/), checked by Debian's
promtool: the rules and the compose stack's Prometheus config load, and each alert fires when it
should, after its `for`, and not on healthy input (tests/prometheus/rules_test.yml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"


def promtool(*arguments: str, cwd: Path = ROOT) -> str:
    binary = shutil.which("promtool")
    assert binary is not None, "promtool is missing: `./dev test` installs Debian's prometheus package"
    result = subprocess.run([binary, *arguments], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_the_rules_and_the_compose_config_load() -> None:
    assert "SUCCESS: 14 rules found" in promtool("check", "rules", "rules.yml", cwd=PROMETHEUS)
    assert "is valid prometheus config file syntax" in promtool("check", "config", "prometheus.yml", cwd=PROMETHEUS)


def test_each_alert_fires_when_it_should_and_not_otherwise() -> None:
    assert "SUCCESS" in promtool("test", "rules", "tests/prometheus/rules_test.yml")
