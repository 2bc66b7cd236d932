"""One list of reasons (`ringcast.Reason`), used everywhere and described in the docs.

Fails when code gives a reason as a bare string (it must name a `Reason` member, so a reason not on
the list cannot be raised), when a string equal to a reason is spelled out anywhere but the list,
and when the list and docs/architecture.md's "Errors" section disagree.
"""

from __future__ import annotations

import ast
from pathlib import Path

from ringcast import Reason

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ringcast", "services", "ringcast_tools")

REASON_ARGUMENTS: dict[str, tuple[int | None, str]] = {
    # callable's name → (position of the reason argument or None, keyword)
    "ServiceError": (1, "reason"),
    "invalid": (0, "reason"),
    "unavailable": (0, "reason"),
    "error_for": (0, "reason"),
    "NoOwner": (0, "reason"),
    "stop": (0, "reason"),
    "stop_all": (0, "reason"),
    "PublishResult": (None, "reason"),
    "HistoryResult": (None, "reason"),
    "Delivery": (None, "end_reason"),
    "RingcastError": (None, "reason"),
    "InvalidArgument": (None, "reason"),
    "Unavailable": (None, "reason"),
    "ContinuityLost": (3, "reason"),
}
"""Every call that takes a reason, and where."""


def modules() -> list[Path]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "/v1/" in path.as_posix() or path.name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")):
                continue
            if path == ROOT / "ringcast" / "reasons.py":
                continue
            found.append(path)
    return found


def called_name(call: ast.Call) -> str:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return ""


def bare_reasons(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every reason given as a string literal, and of every string literal equal
    to a reason (a reason spelled out instead of named)."""
    values = {reason.value for reason in Reason}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (where := REASON_ARGUMENTS.get(called_name(node))):
            position, keyword = where
            arguments = [kw.value for kw in node.keywords if kw.arg == keyword]
            if position is not None and len(node.args) > position:
                arguments.append(node.args[position])
            for argument in arguments:
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str) and argument.value:
                    found.append((node.lineno, f"{called_name(node)}({argument.value!r})"))
        elif isinstance(node, ast.Constant) and node.value in values:
            found.append((node.lineno, repr(node.value)))
    return found


def test_code_names_every_reason_from_the_list() -> None:
    offences = []
    for path in modules():
        tree = ast.parse(path.read_text(), str(path))
        offences += [f"{path.relative_to(ROOT)}:{line}: {text}" for line, text in bare_reasons(tree)]
    assert not offences, "give reasons as Reason.X (ringcast/reasons.py):\n" + "\n".join(sorted(set(offences)))


def test_the_check_catches_a_bare_reason() -> None:
    planted = ast.parse('raise invalid("NOT_ON_THE_LIST", "x")\nreason = "CHANNEL_MOVED"\n')
    assert [text for _, text in bare_reasons(planted)] == ["invalid('NOT_ON_THE_LIST')", "'CHANNEL_MOVED'"]


def documented_reasons() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| reason")]
    assert rows, "docs/architecture.md has no reason table under ## Errors"
    return {row.strip("|").split("|")[0].strip() for row in rows}


def test_docs_describe_exactly_the_list() -> None:
    documented = documented_reasons()
    listed = {reason.value for reason in Reason}
    assert not listed - documented, f"reasons the docs (architecture.md, Errors) do not describe: {listed - documented}"
    assert not documented - listed, f"reasons the docs describe that are not on the list: {documented - listed}"
