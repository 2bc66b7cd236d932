"""Run many simulator seeds, on every core, and report violations with a command that replays them."""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass

from ringcast_tools.sim.cluster import SimResult, run_seed


@dataclass(frozen=True, slots=True)
class SeedOutcome:
    seed: int
    violations: tuple[str, ...]
    digest: str


def _run(job: tuple[int, frozenset[str]]) -> SeedOutcome:
    seed, bugs = job
    result: SimResult = run_seed(seed, bugs)
    return SeedOutcome(seed, tuple(str(violation) for violation in result.violations), result.digest)


def replay_command(seed: int, bugs: frozenset[str]) -> str:
    bug_flags = "".join(f" --bug {bug}" for bug in sorted(bugs))
    return f"ringcast sim --seeds 1 --first-seed {seed}{bug_flags}"


def run_seeds(first_seed: int, count: int, bugs: frozenset[str], workers: int = 0) -> Iterator[SeedOutcome]:
    """Outcomes in seed order. `workers` = 0 means one per core."""
    jobs = [(seed, bugs) for seed in range(first_seed, first_seed + count)]
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers == 1 or count < 4:
        yield from map(_run, jobs)
        return
    # Forked workers inherit every object of this process, gRPC's among them when the test suite
    # runs the simulator after the integration tests; a worker that garbage-collected those crashed
    # (SIGSEGV) and the pool then waited forever for its seeds. Frozen objects are never collected,
    # so the workers leave them alone (and the parent collects them again after the fork).
    gc.freeze()
    try:
        pool = multiprocessing.get_context("fork").Pool(workers)
    finally:
        gc.unfreeze()
    with pool:
        yield from pool.imap(_run, jobs, chunksize=max(1, min(16, count // (workers * 8))))
