"""The seeded simulator: clean seeds stay clean, every deliberate bug is caught, runs replay exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ringcast_tools.sim.cluster import Simulation, run_seed
from ringcast_tools.sim.runner import run_seeds
from services.core.role import BUG_NAMES

ROOT = Path(__file__).resolve().parents[2]
QUICK_SEEDS = 2_000
SLOW_SEEDS = 20_000

# Each deliberate bug must show up within this many seeds (the acceptance bound).
BUG_SEED_BUDGET = {name: 300 for name in BUG_NAMES} | {"adopt-highest-epoch-per-serial": 1_000}


def violating_seeds(first: int, count: int, bugs: frozenset[str] = frozenset()) -> list[tuple[int, tuple[str, ...]]]:
    return [(o.seed, o.violations) for o in run_seeds(first, count, bugs) if o.violations]


def test_quick_tier_has_no_violations() -> None:
    found = violating_seeds(0, QUICK_SEEDS)
    assert found == [], f"replay with: ringcast sim --seeds 1 --first-seed {found[0][0]}"


@pytest.mark.slow
def test_slow_tier_has_no_violations() -> None:
    found = violating_seeds(QUICK_SEEDS, SLOW_SEEDS)
    assert found == [], f"replay with: ringcast sim --seeds 1 --first-seed {found[0][0]}"


@pytest.mark.parametrize("bug", BUG_NAMES)
def test_every_deliberate_bug_is_caught(bug: str) -> None:
    budget = BUG_SEED_BUDGET[bug]
    first_caught = next((o.seed for o in run_seeds(0, budget, frozenset({bug})) if o.violations), None)
    assert first_caught is not None, f"{bug} went unnoticed for {budget} seeds"


def test_same_seed_same_run() -> None:
    first, second = Simulation(7), Simulation(7)
    one, two = first.run(), second.run()
    assert one.digest == two.digest
    assert first.history.publishes == second.history.publishes
    assert first.history.final_logs == second.history.final_logs
    assert [r.received for r in first.history.subscribers] == [r.received for r in second.history.subscribers]
    assert run_seed(8).digest != one.digest


def test_same_seed_same_run_across_processes_and_hash_seeds() -> None:
    digests = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        output = subprocess.run(
            [
                sys.executable,
                "-m",
                "ringcast_tools",
                "sim",
                "--seeds",
                "3",
                "--first-seed",
                "11",
                "--verbose",
                "--workers",
                "1",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        digests.append([line for line in output.splitlines() if line.startswith("seed=")])
    assert len(digests[0]) == 3 and digests[0] == digests[1]


def test_a_run_exercises_the_faults_it_claims() -> None:
    """Guard against a simulator that quietly stops injecting faults or carrying load."""
    totals: dict[str, int] = {}
    seeds = 30  # (20 were too few once damage joined the faults: seeds 0..19 happen to publish little)
    for seed in range(seeds):
        for key, value in run_seed(seed).stats.items():
            if key != "digest":
                totals[key] = totals.get(key, 0) + value
    for fault in ("crash", "pause", "partition", "split-owner", "slow-watch", "store", "membership", "damage"):
        assert totals.get(f"fault_{fault}", 0) > 0, fault
    # Damage is done, found by the stores' scrubs, and reported to (so repaired by) owners.
    assert totals["damaged"] > 0 and totals["scrub_found"] > 0 and totals["replica_damaged"] > 0
    assert totals["publish_ok"] > seeds * 50
    assert totals["delivered"] > seeds * 50
    assert totals["dropped_partition"] > 0 and totals["dropped_random"] > 0
