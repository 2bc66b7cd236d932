"""`ringcast up`: etcd, placement, three stores, channel nodes and gateways on this machine.

With `--engine redis` each store keeps its log in a redis-server of its own (started first).
With `--proxy LINK` (repeatable) a fault proxy sits on that link (`ringcast chaos link` sets its
fault). While it runs it serves `ringcast chaos restart` on a control endpoint recorded in
cluster.json (see `ringcast_tools/commands/chaos.py`), and runs those requests on its main thread.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from ringcast_tools.cluster.launcher import Launcher, healthy
from ringcast_tools.cluster.topology import ENGINES, PROXY_LINK_FORMS, local_topology, sequential_ports
from ringcast_tools.commands.chaos import ControlServer

status_interval_s = 2.0
control_poll_interval_s = 0.2
"""How often the main thread looks for control requests (and for Ctrl-C)."""


def _port_taken(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) == 0


def run(arguments: argparse.Namespace) -> int:
    state_dir = Path.cwd() / ".ringcast"
    if arguments.clean and state_dir.exists():
        shutil.rmtree(state_dir)
    if shutil.which("etcd") is None:
        print("ringcast up: etcd is not installed (./dev setup installs Debian's etcd-server)", file=sys.stderr)
        return 2
    try:
        topology = local_topology(
            state_dir / "data",
            ports=sequential_ports(arguments.base_port),
            channels=arguments.channels,
            gateways=arguments.gateways,
            placements=arguments.placements,
            proxies=arguments.proxy or (),
            engine=arguments.engine,
            tls_dir=None if arguments.insecure else state_dir / "tls",
        )
    except ValueError as error:
        print(f"ringcast up: {error}", file=sys.stderr)
        return 2
    addresses = [address for spec in topology.processes for address in (spec.address, spec.control) if address]
    taken = [address for address in addresses if _port_taken(address)]
    if taken:
        print(f"ringcast up: ports in use: {', '.join(taken)}; try --base-port", file=sys.stderr)
        return 2
    if arguments.insecure:
        print(
            "[up] WARNING: --insecure: plaintext everywhere, no tokens: anyone who reaches a port can read, "
            "publish to and fence every channel. For a laptop demo only.",
            file=sys.stderr,
        )
    stop = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stop.set())
    say = _Say(arguments.json)
    launcher = Launcher(topology, state_dir, on_event=lambda text: say(f"[up] {text}", event="launcher", detail=text))
    control = ControlServer(avoid=addresses)
    launcher.control = control.address
    control.start()
    try:
        return _run_cluster(launcher, control, stop, state_dir, say)
    finally:
        control.close()


class _Say:
    """A line for people, or with --json one object per event for scripts."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def __call__(self, line: str, **record: object) -> None:
        print(json.dumps(record) if self.as_json else line, flush=True)


def _run_cluster(launcher: Launcher, control: ControlServer, stop: threading.Event, state_dir: Path, say: _Say) -> int:
    topology = launcher.topology
    started = time.monotonic()
    try:
        launcher.start_all()
    except RuntimeError as error:
        print(f"ringcast up: {error}", file=sys.stderr)
        return 1
    ready_s = time.monotonic() - started
    state = state_dir / "cluster.json"
    text = f"[up] cluster ready in {ready_s:.1f} s; state in {state}\n"
    text += "".join(f"gateway {address}\n" for address in topology.gateways)
    if topology.tls_dir:
        text += (
            f"[up] secure: TLS with the CA {topology.tls_dir}/ca.pem, tokens required "
            "(the CLI signs its own admin token; `ringcast token --sub ID` prints one for a client)\n"
        )
    text += "[up] Ctrl-C stops every process"
    say(text, event="ready", seconds=round(ready_s, 2), state=str(state), gateways=topology.gateways)
    last_status = ""
    next_status_s = time.monotonic() + status_interval_s
    # Only `is_set` here, which takes no lock: the signal handler's `set` runs on this thread.
    while not stop.is_set():
        control.serve_pending(launcher, wait_s=control_poll_interval_s)
        if time.monotonic() < next_status_s:
            continue
        next_status_s = time.monotonic() + status_interval_s
        states = _states(launcher)
        status = " ".join(f"{name}={state}" for name, state in states.items())
        if status != last_status:
            say(f"[up] {time.strftime('%H:%M:%S')} {status}", event="status", processes=states)
            last_status = status
    say("[up] stopping", event="stopping")
    launcher.stop_all()
    return 0


def _states(launcher: Launcher) -> dict[str, str]:
    states = {}
    for name, running in launcher.running.items():
        if running.process.poll() is not None:
            states[name] = f"exited({running.process.returncode})"
        elif healthy(running.spec, timeout_s=0.5, tls_dir=launcher.topology.tls_dir):
            states[name] = "ok"
        else:
            states[name] = "unhealthy"
    return states


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = commands.add_parser("up", help="run a local cluster (etcd, placement, stores, channel nodes, gateways)")
    up.add_argument("--base-port", type=int, default=7400, help="first of the consecutive ports the cluster uses")
    up.add_argument("--channels", type=int, default=3, help="channel nodes")
    up.add_argument("--gateways", type=int, default=2)
    up.add_argument("--placements", type=int, default=1)
    up.add_argument("--clean", action="store_true", help="delete .ringcast/ (all data) first")
    up.add_argument(
        "--proxy",
        action="append",
        metavar="LINK",
        help=f"put a fault proxy on LINK, one of {', '.join(PROXY_LINK_FORMS)} (repeatable; "
        "write --proxy=->channel-N, or argparse takes ->channel-N for an option)",
    )
    up.add_argument(
        "--engine",
        choices=ENGINES,
        default="sqlite",
        help="store engine: SQLite files, or one redis-server per zone (AOF, appendfsync always)",
    )
    up.add_argument("--json", action="store_true", help="one JSON object per event on stdout, for scripts")
    up.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext and no tokens (today's open cluster); by default it is secure: mTLS, TLS, tokens",
    )
    up.set_defaults(handler=run)
