"""The `ringcast` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence


def _sim(arguments: argparse.Namespace) -> int:
    from ringcast_tools.sim.runner import replay_command, run_seeds
    from services.core.role import BUG_NAMES

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
    if arguments.json:
        import json

        summary = {"seeds": arguments.seeds, "violations": violating_seeds, "first_violating_seed": first_violation}
        print(json.dumps({**summary, "elapsed_s": round(elapsed, 1)}))
        return 1 if violating_seeds and not bugs else 0
    print(f"elapsed_s={elapsed:.1f} first_violating_seed={first_violation}")
    print(f"seeds={arguments.seeds} violations={violating_seeds}")
    return 1 if violating_seeds and not bugs else 0


def _ring(arguments: argparse.Namespace) -> int:
    if arguments.channels[:1] == ["simulate"]:
        from services.core.ring import format_stats, simulate

        if arguments.nodes is None or arguments.channel_count is None:
            print("usage: ringcast ring simulate --nodes N --channels M", file=sys.stderr)
            return 2
        stats = simulate(arguments.nodes, arguments.channel_count)
        if arguments.json:
            import dataclasses
            import json

            print(json.dumps(dataclasses.asdict(stats)))
        else:
            print(format_stats(stats))
        return 0
    from ringcast_tools.commands import client

    arguments.placement = arguments.placement or client.default_placement()
    return client.ring(arguments)


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
    sim.add_argument("--json", action="store_true", help="end with one JSON summary instead of the two lines")
    sim.set_defaults(handler=_sim)

    from ringcast_tools.commands import bench, chaos, client, namespace, token
    from ringcast_tools.commands import up as up_command

    up_command.add_parser(commands)
    chaos.add_parser(commands)
    client.add_parsers(commands)
    token.add_parser(commands)
    namespace.add_parser(commands)
    bench.add_parser(commands)

    ring = commands.add_parser(
        "ring", help="show the ring: members, version, owners of given channels; or `ring simulate`"
    )
    ring.add_argument("channels", nargs="*", help="channels whose owner to show")
    ring.add_argument("--placement", default=None, help="placement address (default: the local cluster's)")
    ring.add_argument("--timeout", type=float, default=10.0)
    ring.add_argument("--json", action="store_true", help="one JSON object on stdout, for scripts")
    ring.add_argument("--nodes", type=int, help="with `simulate`: nodes")
    ring.add_argument("--channels", dest="channel_count", type=int, help="with `simulate`: channels")
    ring.set_defaults(handler=_ring)

    certs = commands.add_parser(
        "certs", help="make a cluster's CA, certificates, token keys and Redis ACLs (once; what is there is kept)"
    )
    certs.add_argument("--compose", action="store_true", help="for docker-compose.yml's services (their names)")
    certs.add_argument("--tls-dir", required=True, help="where to write them")
    certs.set_defaults(handler=_certs)

    health = commands.add_parser("health", help="exit 0 when the gRPC service at ADDRESS answers SERVING")
    health.add_argument("address", help="HOST:PORT")
    health.add_argument("--timeout", type=float, default=2.0)
    health.add_argument("--json", action="store_true", help="also print the answer as one JSON object")
    health.add_argument(
        "--tls-dir",
        default=os.environ.get("RINGCAST_TLS_DIR", ""),
        help="ask over TLS with the admin certificate in this directory (default: $RINGCAST_TLS_DIR)",
    )
    health.set_defaults(handler=_health)
    return parser


def _certs(arguments: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from ringcast_tools.cluster import compose, pki
    from ringcast_tools.cluster.topology import local_topology, sequential_ports

    if arguments.compose:
        topology = compose.container_topology()
    else:
        topology = local_topology(Path(".ringcast/data"), ports=sequential_ports(7400), tls_dir=Path(arguments.tls_dir))
    made = pki.secure(dataclasses.replace(topology, tls_dir=arguments.tls_dir))
    print(f"{arguments.tls_dir}: {', '.join(made) if made else 'everything was there already'}")
    return 0


def _health(arguments: argparse.Namespace) -> int:
    """Used by container healthchecks: one grpc.health.v1 Check, exit 0 on SERVING, else 1."""
    from ringcast_tools.cluster.launcher import healthy
    from ringcast_tools.cluster.topology import ProcessSpec

    spec = ProcessSpec(name="health", role="service", address=arguments.address, argv=())
    serving = healthy(spec, timeout_s=arguments.timeout, tls_dir=arguments.tls_dir)
    if arguments.json:
        import json

        print(json.dumps({"address": arguments.address, "serving": serving}))
    return 0 if serving else 1


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    return int(arguments.handler(arguments))


if __name__ == "__main__":
    sys.exit(main())
