"""Python stubs for the kasuhara.v1 API, generated from the repository's .proto files.

The stubs are not committed: on import this module runs grpcio-tools' protoc over
../../proto into a cache directory (regenerated whenever a .proto file is newer than the
stubs), so the clients always match the API in this checkout. Import the generated modules
from here:

    from kasuhara_stubs import screening_pb2, screening_pb2_grpc, alerts_pb2, ...
"""

import importlib
import os
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent.parent.parent / "proto"
PROTOS = ["kasuhara/v1/types.proto", "kasuhara/v1/screening.proto", "kasuhara/v1/alerts.proto"]
CACHE = Path(os.environ.get("KASUHARA_STUBS_DIR", Path(__file__).resolve().parent / ".stubs"))


def _generate() -> None:
    newest_proto = max((PROTO_ROOT / p).stat().st_mtime for p in PROTOS)
    marker = CACHE / "kasuhara" / "v1" / "alerts_pb2_grpc.py"
    if marker.exists() and marker.stat().st_mtime >= newest_proto:
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    # grpcio-tools ships the well-known types (google/protobuf/timestamp.proto).
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={CACHE}",
        f"--grpc_python_out={CACHE}",
        *[str(PROTO_ROOT / p) for p in PROTOS],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_ROOT}")


_generate()
sys.path.insert(0, str(CACHE))
types_pb2 = importlib.import_module("kasuhara.v1.types_pb2")
screening_pb2 = importlib.import_module("kasuhara.v1.screening_pb2")
screening_pb2_grpc = importlib.import_module("kasuhara.v1.screening_pb2_grpc")
alerts_pb2 = importlib.import_module("kasuhara.v1.alerts_pb2")
alerts_pb2_grpc = importlib.import_module("kasuhara.v1.alerts_pb2_grpc")
