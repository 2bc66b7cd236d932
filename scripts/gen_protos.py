"""Generate the Python code of the protos.

    protos/ringcast/v1/           → ringcast/v1/            the public contract: the SDK's stubs
    protos/ringcast/internal/v1/  → services/internal/v1/   placement, channel and store: the platform's

    python scripts/gen_protos.py            # write both
    python scripts/gen_protos.py --out DIR  # write DIR/ringcast/v1/ and DIR/services/internal/v1/
                                            # (the staleness test compares)

protoc names a generated module after its proto's path, so the internal stubs come out as
`ringcast/internal/v1/` importing `ringcast.internal.v1`: they are moved to `services/internal/v1/`
and that import is rewritten, so that the SDK package holds the public stubs only. The descriptors
inside are untouched (their file names and packages stay `ringcast/internal/v1/…`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
PUBLIC = "ringcast/v1"
INTERNAL = "ringcast/internal/v1"
INTERNAL_TARGET = "services/internal/v1"
GENERATED = '"""Generated from protos/{source} by scripts/gen_protos.py. Do not edit."""\n'


def _protoc(sources: list[Path], out: Path) -> None:
    well_known = Path(str(resources.files("grpc_tools") / "_proto"))  # google/protobuf/*
    arguments = [
        "protoc",
        f"-I{PROTOS}",  # ringcast/ and the vendored google/rpc/
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(source.relative_to(PROTOS)) for source in sources),
    ]
    if protoc.main(arguments) != 0:
        raise SystemExit("protoc failed")


def _generated(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".py", ".pyi"))


def generate(out: Path) -> list[Path]:
    with tempfile.TemporaryDirectory() as scratch:
        staging = Path(scratch)
        _protoc(sorted(PROTOS.glob(f"{PUBLIC}/*.proto")) + sorted(PROTOS.glob(f"{INTERNAL}/*.proto")), staging)
        public, internal = out / PUBLIC, out / INTERNAL_TARGET
        for target in (public, internal):
            target.mkdir(parents=True, exist_ok=True)
            for stale in _generated(target):
                stale.unlink()
        for path in _generated(staging / PUBLIC):
            shutil.copy(path, public / path.name)
        for path in _generated(staging / INTERNAL):
            text = re.sub(
                r"\bfrom ringcast\.internal\.v1 import\b", "from services.internal.v1 import", path.read_text()
            )
            (internal / path.name).write_text(text)
    (public / "__init__.py").write_text(GENERATED.format(source=PUBLIC))
    (internal / "__init__.py").write_text(GENERATED.format(source=INTERNAL))
    parent = out / "services" / "internal" / "__init__.py"
    parent.write_text('"""The platform\'s generated internal stubs (see v1/)."""\n')
    return _generated(public) + _generated(internal)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT)
    arguments = parser.parse_args()
    for path in generate(arguments.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
