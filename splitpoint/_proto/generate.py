"""Generate the committed gRPC stubs from proto/ (``make stubs``).

The .proto is compiled as ``splitpoint/_proto/grpc_service.proto`` so the
generated modules import each other by package path. The messages are
registered in a private descriptor pool rather than protobuf's default one:
tritonclient registers its own copy of the same ``inference.*`` messages in
the default pool, and two copies there refuse to load in one process. The
wire format does not depend on the pool.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_SOURCE = PACKAGE_DIR.parents[1] / "proto" / "grpc_service.proto"
GENERATED = ("grpc_service_pb2.py", "grpc_service_pb2.pyi", "grpc_service_pb2_grpc.py")
_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = "DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile("


def generate(out_dir: Path) -> None:
    """Write the generated modules for ``proto/grpc_service.proto`` into ``out_dir``."""
    from grpc_tools import protoc  # dev dependency, pinned to 1.78 for protobuf-6 gencode

    with tempfile.TemporaryDirectory() as tmp:
        src_root = Path(tmp) / "src"
        rel = Path("splitpoint/_proto/grpc_service.proto")
        (src_root / rel.parent).mkdir(parents=True)
        shutil.copy(PROTO_SOURCE, src_root / rel)
        gen_root = Path(tmp) / "gen"
        gen_root.mkdir()
        include = Path(protoc.__file__).parent / "_proto"
        args = [
            "protoc",
            f"-I{src_root}",
            f"-I{include}",
            f"--python_out={gen_root}",
            f"--pyi_out={gen_root}",
            f"--grpc_python_out={gen_root}",
            str(rel),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO_SOURCE}")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            shutil.copy(gen_root / rel.parent / name, out_dir / name)
    messages = out_dir / "grpc_service_pb2.py"
    text = messages.read_text()
    if text.count(_DEFAULT_POOL) != 1:
        raise RuntimeError(f"{messages}: protoc's output changed; cannot move it to a private descriptor pool")
    messages.write_text(text.replace(_DEFAULT_POOL, _PRIVATE_POOL))


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE_DIR)
