"""`ringcast bench --compare nats`, shrunk: every workload runs on both systems and the run leaves
its JSON, its plot and the `vs_nats` line. Numbers are reported, never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_small_compare_run_reports_every_workload_for_both_systems(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ringcast_tools",
            "bench",
            "--compare",
            "nats",
            "--publishers",
            "1",
            "8",
            "--seconds",
            "1",
            "--channels",
            "4",
            "--sequential",
            "50",
            "--rate",
            "200",
            "--e2e-seconds",
            "1",
            "--moved-channels",
            "100",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    vs = [line for line in lines if line.startswith("vs_nats ")]
    assert len(vs) == 1, result.stdout
    keys = [part.split("=")[0] for part in vs[0].split()[1:]]
    assert keys == ["throughput_ratio", "seq_ack_p50_ratio", "e2e_p99_ratio", "failover_s", "nats_failover_s"]
    assert any("acknowledges" in line and "fsync" in line for line in lines)
    (report_path,) = tmp_path.glob("bench-*.json")
    assert report_path.with_suffix(".png").stat().st_size > 10_000
    report = json.loads(report_path.read_text())
    expected = ["throughput", "throughput", "throughput_batch", "throughput_batch", "sequential", "end_to_end"]
    for system in ("ringcast", "nats"):
        results = report[system]["results"]
        assert [row["workload"] for row in results] == [*expected, "failover"], system
        for row in results[:-1]:
            assert not row.get("errors"), (system, row)
        throughput = [row for row in results if row["workload"] == "throughput"]
        assert all(row["msgs_per_s"] > 0 for row in throughput)
        end_to_end = results[5]
        assert end_to_end["delivered"] == end_to_end["published"], (system, end_to_end)
    assert report["ringcast"]["takeover"]["moved"] == 100
    assert all(value is not None for value in report["ratios"].values()), report["ratios"]
