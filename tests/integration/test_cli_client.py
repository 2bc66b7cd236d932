"""The `ringcast` client commands on the SDK, against a real cluster: their `--json` lines are a
contract for scripts, their tables are for people, their errors carry the platform's reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ringcast_tools.cluster.launcher import Launcher

ROOT = Path(__file__).resolve().parents[2]


def ringcast(cluster: Launcher, *arguments: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    gateways = [flag for address in cluster.topology.gateways for flag in ("--gateway", address)]
    return subprocess.run(
        [sys.executable, "-m", "ringcast_tools", *arguments, *gateways],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_publish_history_subscribe_channel_as_json(cluster: Launcher) -> None:
    first = json_lines(ringcast(cluster, "publish", "cli-json", "one", "two", "--name", "n", "--json"))
    assert [line["serial"] for line in first] == [1, 2]
    again = json_lines(ringcast(cluster, "publish", "cli-json", "one", f"--id={first[0]['id']}", "--json"))
    assert again[0]["serial"] == 1  # the same id: the original serial

    lines = "".join(f"line {index}\n" for index in range(2500))
    bulk = json_lines(ringcast(cluster, "publish", "cli-json", "--file", "-", "--json", stdin=lines))
    assert [line["serial"] for line in bulk] == list(range(3, 2503))

    everything = json_lines(ringcast(cluster, "history", "cli-json", "--all", "--json"))
    assert [line["serial"] for line in everything] == list(range(1, 2503))
    assert everything[0]["data"] == "one" and everything[0]["name"] == "n" and everything[-1]["data"] == "line 2499"
    newest = json_lines(ringcast(cluster, "history", "cli-json", "--reverse", "--limit", "2", "--json"))
    assert [line["serial"] for line in newest] == [2502, 2501]

    followed = json_lines(ringcast(cluster, "subscribe", "cli-json", "--rewind", "2", "--count", "2", "--json"))
    assert [line["serial"] for line in followed] == [2501, 2502]

    (channel,) = json_lines(ringcast(cluster, "channel", "cli-json", "--json"))
    assert channel["last_serial"] == 2502 and str(channel["owner"]).startswith("channel-")


def test_tables_for_people_and_reasons_for_errors(cluster: Launcher) -> None:
    assert ringcast(cluster, "publish", "cli-table", "hello").returncode == 0
    table = ringcast(cluster, "history", "cli-table")
    assert table.returncode == 0, table.stderr
    assert "serial" in table.stdout and "hello" in table.stdout and "cli-table: 1 messages" in table.stdout

    refused = ringcast(cluster, "publish", "bad name!", "x")
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith(
        "error: INVALID_ARGUMENT CHANNEL_NAME_INVALID: channel name may only use A-Z a-z 0-9 _ - : . @"
    ), refused.stderr
    assert "Traceback" not in refused.stderr


def test_ring_as_a_table_and_as_json(cluster: Launcher) -> None:
    placement = cluster.topology.by_role("placement")[0].address
    shown = subprocess.run(
        [sys.executable, "-m", "ringcast_tools", "ring", "cli-json", "--placement", placement, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    (ring,) = json_lines(shown)
    assert len(ring["channel_nodes"]) == 3 and len(ring["stores"]) == 3
    assert str(ring["owners"]["cli-json"]).startswith("channel-")
    table = subprocess.run(
        [sys.executable, "-m", "ringcast_tools", "ring", "--placement", placement],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0 and "channel nodes" in table.stdout and "store-a" in table.stdout


def test_presence_enter_list_and_watch(cluster: Launcher) -> None:
    """`ringcast presence CHANNEL --enter DATA` stays present until interrupted; the list (a table,
    or one JSON object per member), `--watch` and `ringcast channel` see it."""
    gateways = [flag for address in cluster.topology.gateways for flag in ("--gateway", address)]
    command = [sys.executable, "-m", "ringcast_tools", "presence", "cli-room", *gateways]
    entering = subprocess.Popen([*command, "--enter", "hello"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    watching = subprocess.Popen([*command, "--watch", "--json"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert entering.stderr is not None
        notices = []
        while not (notices and notices[-1].startswith("entered cli-room as connection ")):
            notices.append(entering.stderr.readline())  # connection state notices come first
            assert notices[-1], notices
        (member,) = json_lines(ringcast(cluster, "presence", "cli-room", "--json"))
        assert member["data"] == "hello" and member["channel"] == "cli-room" and member["serial"] == 1
        table = ringcast(cluster, "presence", "cli-room")
        assert "cli-room: 1 members at presence serial 1" in table.stdout and "hello" in table.stdout, table.stdout
        (channel,) = json_lines(ringcast(cluster, "channel", "cli-room", "--json"))
        assert channel["members"] == 1
        assert watching.stdout is not None
        seen = json.loads(watching.stdout.readline())  # the set at the start: the member entered
        assert (seen["action"], seen["data"]) in {("present", "hello"), ("enter", "hello")}, seen
    finally:
        for process in (entering, watching):
            process.send_signal(2)  # Ctrl-C
            process.wait(20)
    assert entering.returncode == 130
