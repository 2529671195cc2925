"""Compile tests/e2e/cri/api.proto with grpcio-tools into a directory and import the result.

The generated modules get a name unique to this package (`gpuhook_cri_api_pb2`, `..._pb2_grpc`) so
they cannot clash with any other `api_pb2` on sys.path."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path
from types import ModuleType

PROTO = Path(__file__).with_name("api.proto")
MODULE = "gpuhook_cri_api"


class ProtoCompileError(RuntimeError):
    pass


def compile_proto(outdir: Path) -> tuple[ModuleType, ModuleType]:
    """Generate the message and service modules into `outdir`, import and return them."""
    from grpc_tools import protoc

    outdir.mkdir(parents=True, exist_ok=True)
    src = outdir / f"{MODULE}.proto"
    shutil.copyfile(PROTO, src)
    include = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{outdir}",
            f"-I{include}",
            f"--python_out={outdir}",
            f"--grpc_python_out={outdir}",
            str(src),
        ]
    )
    if rc != 0:
        raise ProtoCompileError(f"protoc failed with {rc} on {src}")
    # The generated *_pb2_grpc module imports its *_pb2 sibling by bare name.
    if str(outdir) not in sys.path:
        sys.path.insert(0, str(outdir))
    importlib.invalidate_caches()
    pb2 = importlib.import_module(f"{MODULE}_pb2")
    pb2_grpc = importlib.import_module(f"{MODULE}_pb2_grpc")
    return pb2, pb2_grpc
