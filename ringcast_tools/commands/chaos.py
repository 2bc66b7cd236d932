"""`ringcast chaos`: break a running local cluster on purpose, by process name as in cluster.json.

    ringcast chaos kill NAME                     SIGKILL, like a machine losing power
    ringcast chaos pause NAME [--for SECONDS]    SIGSTOP (alive but doing nothing), SIGCONT after SECONDS
    ringcast chaos resume NAME                   SIGCONT
    ringcast chaos restart NAME                  kill, start again, wait until healthy (through `ringcast up`)
    ringcast chaos link NAME [MODE] [--ms N] [--probability P]
                                                 set (or show) the fault on a proxy's link

NAME is a process of `.ringcast_tools/cluster.json` in the current directory (`--state DIR` for another
one); an unknown NAME exits with status 2 and the list of names. kill, pause and resume signal the pid
directly. restart needs the process's command and must leave the new process supervised by
`ringcast up` (it dies with it), so `ringcast up` does it: it serves a control endpoint on a
localhost TCP port, recorded as "control" in cluster.json, that takes one line, `restart NAME` or
`kill NAME`, runs it with its Launcher on its main thread, rewrites cluster.json with the new pid,
and answers one line, `ok pid=N` or `error WHY`. `ControlServer` is that endpoint. A proxy's modes
are explained in `ringcast_tools/chaos/proxy.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringcast_tools.chaos.proxy import Mode, ProxyControl, split_address
from ringcast_tools.cluster.launcher import Launcher, start_timeout_s, stop_timeout_s

control_line_bytes_max = 1024
control_read_timeout_s = 5.0
control_bind_attempts_max = 10
control_requests_max = 16
"""Requests waiting for `ringcast up`'s main thread; one more is refused."""

control_reply_timeout_s = start_timeout_s + stop_timeout_s + 10.0
"""How long an action may take: a restart kills, starts, then waits for health."""

pause_seconds_max = 24 * 3600.0

ACTIONS = ("restart", "kill")


@dataclass(slots=True)
class ControlRequest:
    action: str
    name: str
    reply: queue.Queue[str] = field(default_factory=lambda: queue.Queue(1))


class ControlServer:
    """`ringcast up`'s control endpoint: a listener thread queues requests; the owner thread runs them.

    The owner (the thread that started the processes) must be the one that restarts them: the
    kernel's parent-death signal follows the thread that started a child, so a child started from a
    short-lived thread would die with it. So the listener only queues; `serve_pending` runs them.
    """

    def __init__(self, host: str = "127.0.0.1", *, avoid: Collection[str] = ()) -> None:
        """Listen on a port the OS picks, other than those in `avoid` (the cluster's, not yet bound)."""
        for _ in range(control_bind_attempts_max):
            self._listener = socket.create_server((host, 0))
            self.address = f"{host}:{self._listener.getsockname()[1]}"
            if self.address not in avoid:
                break
            self._listener.close()
        else:
            raise RuntimeError(f"no free control port outside the cluster's after {control_bind_attempts_max} tries")
        self._listener.settimeout(0.2)  # so the thread notices `close`
        self._requests: queue.Queue[ControlRequest] = queue.Queue(control_requests_max)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="ringcast-up-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2.0)
        self._listener.close()
        while True:
            try:
                self._requests.get_nowait().reply.put("error ringcast up is stopping")
            except queue.Empty:
                return

    def serve_pending(self, launcher: Launcher, wait_s: float) -> None:
        """Run the next queued request, if one arrives within `wait_s`."""
        try:
            request = self._requests.get(timeout=wait_s)
        except queue.Empty:
            return
        request.reply.put(execute(launcher, request.action, request.name))

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            # One connection at a time: requests are rare and each is run in turn anyway.
            with connection, contextlib.suppress(OSError):
                connection.settimeout(control_read_timeout_s)
                connection.sendall((self._answer(_read_line(connection)) + "\n").encode())

    def _answer(self, line: str) -> str:
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ACTIONS:
            return f"error expected `{' NAME` or `'.join(ACTIONS)} NAME`, got {line!r}"
        request = ControlRequest(parts[0], parts[1])
        try:
            self._requests.put_nowait(request)
        except queue.Full:
            return "error too many requests waiting"
        try:
            return request.reply.get(timeout=control_reply_timeout_s)
        except queue.Empty:
            return f"error no answer within {control_reply_timeout_s:.0f} s"


