"""The proto names each language's package itself, so that no generator needs flags (Go's M mappings) for it.

Read from what buf builds of protos/ (the image other languages generate from) and from the committed Python
stubs (whose serialized descriptor must carry the same options: stale stubs would not).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from google.protobuf import descriptor_pb2

from facilitair.v1 import orchestrator_pb2
from tests.harness.cli import BUF

ROOT = Path(__file__).resolve().parent.parent
PROTO = "facilitair/v1/orchestrator.proto"
EXPECTED = {
    "go_package": "github.com/facilitair/facilitair/gen/go/facilitair/v1;facilitairv1",
    "java_package": "com.facilitair.v1",
    "java_multiple_files": True,
    "java_outer_classname": "OrchestratorProto",
    "csharp_namespace": "Facilitair.V1",
    "php_namespace": "Facilitair\\V1",
    "php_metadata_namespace": "Facilitair\\V1\\GPBMetadata",
    "ruby_package": "Facilitair::V1",
    "objc_class_prefix": "FXX",
}


def _options(options: descriptor_pb2.FileOptions) -> dict[str, object]:
    return {name: getattr(options, name) for name in EXPECTED}


def test_buf_builds_the_proto_with_every_languages_package(tmp_path: Path) -> None:
    assert BUF is not None, "buf comes with the dev dependencies (buf-bin)"
    image = tmp_path / "image.binpb"
    subprocess.run([BUF, "build", "--exclude-imports", "-o", str(image)], cwd=ROOT, check=True, timeout=120)
    files = descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes()).file
    assert [f.name for f in files] == [PROTO]
    (built,) = files
    assert built.package == "facilitair.v1"
    assert _options(built.options) == EXPECTED
    # The Go package name is the last path element plus the version, as `buf lint` and Go style expect.
    path, _, name = built.options.go_package.partition(";")
    assert path.endswith("/facilitair/v1")
    assert name == "facilitairv1"


def test_the_committed_python_stubs_carry_the_same_options() -> None:
    stub = descriptor_pb2.FileDescriptorProto()
    orchestrator_pb2.DESCRIPTOR.CopyToProto(stub)
    assert stub.name == PROTO
    assert _options(stub.options) == EXPECTED
