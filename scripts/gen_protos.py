"""Generate the Python stubs for protos/ into client/, or check that the committed ones are fresh.

Run with the project's virtualenv: `python scripts/gen_protos.py` writes the stubs,
`python scripts/gen_protos.py --check` fails (exit 1) when regenerating would change them.
grpc_tools bundles the protoc that matches grpcio-tools, and mypy-protobuf adds typed .pyi files.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "client"
PACKAGE = Path("facilitair") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out_root: Path) -> list[Path]:
    """Run protoc on every .proto file and return the generated files, relative to out_root."""
    import grpc_tools

    protos = sorted(p.relative_to(PROTO_ROOT) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    bin_dir = Path(sys.executable).parent
    include = Path(grpc_tools.__file__).parent / "_proto"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *[str(p) for p in protos],
    ]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return sorted(
        p.relative_to(out_root) for p in (out_root / PACKAGE).iterdir() if p.name.endswith(GENERATED_SUFFIXES)
    )


def main() -> int:
    """Write or check the stubs."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        (fresh_root / PACKAGE).mkdir(parents=True)
        fresh = generate(fresh_root)
        committed = sorted(
            p.relative_to(OUT_ROOT) for p in (OUT_ROOT / PACKAGE).iterdir() if p.name.endswith(GENERATED_SUFFIXES)
        )
        if args.check:
            stale = [
                str(p)
                for p in fresh
                if not (OUT_ROOT / p).exists() or not filecmp.cmp(fresh_root / p, OUT_ROOT / p, shallow=False)
            ]
            stale += [str(p) for p in committed if p not in fresh]
            if stale:
                print("generated stubs are stale; run `python scripts/gen_protos.py`:", *stale, sep="\n  ")
                return 1
            print(f"generated stubs are fresh ({len(fresh)} files)")
            return 0
        for p in committed:
            if p not in fresh:
                (OUT_ROOT / p).unlink()
        for p in fresh:
            shutil.copyfile(fresh_root / p, OUT_ROOT / p)
        print(f"wrote {len(fresh)} files under {OUT_ROOT / PACKAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
