"""`ringcast chaos` against a real `ringcast up`, and the topology's fault proxies.

One cluster (`ringcast up` with a proxy on channel-1's link to store-a, in a temporary directory)
serves every step of the CLI test: pause with --for, kill, restart through `ringcast up`'s control
endpoint (the new pid lands in cluster.json and the process is healthy again, still supervised),
a proxy's link fault, a proxy restarted, and unknown names. Then SIGINT stops `ringcast up`, and no
pid cluster.json ever named may be left alive.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ringcast_tools.chaos.proxy import ProxyControl
from ringcast_tools.cli import main
from ringcast_tools.cluster.launcher import healthy
from ringcast_tools.cluster.topology import ProcessSpec, local_topology, proxy_name, sequential_ports
from tests.integration.procs import free_port_run

ROOT = Path(__file__).resolve().parents[2]
up_ready_timeout_s = 90.0
command_timeout_s = 60.0
STORE_LINK = "channel-1->store-a"


def test_the_default_topology_has_no_proxy_and_keeps_its_addresses() -> None:
    plain = local_topology(Path("/data"), ports=sequential_ports(7400))
    assert [spec.address for spec in plain.processes] == [f"127.0.0.1:{port}" for port in (7400, *range(7402, 7411))]
    assert not plain.by_role("proxy") and all(spec.control == "" for spec in plain.processes)
    assert local_topology(Path("/data"), ports=sequential_ports(7400), proxies=()) == plain


def test_proxies_take_the_next_ports_and_sit_in_front_of_what_their_channel_node_dials() -> None:
    plain = local_topology(Path("/data"), ports=sequential_ports(7400))
    links = [STORE_LINK, "channel-1->etcd", "->channel-2"]
    proxied = local_topology(Path("/data"), ports=sequential_ports(7400), proxies=links)
    names = [spec.name for spec in proxied.processes]
    proxies = {link: proxied.named(proxy_name(link)) for link in links}
    assert [proxies[link].name for link in links] == [
        "proxy-channel-1-store-a",
        "proxy-channel-1-etcd",
        "proxy-to-channel-2",
    ]
    # Nobody else moved; the proxies took the ports after the last gateway's.
    for spec in plain.processes:
        assert proxied.named(spec.name).address == spec.address
    assert [(p.address, p.control) for p in proxies.values()] == [
        ("127.0.0.1:7411", "127.0.0.1:7412"),
        ("127.0.0.1:7413", "127.0.0.1:7414"),
        ("127.0.0.1:7415", "127.0.0.1:7416"),
    ]
    # Each proxy starts before the channel node that dials (or advertises) it.
    for link, proxy in proxies.items():
        channel = "channel-2" if link.startswith("->") else "channel-1"
        assert proxy.role == "proxy" and names.index(proxy.name) < names.index(channel)
        assert _argument(proxy, "--listen") == proxy.address and _argument(proxy, "--control") == proxy.control
    assert _argument(proxies[STORE_LINK], "--target") == plain.named("store-a").address
    assert _argument(proxies["channel-1->etcd"], "--target") == plain.named("etcd").address
    assert _argument(proxies["->channel-2"], "--target") == plain.named("channel-2").address
    one, two = proxied.named("channel-1").env, proxied.named("channel-2").env
    assert one["RINGCAST_STORES"].split(",")[0] == f"a={proxies[STORE_LINK].address}"
    assert one["RINGCAST_STORES"].split(",")[1:] == plain.named("channel-1").env["RINGCAST_STORES"].split(",")[1:]
    assert one["RINGCAST_ETCD"] == proxies["channel-1->etcd"].address
    assert two["RINGCAST_ADVERTISE"] == proxies["->channel-2"].address and "RINGCAST_ADVERTISE" not in one
    metrics_port = "RINGCAST_METRICS_LISTEN"  # metrics ports come after the proxies
    assert {k: v for k, v in proxied.named("channel-3").env.items() if k != metrics_port} == {
        k: v for k, v in plain.named("channel-3").env.items() if k != metrics_port
    }


def test_the_redis_engine_puts_a_syncing_redis_before_each_store_and_moves_nobody() -> None:
    plain = local_topology(Path("/data"), ports=sequential_ports(7400))
    over_redis = local_topology(Path("/data"), ports=sequential_ports(7400), engine="redis")
    names = [spec.name for spec in over_redis.processes]
    for spec in plain.processes:
        moved = over_redis.named(spec.name)
        assert moved.address == spec.address and moved.argv == spec.argv
    for index, zone in enumerate("abc"):
        redis = over_redis.named(f"redis-{zone}")
        assert redis.role == "redis" and redis.address == f"127.0.0.1:{7411 + index}"
        assert names.index(redis.name) == names.index(f"store-{zone}") - 1
        assert _argument(redis, "--appendfsync") == "always" and _argument(redis, "--appendonly") == "yes"
        assert _argument(redis, "--dir") == f"/data/redis-{zone}"
        assert over_redis.named(f"store-{zone}").env["RINGCAST_REDIS"] == f"redis://{redis.address}/0"
    with pytest.raises(ValueError, match="store engine 'mongo'"):
        local_topology(Path("/data"), engine="mongo")


@pytest.mark.parametrize(
    ("links", "error"),
    [
        (["channel-9->etcd"], "there is no channel-9"),
        (["channel-1->store-q"], "there is no store-q"),
        (["->store-a"], "expected one of"),
        (["channel-1->channel-2"], "expected one of"),
        (["channel-1"], "expected one of"),
        (["->channel-1", "->channel-1"], "given twice: proxy-to-channel-1"),
    ],
)
def test_a_link_that_cannot_be_proxied_is_refused(links: list[str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        local_topology(Path("/data"), proxies=links)


@pytest.mark.timeout(180)
def test_chaos_commands_against_ringcast_up(tmp_path: Path) -> None:
    base = free_port_run(64)
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log_file:
        up = subprocess.Popen(
            [sys.executable, "-m", "ringcast_tools", "up", "--base-port", str(base), "--proxy", STORE_LINK],
            cwd=tmp_path,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    pids_seen: set[int] = set()
    try:
        _wait_for_line(up, log_path, "Ctrl-C stops")
        state = _state(tmp_path)
        pids_seen |= {int(process["pid"]) for process in state["processes"]}
        assert "control" in state

        # pause --for: stopped while the command runs, running again once it has returned.
        channel_pid = _process(state, "channel-1")["pid"]
        pause = subprocess.Popen(
            [sys.executable, "-m", "ringcast_tools", "chaos", "pause", "channel-1", "--for", "1"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen_stopped = False
        while pause.poll() is None:
            seen_stopped = seen_stopped or _process_state(channel_pid) == "T"
            time.sleep(0.02)
        out, err = pause.communicate(timeout=command_timeout_s)
        assert pause.returncode == 0, err
        assert out.splitlines() == [
            f"paused channel-1 pid={channel_pid} for 1 s",
            f"resumed channel-1 pid={channel_pid}",
        ]
        assert seen_stopped and _process_state(channel_pid) not in ("T", "gone")

        # kill, then restart through `ringcast up`: a new pid, in cluster.json, healthy.
        old_pid = _process(state, "gateway-2")["pid"]
        killed = _chaos(tmp_path, "kill", "gateway-2")
        assert (killed.returncode, killed.stdout) == (0, f"killed gateway-2 pid={old_pid}\n"), killed.stderr
        _wait_until(lambda: _process_state(old_pid) in ("Z", "gone"), "gateway-2 to die")
        restarted = _chaos(tmp_path, "restart", "gateway-2")
        assert restarted.returncode == 0, restarted.stderr
        new = _process(_state(tmp_path), "gateway-2")
        assert restarted.stdout == f"restarted gateway-2 pid={new['pid']}\n"
        assert new["pid"] != old_pid and _process_state(new["pid"]) not in ("Z", "gone")
        assert healthy(_spec(new), timeout_s=5.0, tls_dir=str(state.get("tls_dir", "")))
        pids_seen.add(int(new["pid"]))

        # A link fault through the proxy's control port; a proxy restarts like any process, in `pass`.
        proxy = proxy_name(STORE_LINK)
        linked = _chaos(tmp_path, "link", proxy, "delay", "--ms", "30")
        assert (linked.returncode, linked.stdout) == (0, f"{proxy} delay ms=30\n"), linked.stderr
        control = ProxyControl(str(_process(state, proxy)["control"]))
        assert (control.get().mode, control.get().ms) == ("delay", 30)
        assert _chaos(tmp_path, "restart", proxy).returncode == 0
        new_proxy = _process(_state(tmp_path), proxy)
        pids_seen.add(int(new_proxy["pid"]))
        assert new_proxy["pid"] != _process(state, proxy)["pid"] and control.get().mode == "pass"
        shown = _chaos(tmp_path, "link", proxy)
        assert shown.stdout == f"{proxy} pass\n"

        # Unknown names and a non-proxy given to `link`: status 2 and the names to choose from.
        for action in ("kill", "pause", "resume", "restart", "link"):
            unknown = _chaos_in_process(tmp_path, action, "no-such-process")
            assert unknown[0] == 2 and "unknown process no-such-process" in unknown[1] and "gateway-1" in unknown[1]
        not_proxy = _chaos_in_process(tmp_path, "link", "gateway-1", "blackhole")
        assert not_proxy[0] == 2 and proxy in not_proxy[1]
        bad_parameter = _chaos_in_process(tmp_path, "link", proxy, "blackhole", "--ms", "5")
        assert bad_parameter[0] == 2 and control.get().mode == "pass"
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
    output = log_path.read_text(errors="replace")
    assert up.returncode == 0, output
    pids_seen |= {int(process["pid"]) for process in _state(tmp_path)["processes"]}
    assert [pid for pid in sorted(pids_seen) if _process_state(pid) not in ("Z", "gone")] == [], output


def _argument(spec: ProcessSpec, flag: str) -> str:
    return spec.argv[spec.argv.index(flag) + 1]


def _wait_for_line(up: subprocess.Popen[bytes], log_path: Path, text: str) -> None:
    deadline = time.monotonic() + up_ready_timeout_s
    while text not in log_path.read_text(errors="replace"):
        assert up.poll() is None, log_path.read_text(errors="replace")
        assert time.monotonic() < deadline, log_path.read_text(errors="replace")
        time.sleep(0.1)


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout_s} s for {what}"
        time.sleep(0.02)


def _state(directory: Path) -> dict[str, Any]:
    return dict(json.loads((directory / ".ringcast" / "cluster.json").read_text()))


def _process(state: dict[str, Any], name: str) -> dict[str, Any]:
    return next(dict(process) for process in state["processes"] if process["name"] == name)


def _spec(process: dict[str, Any]) -> ProcessSpec:
    return ProcessSpec(
        name=process["name"],
        role=process["role"],
        address=process["address"],
        argv=(),
        control=process.get("control", ""),
    )


def _process_state(pid: int) -> str:
    """The kernel's one-letter state of `pid` (R, S, T, Z, ...), or "gone"."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    except FileNotFoundError:
        pass
    return "gone"


def _chaos(directory: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ringcast_tools", "chaos", *arguments],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=command_timeout_s,
    )


def _chaos_in_process(directory: Path, *arguments: str) -> tuple[int, str]:
    """`ringcast chaos ...` run by `main` here (for the quick refusals); the status and stderr."""
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        status = main(["chaos", *arguments, "--state", str(directory / ".ringcast")])
    return status, errors.getvalue()
