"""One PNG per bench run: throughput by concurrency, and latency distributions (CDFs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
from matplotlib import ticker  # noqa: E402

COLORS = {"ringcast": "#1f77b4", "nats": "#ff7f0e"}


def _results(report: dict[str, Any], system: str) -> list[dict[str, Any]]:
    section = report.get(system)
    return list(section["results"]) if isinstance(section, dict) else []


def plot(report: dict[str, Any], path: Path) -> None:
    systems = [system for system in ("ringcast", "nats") if _results(report, system)]
    figure, axes = plt.subplots(2, 2, figsize=(13, 9))
    machine = report.get("machine", {})
    figure.suptitle(
        f"ringcast bench {report.get('started', '')} — {machine.get('cpus')} CPUs ({machine.get('cpu_model', '')}), "
        "everything on one machine",
        fontsize=10,
    )
    for axis, workload, title in (
        (axes[0][0], "throughput", "single-message publishers: acked msgs/s"),
        (axes[0][1], "throughput_batch", "batched publishers: acked msgs/s"),
    ):
        width = 0.8 / max(1, len(systems))
        for offset, system in enumerate(systems):
            rows = [row for row in _results(report, system) if row["workload"] == workload]
            positions = [index + offset * width for index in range(len(rows))]
            axis.bar(positions, [row["msgs_per_s"] for row in rows], width, label=system, color=COLORS[system])
            axis.set_xticks([index + width * (len(systems) - 1) / 2 for index in range(len(rows))])
            axis.set_xticklabels([str(row["publishers"]) for row in rows])
        axis.set_xlabel("concurrent publishers")
        axis.set_title(title, fontsize=10)
        axis.legend()
    for axis, workload, title in (
        (axes[1][0], "sequential", "sequential publish→ack latency (CDF)"),
        (axes[1][1], "end_to_end", "publish→deliver latency at a fixed rate (CDF)"),
    ):
        for system in systems:
            for row in _results(report, system):
                if row["workload"] != workload or not row.get("samples_ms"):
                    continue
                samples = row["samples_ms"]
                fractions = [(index + 1) / len(samples) for index in range(len(samples))]
                label = f"{system} p50={row['p50_ms']} p99={row['p99_ms']} ms"
                axis.plot(samples, fractions, label=label, color=COLORS[system])
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        axis.xaxis.set_minor_formatter(ticker.NullFormatter())
        axis.set_xlabel("ms")
        axis.set_ylabel("fraction")
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
