"""TFRecord files of `tf.train.Example` protos, without TensorFlow.

NSynth ships its TFRecord release in this format. TensorFlow (and so `ray.data.read_tfrecords`,
which imports it) is a 600 MB dependency we avoid: the `Example` message is declared here from
its public `.proto` definition and parsed by protobuf's own (upb) parser.

Record framing (TFRecord): uint64 length | uint32 masked crc32c(length) | data | uint32 masked crc32c(data).
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Iterator

import crc32c
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from instrumentgen.errors import UserError

_MASK_DELTA = 0xA282EAD8


class TFRecordError(UserError):
    """A TFRecord file is truncated or fails its checksum."""


def _example_class():
    fdp = descriptor_pb2.FileDescriptorProto(name="instrumentgen_example.proto", package="tensorflow", syntax="proto3")

    def message(name: str, fields: list[tuple[str, int, int, int, str | None]]) -> None:
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
        return m

    F = descriptor_pb2.FieldDescriptorProto
    message("BytesList", [("value", 1, F.TYPE_BYTES, F.LABEL_REPEATED, None)])
    message("FloatList", [("value", 1, F.TYPE_FLOAT, F.LABEL_REPEATED, None)])
    message("Int64List", [("value", 1, F.TYPE_INT64, F.LABEL_REPEATED, None)])
    feature = message(
        "Feature",
        [
            ("bytes_list", 1, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".tensorflow.BytesList"),
            ("float_list", 2, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".tensorflow.FloatList"),
            ("int64_list", 3, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".tensorflow.Int64List"),
        ],
    )
    feature.oneof_decl.add(name="kind")
    for f in feature.field:
        f.oneof_index = 0
    features = message(
        "Features", [("feature", 1, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".tensorflow.Features.FeatureEntry")]
    )
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(
        name="value", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, type_name=".tensorflow.Feature"
    )
    message("Example", [("features", 1, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".tensorflow.Features")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


Example = _example_class()


def _masked_crc(data: bytes) -> int:
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def iter_records(f: BinaryIO, verify: bool = True) -> Iterator[bytes]:
    """Yield the raw payload of each record of an open TFRecord file."""
    while True:
        header = f.read(12)
        if not header:
            return
        if len(header) < 12:
            raise TFRecordError("truncated record header")
        (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
        if verify and _masked_crc(header[:8]) != length_crc:
            raise TFRecordError("length checksum mismatch")
        data, data_crc = f.read(length), f.read(4)
        if len(data) < length or len(data_crc) < 4:
            raise TFRecordError("truncated record")
        if verify and _masked_crc(data) != struct.unpack("<I", data_crc)[0]:
            raise TFRecordError("data checksum mismatch")
        yield data


def write_record(f: BinaryIO, data: bytes) -> None:
    """Append one TFRecord (length, its CRC, data, its CRC) to `f`."""
    length = struct.pack("<Q", len(data))
    f.write(length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data)))


def decode_example(data: bytes) -> dict:
    """Example bytes -> {name: list of bytes | np.float32 array | np.int64 array}."""
    example = Example.FromString(data)
    out = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values = getattr(feature, kind).value if kind else []
        if kind == "float_list":
            out[name] = np.asarray(values, dtype=np.float32)
        elif kind == "int64_list":
            out[name] = np.asarray(values, dtype=np.int64)
        else:
            out[name] = list(values)
    return out


def encode_example(features: dict) -> bytes:
    """{name: str | bytes | int | float | sequence | np.ndarray} -> Example bytes."""
    example = Example()
    for name, value in features.items():
        feature = example.features.feature[name]
        values = value if isinstance(value, (list, tuple, np.ndarray)) else [value]
        arr = np.asarray(values)
        if arr.dtype.kind in "SUO":
            feature.bytes_list.value.extend(v.encode() if isinstance(v, str) else bytes(v) for v in values)
        elif arr.dtype.kind == "f":
            feature.float_list.value.extend(arr.astype(np.float32).tolist())
        else:
            feature.int64_list.value.extend(arr.astype(np.int64).tolist())
    return example.SerializeToString()
