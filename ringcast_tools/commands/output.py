"""How commands print: tables and progress bars for people, one JSON object per line with `--json`.

Data goes to stdout; progress, notices and errors go to stderr, so `--json` output pipes cleanly.
Progress bars show only on a terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

import ringcast

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object per line on stdout, for scripts")


def json_line(record: Mapping[str, object]) -> None:
    sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def notice(text: str) -> None:
    stderr.print(text, markup=False)


def fail(error: ringcast.RingcastError) -> int:
    """Print a refused or failed request as `error: CODE REASON: message` on stderr; exit status 1."""
    print(f"error: {error.code.name} {error.reason}: {error.message}", file=sys.stderr)
    return 1


def message_record(message: ringcast.Message) -> dict[str, object]:
    return {
        "channel": message.channel,
        "serial": message.serial,
        "id": message.id,
        "name": message.name,
        "data": message.data.decode("utf-8", "replace"),
        "headers": dict(message.headers),
        "timestamp_ms": message.timestamp_ms,
        "client_id": message.client_id,
    }


def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    view = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    for column in columns:
        view.add_column(column, overflow="fold")
    for row in rows:
        view.add_row(*row)
    stdout.print(view)


@contextmanager
def progress(description: str, total: float | None, *, enabled: bool = True) -> Iterator[Callable[[float], None]]:
    """A progress bar on stderr (only on a terminal); yields `advance(amount)`."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
        disable=not enabled or not stderr.is_terminal,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda amount: bar.advance(task, amount)