def execute(launcher: Launcher, action: str, name: str) -> str:
    """Run one control action with `launcher`; the answer line."""
    if name not in launcher.running:
        return f"error unknown process {name}; known: {', '.join(launcher.running)}"
    try:
        if action == "restart":
            launcher.restart(name)
        elif action == "kill":
            launcher.kill(name)
        else:
            return f"error unknown action {action}"
    except Exception as error:  # the answer goes back to the caller; `ringcast up` carries on
        return f"error {action} {name}: {error}"
    return f"ok pid={launcher.running[name].process.pid}"


def _read_line(connection: socket.socket) -> str:
    data = b""
    while b"\n" not in data and len(data) < control_line_bytes_max:
        chunk = connection.recv(control_line_bytes_max - len(data))
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace").strip()


def control_request(address: str, line: str, timeout_s: float = control_reply_timeout_s) -> str:
    """Send one line to a control endpoint; its answer line."""
    host, port = split_address(address)
    with socket.create_connection((host, port), timeout=control_read_timeout_s) as connection:
        connection.settimeout(timeout_s)
        connection.sendall(line.encode() + b"\n")
        return _read_line(connection)


class Failure(Exception):
    """A chaos action that could not be done: the message, and the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _load_state(state_dir: Path) -> dict[str, Any]:
    path = state_dir / "cluster.json"
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise Failure(f"no {path}: is `ringcast up` running here? (--state DIR points elsewhere)") from None


def _process(state: dict[str, Any], name: str) -> dict[str, Any]:
    processes = [dict(process) for process in state.get("processes", [])]
    for process in processes:
        if process.get("name") == name:
            return process
    names = ", ".join(str(process.get("name")) for process in processes)
    raise Failure(f"unknown process {name}; processes: {names}", status=2)


def _signal(process: dict[str, Any], signal_number: int) -> None:
    try:
        os.kill(int(process["pid"]), signal_number)
    except ProcessLookupError:
        raise Failure(f"{process['name']} pid={process['pid']} is not running") from None


def _say(arguments: argparse.Namespace, text: str, event: str, process: dict[str, Any], **details: object) -> None:
    """What an action did: a line for people, or with --json one object for scripts."""
    if arguments.json:
        record = {"event": event, "process": process["name"], "pid": process.get("pid"), **details}
        print(json.dumps(record), flush=True)
    else:
        print(text, flush=True)


def _kill(arguments: argparse.Namespace, state: dict[str, Any]) -> None:
    process = _process(state, arguments.name)
    _signal(process, signal.SIGKILL)
    _say(arguments, f"killed {process['name']} pid={process['pid']}", "killed", process)


def _pause(arguments: argparse.Namespace, state: dict[str, Any]) -> None:
    process = _process(state, arguments.name)
    seconds = arguments.seconds
    if seconds is not None and not 0 <= seconds <= pause_seconds_max:
        raise Failure(f"--for must be within 0..{pause_seconds_max:.0f} seconds", status=2)
    _signal(process, signal.SIGSTOP)
    if seconds is None:
        text = f"paused {process['name']} pid={process['pid']} (`ringcast chaos resume {process['name']}`)"
        _say(arguments, text, "paused", process)
        return
    _say(
        arguments,
        f"paused {process['name']} pid={process['pid']} for {seconds:g} s",
        "paused",
        process,
        seconds=seconds,
    )
    try:
        time.sleep(seconds)
    finally:  # even on Ctrl-C: a pause with --for never outlives this command
        _signal(process, signal.SIGCONT)
    _say(arguments, f"resumed {process['name']} pid={process['pid']}", "resumed", process)


def _resume(arguments: argparse.Namespace, state: dict[str, Any]) -> None:
    process = _process(state, arguments.name)
    _signal(process, signal.SIGCONT)
    _say(arguments, f"resumed {process['name']} pid={process['pid']}", "resumed", process)


def _restart(arguments: argparse.Namespace, state: dict[str, Any]) -> None:
    process = _process(state, arguments.name)
    control = state.get("control")
    if not control:
        raise Failure("cluster.json names no control endpoint: restart works on a cluster run by `ringcast up`")
    try:
        answer = control_request(str(control), f"restart {process['name']}")
    except OSError as error:
        raise Failure(f"ringcast up's control endpoint {control} does not answer: {error}") from None
    if not answer.startswith("ok "):
        raise Failure(answer.removeprefix("error "))
    _say(arguments, f"restarted {process['name']} {answer.removeprefix('ok ')}", "restarted", process)


def _link(arguments: argparse.Namespace, state: dict[str, Any]) -> None:
    process = _process(state, arguments.name)
    if process.get("role") != "proxy" or not process.get("control"):
        proxies = [str(p["name"]) for p in state.get("processes", []) if p.get("role") == "proxy"]
        known = ", ".join(proxies) or "none (`ringcast up --proxy LINK` adds one)"
        raise Failure(f"{process['name']} is not a proxy; proxies: {known}", status=2)
    control = ProxyControl(str(process["control"]))
    try:
        if arguments.mode is None:
            if arguments.ms is not None or arguments.probability is not None:
                raise Failure("--ms and --probability go with a MODE", status=2)
            current = control.get()
        else:
            current = control.set(arguments.mode, ms=arguments.ms, probability=arguments.probability)
    except ValueError as error:
        raise Failure(str(error), status=2) from None
    except OSError as error:
        raise Failure(f"{process['name']}'s control port {process['control']} does not answer: {error}") from None
    parameters = {
        Mode.DELAY.value: f" ms={current.ms}",
        Mode.DROP.value: f" probability={current.probability} ms={current.ms}",
    }
    text = f"{process['name']} {current.mode}{parameters.get(current.mode, '')}"
    _say(arguments, text, "link", process, mode=current.mode, ms=current.ms, probability=current.probability)


ACTION_HANDLERS = {"kill": _kill, "pause": _pause, "resume": _resume, "restart": _restart, "link": _link}


def run(arguments: argparse.Namespace) -> int:
    try:
        ACTION_HANDLERS[arguments.action](arguments, _load_state(Path(arguments.state)))
    except Failure as failure:
        print(f"ringcast chaos {arguments.action}: {failure}", file=sys.stderr)
        return failure.status
    return 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state", default=".ringcast", help="the directory with cluster.json (default: .ringcast)")
    common.add_argument("--json", action="store_true", help="one JSON object per event on stdout, for scripts")
    chaos = commands.add_parser("chaos", help="kill, pause, restart processes and fault proxied links of a cluster")
    actions = chaos.add_subparsers(dest="action", required=True)
    kill = actions.add_parser("kill", parents=[common], help="SIGKILL the process")
    kill.add_argument("name", help="a process name from cluster.json")
    pause = actions.add_parser("pause", parents=[common], help="SIGSTOP the process; SIGCONT after --for SECONDS")
    pause.add_argument("name", help="a process name from cluster.json")
    pause.add_argument("--for", dest="seconds", type=float, default=None, help="resume after this many seconds")
    resume = actions.add_parser("resume", parents=[common], help="SIGCONT a paused process")
    resume.add_argument("name", help="a process name from cluster.json")
    restart = actions.add_parser(
        "restart", parents=[common], help="kill the process, start it again, wait until healthy (needs `ringcast up`)"
    )
    restart.add_argument("name", help="a process name from cluster.json")
    link = actions.add_parser("link", parents=[common], help="set or show the fault of a proxy's link")
    link.add_argument("name", help="a proxy's process name from cluster.json")
    link.add_argument("mode", nargs="?", choices=[mode.value for mode in Mode], help="the fault (none: show it)")
    link.add_argument("--ms", type=int, default=None, help="delay: added per chunk; drop: how long a lost chunk waits")
    link.add_argument("--probability", type=float, default=None, help="drop: the chance each chunk is lost")
    chaos.set_defaults(handler=run)
