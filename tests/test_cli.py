"""The commands other tooling relies on: their output lines and exit codes are a contract."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ringcast(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ringcast_tools", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_sim_ends_with_the_summary_line_and_exits_zero_when_clean() -> None:
    result = ringcast("sim", "--seeds", "4", "--first-seed", "100")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "seeds=4 violations=0"


def test_sim_with_a_bug_prints_the_seed_and_a_replay_command_and_exits_zero() -> None:
    result = ringcast("sim", "--seeds", "3", "--bug", "reset-dedup-on-takeover")
    assert result.returncode == 0, result.stderr
    last = result.stdout.splitlines()[-1]
    assert re.fullmatch(r"seeds=3 violations=[1-3]", last), last
    replay = re.search(
        r"replay: (ringcast sim --seeds 1 --first-seed (\d+) --bug reset-dedup-on-takeover)", result.stdout
    )
    assert replay is not None
    again = ringcast(*replay.group(1).split()[1:])
    assert again.stdout.splitlines()[-1] == "seeds=1 violations=1"


def test_sim_exits_one_on_violations_without_a_bug(tmp_path: Path) -> None:
    """Exit status 1 when a clean run finds violations: shown by corrupting the checker's input."""
    script = (
        "import sys; import ringcast_tools.sim.cluster as c\n"
        "original = c.Simulation.adopted_log\n"
        "c.Simulation.adopted_log = lambda self, ch, rs: original(self, ch, rs)[:-1]\n"
        "from ringcast_tools.cli import main; sys.exit(main(['sim', '--seeds', '2', '--workers', '1']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1].startswith("seeds=2 violations=")


def test_sim_refuses_unknown_bug_names() -> None:
    result = ringcast("sim", "--seeds", "1", "--bug", "no-such-bug")
    assert result.returncode == 2 and "unknown bug" in result.stderr


def test_ring_simulate_prints_the_contract_line() -> None:
    result = ringcast("ring", "simulate", "--nodes", "3", "--channels", "1000")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        r"nodes=3 channels=1000 max_over_mean=\d+\.\d+ moved_on_join=\d+\.\d+ ideal=0\.2500", result.stdout.strip()
    )


def test_bench_without_a_cluster_says_how_to_get_one_and_exits_one() -> None:
    result = ringcast("bench", "--gateway", "127.0.0.1:1", "--publishers", "1", "--seconds", "1")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "no cluster answered at 127.0.0.1:1" in result.stderr and "ringcast up" in result.stderr


def test_health_exits_one_when_nothing_answers() -> None:
    result = ringcast("health", "127.0.0.1:1", "--timeout", "0.5")
    assert result.returncode == 1 and "Traceback" not in result.stderr
