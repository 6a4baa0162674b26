"""PutGroup reads a group through the wire view (StepRecord's packed numbers as bytes): whatever
bytes arrive, it must store and refuse exactly what the real message's checks store and refuse,
with the same summary and the same field named."""

from __future__ import annotations

import random

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from asyncwebrl.buffer.config import BufferConfig
from asyncwebrl.buffer.errors import InvalidArgument
from asyncwebrl.buffer.validate import WireGroup, WireRequest, check_group, read_request
from asyncwebrl.v1 import buffer_pb2, env_pb2
from tests.buffer.conftest import make_group
from tests.buffer.test_buffer import _mutations

LIMITS = BufferConfig().limits
REF = env_pb2.ScreenshotRef(sha256="ab" * 32, width=8, height=8, mime="image/png", size_bytes=10)


def outcome(raw: bytes, version: int = 0):
    """What the wire path decides for these bytes: a summary, or the field an error names."""
    try:
        request = read_request(raw)
        return check_group(request.group, LIMITS, version)
    except InvalidArgument as exc:
        return ("refused", exc.field)


def real_outcome(raw: bytes, version: int = 0):
    """What the real message's checks decide, for bytes the real parser reads."""
    try:
        return check_group(buffer_pb2.PutGroupRequest.FromString(raw).group, LIMITS, version)
    except InvalidArgument as exc:
        return ("refused", exc.field)


def random_group(rng: random.Random) -> buffer_pb2.Group:
    group = make_group("job", [REF], rewards=tuple(rng.choice((0.0, 1.0)) for _ in range(rng.randint(1, 4))),
                       steps=rng.randint(1, 4), prompt_tokens=rng.randint(1, 300), output_tokens=rng.randint(1, 40))
    for episode in group.episodes:
        for step in episode.steps:
            step.prompt_ids[:] = [rng.choice((0, 127, 128, 16383, 16384, 151_000, 2**32 - 1))
                                  for _ in step.prompt_ids]
            step.versions[:] = [rng.choice((0, 1, 127, 128, 300)) for _ in step.versions]
            step.logprobs[:] = [-rng.random() * 5 for _ in step.logprobs]
    return group


def unpacked_classes():
    """PutGroupRequest whose StepRecord numbers are written unpacked (one record per value),
    which protobuf must read as well as packed."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file(env_pb2.DESCRIPTOR))
    proto = _file(buffer_pb2.DESCRIPTOR)
    (step,) = [m for m in proto.message_type if m.name == "StepRecord"]
    for field in step.field:
        if field.label == field.LABEL_REPEATED and field.type != field.TYPE_MESSAGE:
            field.options.packed = False
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("asyncwebrl.v1.PutGroupRequest"))


def _file(file) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    return proto


def test_what_our_clients_send_is_read_by_the_wire_view_with_the_real_summary():
    rng = random.Random(7)
    for version in (0, 300):
        for _ in range(40):
            raw = buffer_pb2.PutGroupRequest(group=random_group(rng)).SerializeToString()
            assert isinstance(read_request(raw), WireRequest)
            assert outcome(raw, version) == real_outcome(raw, version)


@pytest.mark.parametrize(("name", "mutate", "field"), _mutations(), ids=[m[0] for m in _mutations()])
def test_a_bad_group_is_refused_naming_the_same_field(name, mutate, field):
    group = make_group("job", [REF])
    mutate(group)
    raw = buffer_pb2.PutGroupRequest(group=group).SerializeToString()
    got = outcome(raw)
    assert got == real_outcome(raw)
    if name != "unknown blob":  # a store-level refusal: the group itself is well formed
        assert got[0] == "refused" and field in got[1], got


def test_every_other_encoding_protobuf_reads_gets_the_same_decision():
    rng = random.Random(11)
    group = random_group(rng)
    canonical = buffer_pb2.PutGroupRequest(group=group).SerializeToString()
    expected = real_outcome(canonical, 300)
    assert not isinstance(expected, tuple), expected

    # Split: each packed field of one step in two records.
    wire = WireRequest.FromString(canonical)
    step = wire.group.episodes[0].steps[0]
    for name in ("prompt_ids", "output_ids", "logprobs", "versions"):
        data = getattr(step, name)[0]
        cut = 4 if name == "logprobs" else next(i + 1 for i, b in enumerate(data) if b < 0x80)
        getattr(step, name)[:] = [data[:cut], data[cut:]]
    split = wire.SerializeToString()
    # Unpacked: one record per value.
    unpacked = unpacked_classes().FromString(canonical).SerializeToString()
    # Unknown: a field buffer.proto does not have, which protobuf skips.
    unknown = buffer_pb2.PutGroupRequest.FromString(canonical).group.SerializeToString() + b"\xa0\x1f\x05"
    unknown = b"\x0a" + _varint(len(unknown)) + unknown
    for raw in (split, unpacked, unknown):
        assert raw != canonical and buffer_pb2.PutGroupRequest.FromString(raw).group.episodes
        assert real_outcome(raw, 300) == expected
        assert outcome(raw, 300) == expected


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _with_step_bytes(field: str, data: bytes) -> bytes:
    """A canonical request whose first step's ``field`` carries ``data`` as its packed record."""
    wire = WireRequest.FromString(buffer_pb2.PutGroupRequest(group=make_group("job", [REF])).SerializeToString())
    getattr(wire.group.episodes[0].steps[0], field)[:] = [data]
    return wire.SerializeToString()


