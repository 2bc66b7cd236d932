"""`ringcast bench --compare nats`, shrunk: every workload runs on both systems — ringcast through
the SDK and through plain generated stubs (unary and PublishStream) — and the run leaves its JSON,
its plot and the `vs_nats` line. Numbers are reported, never asserted."""

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
            "--active-channels",
            "300",
            "--presence-members",
            "50",
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
    assert keys == [
        "throughput_ratio",
        "seq_ack_p50_ratio",
        "e2e_p99_ratio",
        "failover_s",
        "nats_failover_s",
        "raw_throughput_ratio",
        "hot_channel_ratio",
    ]
    assert any("acknowledges" in line and "fsync" in line for line in lines)
    (report_path,) = tmp_path.glob("bench-*.json")
    assert report_path.with_suffix(".png").stat().st_size > 10_000
    report = json.loads(report_path.read_text())
    whole = ["throughput"] * 3 + ["throughput_batch"] * 2 + ["sequential", "end_to_end"]
    plain = ["throughput"] * 3 + ["sequential", "end_to_end"]
    rows = {
        "nats": (report["nats"]["results"], [*whole, "failover"]),
        "sdk": ([row for row in report["ringcast"]["results"] if row["client"] == "sdk"], [*whole, "failover"]),
        "raw": ([row for row in report["ringcast"]["results"] if row["client"] == "raw"], plain),
        "stream": ([row for row in report["ringcast"]["results"] if row["client"] == "stream"], plain),
    }
    for client, (results, expected) in rows.items():
        assert [row["workload"] for row in results] == expected, client
        assert [row.get("channels") for row in results if row["workload"] == "throughput"] == [4, 4, 1], client
        for row in results:
            if row["workload"] != "failover":
                assert not row.get("errors"), (client, row)
        throughput = [row for row in results if row["workload"] == "throughput"]
        assert all(row["msgs_per_s"] > 0 for row in throughput)
        (end_to_end,) = [row for row in results if row["workload"] == "end_to_end"]
        assert end_to_end["delivered"] == end_to_end["published"], (client, end_to_end)
    memory = report["ringcast"]["memory"]
    assert memory["active_channels"] == 300 and set(memory["rss_mib_after"]) >= {"channel-1", "gateway-1", "store-a"}
    presence = report["ringcast"]["presence"]
    assert presence["members"] == presence["synced_members"] == presence["occupancy_members"] == 50
    assert presence["enters_per_s"] > 0 and presence["leaves_per_s"] > 0
    takeover = report["ringcast"]["takeover"]
    assert takeover["moved"] == 100
    assert takeover["all_moved_acked_again_s"] >= takeover["acked_again_median_s"] > 0
    assert all(value is not None for value in report["ratios"].values()), report["ratios"]
