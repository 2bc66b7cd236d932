"""The protos are a contract: buf builds and lints them offline, a breaking change to the public
package fails, and the generated code matches them.

buf comes from npm, pinned in tools/buf/package-lock.json; `./dev setup` installs it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
BUF = ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"
GENERATED = ("ringcast/v1", "services/internal/v1")


def buf(*arguments: str, cwd: Path = PROTOS) -> subprocess.CompletedProcess[str]:
    if not BUF.exists():
        pytest.fail(f"{BUF} is missing: run ./dev setup (it installs buf from npm)")
    return subprocess.run([str(BUF), *arguments], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "scripts/gen_protos.py", "--out", str(tmp_path)], cwd=ROOT, check=True)
    for directory in GENERATED:
        fresh = {p.name: p.read_text() for p in (tmp_path / directory).iterdir() if p.suffix in (".py", ".pyi")}
        committed = {p.name: p.read_text() for p in (ROOT / directory).iterdir() if p.suffix in (".py", ".pyi")}
        stale = sorted(name for name in fresh if committed.get(name) != fresh[name])
        assert not stale and set(committed) == set(fresh), f"run scripts/gen_protos.py; stale in {directory}: {stale}"


def test_the_public_package_is_what_clients_use() -> None:
    from ringcast.v1 import message_pb2, realtime_service_pb2

    service = realtime_service_pb2.DESCRIPTOR.services_by_name["RealtimeService"]
    assert [method.name for method in service.methods] == [
        "Publish",
        "PublishStream",
        "PublishPipe",  # beyond DESIGN §4: many channels on one stream, answered out of order (the SDK's)
        "Subscribe",
        "History",
        "GetChannel",
        "EnterPresence",  # DESIGN §11 (issue #19)
        "UpdatePresence",
        "LeavePresence",
        "GetPresence",
        "SubscribePresence",
    ]
    fields = [field.name for field in message_pb2.Message.DESCRIPTOR.fields]
    assert fields == ["id", "name", "data", "headers", "serial", "timestamp_ms", "client_id"]
    assert realtime_service_pb2.DESCRIPTOR.package == "ringcast.v1"
    public = sorted(path.name for path in (PROTOS / "ringcast" / "v1").glob("*.proto"))
    assert public == [
        "message.proto",
        "presence.proto",
        "realtime_service.proto",
    ]  # the internal services are elsewhere
    internal = sorted(path.name for path in (PROTOS / "ringcast" / "internal" / "v1").glob("*.proto"))
    assert internal == ["channel_service.proto", "placement_service.proto", "store_service.proto"]
    assert not (ROOT / "ringcast" / "internal").exists()  # the SDK ships the public stubs only


def test_vendored_google_protos_are_those_of_the_installed_googleapis_common_protos() -> None:
    """protos/google/rpc/ (what the contract imports, for buf, protoc and the Node example) must
    not drift from the pinned Python package whose generated code the platform runs."""
    from google.rpc import status_pb2

    installed = Path(status_pb2.__file__).parent
    vendored = PROTOS / "google" / "rpc"
    for name in ("status.proto", "error_details.proto"):
        assert (vendored / name).read_bytes() == (installed / name).read_bytes(), f"refresh {vendored / name}"


def test_the_node_example_loads_the_public_package_only() -> None:
    client = (ROOT / "examples" / "node" / "ringcast.js").read_text()
    assert "ringcast/v1/realtime_service.proto" in client and "internal" not in client


def test_buf_builds_and_lints_offline() -> None:
    built = buf("build")
    assert built.returncode == 0, built.stderr
    linted = buf("lint")
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_lint_exceptions_are_the_internal_packages_only() -> None:
    config = (PROTOS / "buf.yaml").read_text()
    exempted = [line.strip()[2:] for line in config.splitlines() if line.strip().startswith("- ringcast/")]
    assert exempted and all(path.startswith("ringcast/internal") for path in exempted), exempted


def _is_buf_module(ref: str) -> bool:
    found = subprocess.run(["git", "cat-file", "-e", f"{ref}:protos/buf.yaml"], cwd=ROOT, capture_output=True)
    return found.returncode == 0


def test_no_breaking_change_to_the_public_package_since_the_last_commit() -> None:
    """The working tree against HEAD (a change not committed yet), and HEAD against its parent (the
    last commit), wherever the older side is a buf module already (the commit that made the
    contract one has nothing to compare with)."""
    git = ROOT / ".git"
    if not git.exists():
        pytest.skip("not a git checkout")
    compared = 0
    if _is_buf_module("HEAD"):
        against_head = buf("breaking", "--against", f"{git}#ref=HEAD,subdir=protos")
        assert against_head.returncode == 0, against_head.stdout + against_head.stderr
        compared += 1
    if _is_buf_module("HEAD~1"):
        head = f"{git}#ref=HEAD,subdir=protos"
        last_commit = buf("breaking", head, "--against", f"{git}#ref=HEAD~1,subdir=protos")
        assert last_commit.returncode == 0, last_commit.stdout + last_commit.stderr
        compared += 1
    if not compared:
        pytest.skip("no commit of the contract as a buf module to compare with yet")


def test_the_breaking_check_fails_on_a_planted_break_of_the_public_package(tmp_path: Path) -> None:
    changed = tmp_path / "protos"
    shutil.copytree(PROTOS, changed)
    message = changed / "ringcast" / "v1" / "message.proto"
    text = message.read_text()
    planted = text.replace(
        "  // Optional event name, for the application's own dispatch. At most 256 chars.\n  string name = 2;\n", ""
    )
    assert planted != text
    message.write_text(planted)
    broken = buf("breaking", str(changed), "--against", str(PROTOS), cwd=ROOT)
    assert broken.returncode != 0 and 'Previously present field "2" with name "name"' in broken.stdout, broken.stdout
    # The internal package changes with the platform: the same break there is not reported.
    shutil.rmtree(changed)
    shutil.copytree(PROTOS, changed)
    store = changed / "ringcast" / "internal" / "v1" / "store_service.proto"
    store.write_text(store.read_text().replace("  uint64 epoch = 2;\n", "", 1))
    assert buf("breaking", str(changed), "--against", str(PROTOS), cwd=ROOT).returncode == 0
