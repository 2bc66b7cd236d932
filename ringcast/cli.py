"""The `ringcast` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence


def _sim(arguments: argparse.Namespace) -> int:
    from ringcast.sim.runner import replay_command, run_seeds
    from services.channel.role import BUG_NAMES

    bugs = frozenset(arguments.bug or ())
    unknown = sorted(bugs - set(BUG_NAMES))
    if unknown:
        print(f"unknown bug(s): {', '.join(unknown)}; known: {', '.join(BUG_NAMES)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    violating_seeds = 0
    first_violation = None
    for outcome in run_seeds(arguments.first_seed, arguments.seeds, bugs, arguments.workers):
        if arguments.verbose:
            print(f"seed={outcome.seed} digest={outcome.digest} violations={len(outcome.violations)}")
        if not outcome.violations:
            continue
        violating_seeds += 1
        if first_violation is None:
            first_violation = outcome.seed
        if violating_seeds <= arguments.show:
            print(f"seed={outcome.seed} violations={len(outcome.violations)}")
            for violation in outcome.violations[:5]:
                print(f"  {violation}")
            print(f"  replay: {replay_command(outcome.seed, bugs)}")
    elapsed = time.monotonic() - started
    print(f"elapsed_s={elapsed:.1f} first_violating_seed={first_violation}")
    print(f"seeds={arguments.seeds} violations={violating_seeds}")
    return 1 if violating_seeds and not bugs else 0


def _ring_simulate(arguments: argparse.Namespace) -> int:
    from services.placement.ring import format_stats, simulate

    print(format_stats(simulate(arguments.nodes, arguments.channels)))
    return 0


def _up(arguments: argparse.Namespace) -> int:
    print("ringcast up: the gRPC services and the local cluster arrive with issue #3", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringcast", description="ringcast: fault-tolerant realtime pub/sub")
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser("sim", help="run the seeded cluster simulator and check every history")
    sim.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    sim.add_argument("--first-seed", type=int, default=0, help="the first seed")
    sim.add_argument("--bug", action="append", help="switch on a deliberate bug (repeatable)")
    sim.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    sim.add_argument("--show", type=int, default=5, help="violating seeds to print in full")
    sim.add_argument("--verbose", action="store_true", help="a line per seed, with its digest")
    sim.set_defaults(handler=_sim)

    up = commands.add_parser("up", help="run a local cluster (not yet: issue #3)")
    up.set_defaults(handler=_up)

    ring = commands.add_parser("ring", help="the placement ring")
    ring_commands = ring.add_subparsers(dest="ring_command", required=True)
    ring_simulate = ring_commands.add_parser("simulate", help="measure balance and movement of the ring")
    ring_simulate.add_argument("--nodes", type=int, required=True)
    ring_simulate.add_argument("--channels", type=int, required=True)
    ring_simulate.set_defaults(handler=_ring_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    return int(arguments.handler(arguments))


if __name__ == "__main__":
    sys.exit(main())
