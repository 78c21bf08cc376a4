import io

import numpy as np
import pytest

from instrumentgen.data import tfrecord


def test_examples_round_trip_through_framed_records():
    buf = io.BytesIO()
    features = [
        {
            "pitch": 60 + i,
            "note_str": f"n{i}",
            "audio": np.linspace(-1, 1, 7, dtype=np.float32) * i,
            "qualities": [0, 1, 0],
        }
        for i in range(3)
    ]
    for f in features:
        tfrecord.write_record(buf, tfrecord.encode_example(f))
    buf.seek(0)
    decoded = [tfrecord.decode_example(r) for r in tfrecord.iter_records(buf)]
    assert [d["pitch"].tolist() for d in decoded] == [[60], [61], [62]]
    assert [d["note_str"] for d in decoded] == [[b"n0"], [b"n1"], [b"n2"]]
    np.testing.assert_array_equal(decoded[2]["audio"], features[2]["audio"])
    assert decoded[0]["qualities"].tolist() == [0, 1, 0]


def test_known_crc_and_corruption_is_detected():
    # TFRecord's masked CRC-32C of b"" and the standard CRC-32C check value "123456789" -> 0xE3069283.
    import crc32c

    assert crc32c.crc32c(b"123456789") == 0xE3069283
    buf = io.BytesIO()
    tfrecord.write_record(buf, b"payload")
    data = bytearray(buf.getvalue())
    data[14] ^= 0xFF
    with pytest.raises(tfrecord.TFRecordError, match="data checksum mismatch"):
        list(tfrecord.iter_records(io.BytesIO(bytes(data))))
    with pytest.raises(tfrecord.TFRecordError, match="truncated"):
        list(tfrecord.iter_records(io.BytesIO(buf.getvalue()[:-3])))
