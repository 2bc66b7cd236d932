"""Generate the Python code for protos/ringcast/v1/*.proto into ringcast/v1/.

    python scripts/gen_protos.py            # write ringcast/v1/
    python scripts/gen_protos.py --out DIR  # write DIR/ringcast/v1/ (the staleness test compares)
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

import google.rpc.status_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"


def generate(out: Path) -> list[Path]:
    sources = sorted(PROTOS.glob("ringcast/v1/*.proto"))
    googleapis = Path(google.rpc.status_pb2.__file__).resolve().parents[2]  # the dir holding google/rpc
    well_known = Path(str(resources.files("grpc_tools") / "_proto"))
    (out / "ringcast" / "v1").mkdir(parents=True, exist_ok=True)
    arguments = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{googleapis}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(source.relative_to(PROTOS)) for source in sources),
    ]
    if protoc.main(arguments) != 0:
        raise SystemExit("protoc failed")
    package = out / "ringcast" / "v1"
    init = package / "__init__.py"
    init.write_text('"""Generated from protos/ringcast/v1 by scripts/gen_protos.py. Do not edit."""\n')
    return sorted(p for p in package.iterdir() if p.suffix in (".py", ".pyi"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT)
    arguments = parser.parse_args()
    for path in generate(arguments.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
