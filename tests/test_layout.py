"""The layout is the architecture (DESIGN §9): imports point one way, and this test says which.

    ringcast/           the client SDK: imports nothing of services/ or ringcast_tools/;
                        its ringcast/reasons.py (the list of reasons) is pure, and the core uses it
    services/core/      pure state machines: other core modules and the pure standard library only
    services/common/    what the services share: core, internal stubs, the SDK's public names, itself
    services/<service>/ an adapter: core, common, internal stubs, the SDK's public names, itself —
                        never another service
    services/internal/  generated stubs of the internal protos (ringcast.internal.v1)
    ringcast_tools/     the tools (CLI, launcher, simulator, chaos, bench): anything; nothing imports them

`RULES` is the one list of allowed edges. Imports are read with `ast` from every hand-written module
(generated stubs aside: ringcast/v1/, the SDK's, and services/internal/, the platform's). A module's imports inside `if
TYPE_CHECKING:` count too: a type is a dependency.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SERVICES = ("gateway", "placement", "channel", "store")

IMPURE_STANDARD_MODULES = frozenset(
    {
        "asyncio",
        "concurrent",
        "multiprocessing",
        "os",
        "random",
        "selectors",
        "signal",
        "socket",
        "sqlite3",
        "subprocess",
        "threading",
        "time",
    }
)
"""Standard modules a core module must not import: I/O, clocks, threads, processes, randomness (a
core that needs randomness is handed a `random.Random`, whose type it may name under TYPE_CHECKING)."""


@dataclass(frozen=True)
class Rule:
    """What the modules of one package may import: other first-party packages (by prefix), and
    whether they may import third-party packages and which standard modules they may not."""

    first_party: tuple[str, ...]
    third_party: bool = True
    forbidden_standard: frozenset[str] = frozenset()
    sdk_private: bool = False
    """May it import the SDK's private modules (`ringcast._client`)? The SDK itself and the tools."""


SDK_PUBLIC = ("ringcast", "ringcast.pipe", "ringcast.v1")
"""What of the SDK the platform may import: its public names, its public pipe module, the stubs."""

RULES: dict[str, Rule] = {
    "ringcast": Rule(("ringcast",), sdk_private=True),
    # The core gives the platform's reasons, and the one list of them is the SDK's (ringcast.Reason):
    # a pure module, held to the core's own rule below.
    "services.core": Rule(
        ("services.core", "ringcast.reasons"), third_party=False, forbidden_standard=IMPURE_STANDARD_MODULES
    ),
    "ringcast.reasons": Rule((), third_party=False, forbidden_standard=IMPURE_STANDARD_MODULES),
    "services.common": Rule(("services.common", "services.core", "services.internal", *SDK_PUBLIC)),
    **{
        f"services.{service}": Rule(
            (f"services.{service}", "services.common", "services.core", "services.internal", *SDK_PUBLIC)
        )
        for service in SERVICES
    },
    "services": Rule(("services",)),  # services/__init__.py
    "ringcast_tools": Rule(("ringcast", "ringcast_tools", "services"), sdk_private=True),
}
"""Package → what its modules may import. The most specific package prefix of a module applies."""

FIRST_PARTY = ("ringcast", "ringcast_tools", "services")


def rule_for(module: str) -> Rule:
    matches = [package for package in RULES if module == package or module.startswith(package + ".")]
    assert matches, f"{module} is in no package of RULES: say where it belongs"
    return RULES[max(matches, key=len)]


def _imported(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = module.rsplit(".", node.level)[0]
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names if name in SDK_PUBLIC]
    return found


def _allowed(target: str, rule: Rule) -> bool:
    top = target.split(".")[0]
    if top == "__future__":
        return True
    if top in FIRST_PARTY:
        listed = any(target == allowed or target.startswith(allowed + ".") for allowed in rule.first_party)
        private_sdk = top == "ringcast" and any(part.startswith("_") for part in target.split(".")[1:])
        return listed and (rule.sdk_private or not private_sdk)
    if top in sys.stdlib_module_names:
        return top not in rule.forbidden_standard
    return rule.third_party


def violations_in(source: str, module: str) -> list[str]:
    """Each import of `source` (the text of `module`) that its package's rule does not allow."""
    rule = rule_for(module)
    return [
        f"{module}:{line} imports {target}"
        for line, target in _imported(ast.parse(source), module)
        if not _allowed(target, rule)
    ]


def hand_written_modules() -> dict[str, Path]:
    modules = {}
    for package in FIRST_PARTY:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).with_suffix("")
            if relative.parts[:2] == ("ringcast", "v1") or relative.parts[:2] == ("services", "internal"):
                continue  # generated (scripts/gen_protos.py)
            parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
            modules[".".join(parts)] = path
    return modules


def test_every_import_points_the_way_the_layout_allows() -> None:
    found = [
        violation
        for module, path in hand_written_modules().items()
        for violation in violations_in(path.read_text(), module)
    ]
    assert found == [], "\n".join(found)


def test_nothing_imports_the_tools_but_the_tools_and_the_tests() -> None:
    importers = [
        f"{module} imports {target}"
        for module, path in hand_written_modules().items()
        if not module.startswith("ringcast_tools")
        for _, target in _imported(ast.parse(path.read_text()), module)
        if target.split(".")[0] == "ringcast_tools"
    ]
    assert importers == []


def test_the_rules_catch_a_planted_wrong_import() -> None:
    """The checker itself must be able to fail: each of these imports breaks one rule."""
    planted = {
        "services.core.role": ["import asyncio", "import grpc", "from services.common import metrics", "import time"],
        "ringcast._client": ["from services.core.entries import Entry", "import ringcast_tools.cli"],
        "services.channel.server": ["from services.gateway.feed import follow_owner", "from ringcast._pipe import x"],
        "services.common.errors": ["from services.store import rows"],
        "services.core.node": ["from ringcast import Reason", "from ringcast._errors import Unavailable"],
        "ringcast.reasons": ["import grpc", "from ringcast._errors import DOMAIN"],
    }
    for module, imports in planted.items():
        for line in imports:
            assert violations_in(line, module), f"{module}: `{line}` was allowed"
    allowed = {
        "services.core.role": [
            "import zlib",
            "from services.core.entries import Entry",
            "from dataclasses import field",
            "from ringcast.reasons import Reason",
        ],
        "services.channel.server": [
            "import grpc",
            "from ringcast.pipe import call_error",
            "from ringcast import error_info",
        ],
        "ringcast._client": ["from ringcast._errors import RingcastError", "import grpc"],
        "ringcast_tools.sim.cluster": ["from services.core.role import ChannelRole", "import random"],
    }
    for module, imports in allowed.items():
        for line in imports:
            assert violations_in(line, module) == [], f"{module}: `{line}` was refused"
