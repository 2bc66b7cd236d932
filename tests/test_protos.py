"""The protos are a contract: generated code must match them, and they follow the Buf style."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = sorted((ROOT / "protos" / "ringcast" / "v1").glob("*.proto"))


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "scripts/gen_protos.py", "--out", str(tmp_path)], cwd=ROOT, check=True)
    fresh = {p.name: p.read_text() for p in (tmp_path / "ringcast" / "v1").iterdir() if p.suffix in (".py", ".pyi")}
    committed = {p.name: p.read_text() for p in (ROOT / "ringcast" / "v1").iterdir() if p.suffix in (".py", ".pyi")}
    stale = sorted(name for name in fresh if committed.get(name) != fresh[name])
    assert not stale and set(committed) == set(fresh), f"run scripts/gen_protos.py; stale: {stale}"


def test_public_names_are_the_contract() -> None:
    from ringcast.v1 import message_pb2, realtime_service_pb2

    service = realtime_service_pb2.DESCRIPTOR.services_by_name["RealtimeService"]
    assert [method.name for method in service.methods] == [
        "Publish",
        "PublishStream",
        "PublishPipe",  # beyond DESIGN §4: many channels on one stream, answered out of order (the SDK's)
        "Subscribe",
        "History",
        "GetChannel",
    ]
    fields = [field.name for field in message_pb2.Message.DESCRIPTOR.fields]
    assert fields == ["id", "name", "data", "headers", "serial", "timestamp_ms"]
    assert realtime_service_pb2.DESCRIPTOR.package == "ringcast.v1"


def test_buf_style() -> None:
    for path in PROTOS:
        text = path.read_text()
        assert path.name == "message.proto" or path.name.endswith("_service.proto"), path.name
        assert "package ringcast.v1;" in text
        lines = text.splitlines()
        for index, line in enumerate(lines):
            stripped = line.strip()
            field = re.match(r"^(repeated |optional )?[\w.<>, ]+ \w+ = \d+;$", stripped)
            if field and not stripped.startswith(("rpc ", "option ")):
                assert lines[index - 1].strip().startswith("//"), f"{path.name}:{index + 1} undocumented: {stripped}"
            enum_zero = re.match(r"^(\w+) = 0;$", stripped)
            if enum_zero:
                assert enum_zero.group(1).endswith("_UNSPECIFIED"), f"{path.name}:{index + 1}"
            rpc = re.match(r"^rpc (\w+)\((stream )?(\w+)\) returns \((stream )?([\w.]+)\);$", stripped)
            if rpc:
                name, request, response = rpc.group(1), rpc.group(3), rpc.group(5)
                if name in ("PublishStream", "AppendStream"):  # the same messages as the unary call, streamed
                    name = name.removesuffix("Stream")
                assert request.endswith(f"{name}Request"), stripped
                assert response.endswith(f"{name}Response") or response in ("Channel", "Ring"), stripped
