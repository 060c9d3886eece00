"""Every unary gRPC method of every service, called with generated requests.

The requests are built from the proto descriptors, so methods added later are
covered without editing this file. Strings lean towards what hurts: empty,
huge, path-like (`../../etc`), NUL bytes. A service may refuse (INVALID_ARGUMENT,
NOT_FOUND, FAILED_PRECONDITION, ALREADY_EXISTS, OUT_OF_RANGE, PERMISSION_DENIED)
or succeed; it must never fail internally (INTERNAL/UNKNOWN, i.e. a traceback),
and a canary directory beside the state dirs must stay untouched.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from berth.api.v1 import api_pb2
from berth.api.v1 import network_pb2 as api_network_pb2
from berth.image.v1 import image_pb2
from berth.runtime.v1 import network_pb2, runtime_pb2, storage_pb2
from tests import images
from tests.harness import EXTERNAL, Services

pytestmark = pytest.mark.skipif(EXTERNAL, reason="starts its own services")

# Methods that would reach out to other hosts (registries) with generated names.
NETWORK_METHODS = {"Pull", "Push", "Login", "Search"}
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE,
           grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.DEADLINE_EXCEEDED}

NASTY = st.sampled_from(["", "../../etc", "../../../../canary/x", "/etc/passwd", "a" * 5000, "\x00", "busybox",
                         "sha256:" + "0" * 64, "-1", "%s%n", "../" * 40, "..", "."])
TEXT = st.one_of(NASTY, st.text(max_size=40))
INT = st.one_of(st.sampled_from([0, -1, 1, 2**31 - 1, -(2**31)]), st.integers(-(2**31), 2**31 - 1))


def message_strategy(descriptor, depth: int = 0):  # noqa: ANN001
    fields = {}
    for f in descriptor.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 2 or f.message_type.GetOptions().map_entry:
                continue
            value = message_strategy(f.message_type, depth + 1)
        elif f.type == FieldDescriptor.TYPE_STRING:
            value = TEXT
        elif f.type == FieldDescriptor.TYPE_BYTES:
            value = st.binary(max_size=64)
        elif f.type == FieldDescriptor.TYPE_BOOL:
            value = st.booleans()
        elif f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            value = st.floats(allow_nan=False, allow_infinity=False, width=32)
        elif f.type == FieldDescriptor.TYPE_ENUM:
            value = st.sampled_from([v.number for v in f.enum_type.values])
        else:
            value = INT
        if f.is_repeated:
            value = st.lists(value, max_size=3)
        fields[f.name] = st.one_of(st.none(), value)

    def build(values: dict) -> object:
        msg = descriptor._concrete_class()
        for name, v in values.items():
            if v is None:
                continue
            field = getattr(msg, name)
            try:
                if isinstance(v, list):
                    if descriptor.fields_by_name[name].type == FieldDescriptor.TYPE_MESSAGE:
                        for item in v:
                            field.add().CopyFrom(item)
                    else:
                        field.extend(v)
                elif descriptor.fields_by_name[name].type == FieldDescriptor.TYPE_MESSAGE:
                    field.CopyFrom(v)
                else:
                    setattr(msg, name, v)
            except (ValueError, TypeError):
                pass  # e.g. a value out of an int32's range: leave it unset
        return msg

    return st.fixed_dictionaries(fields).map(build)


def unary_methods() -> list[tuple[str, str, object]]:
    out = []
    for module in (api_pb2, image_pb2, runtime_pb2, network_pb2, storage_pb2, api_network_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            socket = {"berth.api.v1": "api", "berth.image.v1": "image", "berth.runtime.v1": "runtime"}[
                service.file.package]
            for m in service.methods:
                if m.client_streaming or m.name in NETWORK_METHODS:
                    continue
                out.append((socket, f"/{service.full_name}/{m.name}", m))
    return out


@pytest.fixture(scope="module")
def fuzz_services():
    base = Path(tempfile.mkdtemp(prefix="berth-fuzz-"))
    canary = base / "canary"
    canary.mkdir()
    (canary / "x").write_text("do not touch")
    svc = Services(base)
    svc.start()
    tar = base / "busybox.tar"
    tar.write_bytes(images.busybox_rootfs_bytes())
    svc.berth("import", str(tar), "busybox", check=True)  # so generated creates get further
    try:
        yield svc, canary
    finally:
        svc.berth("rm", "-f", *svc.berth("ps", "-aq").stdout.split())
        svc.close()


def _snapshot(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        h.update(str(p).encode() + (p.read_bytes() if p.is_file() else b"/"))
    return h.hexdigest()


@pytest.mark.parametrize(("socket", "path", "method"), unary_methods(), ids=lambda v: getattr(v, "name", None))
def test_generated_requests_never_crash_a_service(fuzz_services, socket, path, method):
    svc, canary = fuzz_services
    before = _snapshot(canary)
    channel = grpc.insecure_channel(f"unix://{svc.socket(socket)}")
    request_class = method.input_type._concrete_class
    response_class = method.output_type._concrete_class
    if method.server_streaming:
        call = channel.unary_stream(path, request_serializer=request_class.SerializeToString,
                                    response_deserializer=response_class.FromString)
    else:
        call = channel.unary_unary(path, request_serializer=request_class.SerializeToString,
                                   response_deserializer=response_class.FromString)

    @settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "25")), deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(message_strategy(method.input_type))
    def check(request) -> None:  # noqa: ANN001
        try:
            result = call(request, timeout=5)
            if method.server_streaming:
                for _ in zip(range(50), result, strict=False):
                    pass
        except grpc.RpcError as err:
            assert err.code() in ALLOWED, f"{path}({request!r}) -> {err.code()}: {err.details()}"

    try:
        check()
    finally:
        channel.close()
    assert _snapshot(canary) == before