def test_long_varints_are_read_as_protobuf_reads_them():
    # A token id of 7 bytes: legal (protobuf keeps the low 32 bits), so the group is stored with 40 ids.
    group = make_group("job", [REF])
    ids = b"".join(_varint(i) for i in group.episodes[0].steps[0].prompt_ids[1:])
    raw = _with_step_bytes("prompt_ids", b"\x81\x80\x80\x80\x80\x80\x00" + ids)
    assert real_outcome(raw) == outcome(raw)
    assert outcome(raw).tokens == real_outcome(buffer_pb2.PutGroupRequest(group=group).SerializeToString()).tokens
    # 11 bytes: protobuf refuses the message; so does the buffer, and nothing is stored.
    raw = _with_step_bytes("prompt_ids", b"\x81" * 10 + b"\x00" + ids)
    with pytest.raises(Exception, match="Error parsing|DecodeError|truncated|parse"):
        buffer_pb2.PutGroupRequest.FromString(raw)
    assert outcome(raw) == ("refused", "group")
    # A record that stops inside a varint: also not a message.
    raw = _with_step_bytes("output_ids", b"\x64\x65\x66\x67\xe8")
    assert outcome(raw) == ("refused", "group")


def test_a_negative_or_future_version_in_wire_bytes_is_named():
    raw = _with_step_bytes("versions", _varint(0) * 4 + b"\xff" * 9 + b"\x01")  # -1 as int64
    assert real_outcome(raw) == outcome(raw) == ("refused", "group.episodes[0].steps[0].versions")
    raw = _with_step_bytes("versions", _varint(0) * 4 + _varint(2**40))
    assert real_outcome(raw) == outcome(raw) == ("refused", "group.episodes[0].steps[0].versions")


def test_the_wire_view_is_buffer_protos_group_with_packed_numbers_as_bytes():
    real, wire = buffer_pb2.StepRecord.DESCRIPTOR, WireGroup.DESCRIPTOR.fields_by_name["episodes"].message_type \
        .fields_by_name["steps"].message_type
    assert [(f.name, f.number) for f in real.fields] == [(f.name, f.number) for f in wire.fields]
    changed = {f.name for f in wire.fields if f.type != real.fields_by_name[f.name].type}
    assert changed == {"prompt_ids", "output_ids", "logprobs", "versions"}
    assert all(wire.fields_by_name[n].type == wire.fields_by_name[n].TYPE_BYTES for n in changed)
