"""engine/gguf_header.py: the fast header reader agrees with `gguf.GGUFReader` and is strict.

Conventions: agreement is checked on tiny models from tests/tinygguf.py and on the reference model
(gemma3 270M, marked `reference`; GGUFReader takes seconds on it). Corrupt files are built byte by
byte with the small `_gguf` writer below, so each test breaks exactly one thing; they are parsed
from bytes (`parse_gguf_header`) or from a real file in tmp_path (`read_gguf_header`). No timing
is asserted.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from engine.gguf import read_gguf_info
from engine.gguf_header import GGUFHeader, parse_gguf_header, read_gguf_header

# -- agreement with GGUFReader ----------------------------------------------------------------


def _assert_same_as_gguf_reader(path: Path, header: GGUFHeader) -> None:
    reader = GGUFReader(path, "r")
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert header.version == reader.fields["GGUF.version"].contents()
    assert list(header.metadata) == list(fields)
    for key, fld in fields.items():
        expected = fld.contents()
        got = header.metadata[key]
        assert got == expected, key
        assert type(got) is type(expected), key
        if isinstance(expected, list):
            assert [type(v) for v in got] == [type(v) for v in expected], key
        assert list(header.value_types[key]) == list(fld.types), key
    assert header.data_offset == reader.data_offset
    assert header.alignment == reader.alignment
    assert len(header.tensors) == len(reader.tensors)
    for mine, theirs in zip(header.tensors, reader.tensors):
        assert mine.name == theirs.name
        assert mine.type == theirs.tensor_type
        assert mine.shape == tuple(int(d) for d in theirs.shape)
        assert mine.n_dims == len(theirs.shape)
        assert mine.n_elements == theirs.n_elements
        assert mine.n_bytes == theirs.n_bytes
        assert header.data_offset + mine.offset == theirs.data_offset


@pytest.mark.parametrize(
    "knobs", [{}, {"f16": True}, {"pooling": 1, "chat_template": None, "n_layer": 1}]
)
def test_tiny_model_header_matches_gguf_reader(tiny_gguf_factory, knobs: dict[str, Any]) -> None:
    path = tiny_gguf_factory(**knobs)
    _assert_same_as_gguf_reader(path, read_gguf_header(path))


def test_nested_arrays_bools_and_unicode_match_gguf_reader(tmp_path: Path) -> None:
    path = tmp_path / "odd.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_array("x.nested", [[1, 2], [3]])
    writer.add_array("x.bools", [True, False])
    writer.add_array("x.floats", [0.1, -2.5])
    writer.add_array("x.strings", ["", "héllo", "▁the", "日本"])
    writer.add_string("x.unicode", "é▁😀")
    writer.add_float64("x.f64", 1.0 / 3.0)
    writer.add_int64("x.i64", -(2**40))
    writer.add_bool("x.bool", True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    header = read_gguf_header(path)
    assert header.metadata["x.nested"] == [1, 2, 3]
    _assert_same_as_gguf_reader(path, header)


def test_read_gguf_info_keeps_its_shape(tiny_gguf: Path) -> None:
    info = read_gguf_info(tiny_gguf)
    header = read_gguf_header(tiny_gguf)
    assert info.metadata == header.metadata
    assert isinstance(info.metadata["tokenizer.ggml.tokens"], list)
    assert info.tensors == [(t.name, t.type.name, t.shape) for t in header.tensors]
    assert info.file_size == tiny_gguf.stat().st_size


@pytest.mark.reference
def test_reference_model_header_matches_gguf_reader(reference_gguf: Path) -> None:
    header = read_gguf_header(reference_gguf)
    assert len(header.metadata["tokenizer.ggml.tokens"]) == 262144
    _assert_same_as_gguf_reader(reference_gguf, header)


# -- strictness ---------------------------------------------------------------------------------


def _str(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return _str(key) + struct.pack("<I", vtype) + payload


ARCH = _kv("general.architecture", GGUFValueType.STRING, _str("llama"))


def _tensor(name: str, dims: tuple[int, ...], ttype: int = 0, offset: int = 0) -> bytes:
    return (
        _str(name)
        + struct.pack("<I", len(dims))
        + struct.pack(f"<{len(dims)}Q", *dims)
        + struct.pack("<I", ttype)
        + struct.pack("<Q", offset)
    )


def _gguf(
    kvs: list[bytes] = [ARCH],  # noqa: B006 (never mutated)
    tensors: list[bytes] = [],  # noqa: B006
    data: bytes = b"",
    *,
    version: int = 3,
    kv_count: int | None = None,
    tensor_count: int | None = None,
) -> bytes:
    head = b"GGUF" + struct.pack(
        "<IQQ",
        version,
        len(tensors) if tensor_count is None else tensor_count,
        len(kvs) if kv_count is None else kv_count,
    )
    body = head + b"".join(kvs) + b"".join(tensors)
    if tensors:
        body += b"\0" * (-len(body) % 32)
    return body + data


def test_hand_built_file_parses(tmp_path: Path) -> None:
    blob = _gguf(tensors=[_tensor("w", (4, 2))], data=b"\0" * 32)
    path = tmp_path / "ok.gguf"
    path.write_bytes(blob)
    header = read_gguf_header(path)
    assert header.metadata == {"general.architecture": "llama"}
    assert [(t.name, t.type_name, t.shape, t.n_bytes) for t in header.tensors] == [
        ("w", "F32", (4, 2), 32)
    ]
    assert header.data_offset == len(blob) - 32
    _assert_same_as_gguf_reader(path, header)


def test_every_truncation_of_a_tiny_model_raises_value_error(tiny_gguf: Path) -> None:
    blob = tiny_gguf.read_bytes()
    header = parse_gguf_header(blob)
    cuts = set(range(0, 64)) | set(range(64, header.data_offset + 1, 7))
    cuts |= {header.data_offset - 1, len(blob) - 1}
    for cut in sorted(cuts):
        with pytest.raises(ValueError):
            parse_gguf_header(blob[:cut])


def test_truncated_file_raises_value_error_naming_the_file(tiny_gguf: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny_gguf.read_bytes()[:5000])
    with pytest.raises(ValueError, match="cut.gguf.*truncated"):
        read_gguf_header(path)
    with pytest.raises(ValueError):
        read_gguf_info(path)


def test_missing_tensor_data_is_truncation() -> None:
    blob = _gguf(tensors=[_tensor("w", (4, 2))], data=b"\0" * 31)
    with pytest.raises(ValueError, match="truncated: tensor 'w'"):
        parse_gguf_header(blob)


@pytest.mark.parametrize("content", [b"", b"GGUF", b"not a gguf file at all", b"GGML" + bytes(40)])
def test_non_gguf_files_raise_value_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bogus.gguf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_gguf_header(path)


@pytest.mark.parametrize("version", [0, 1, 4, 3 << 16])
def test_unsupported_versions_are_rejected(version: int) -> None:
    with pytest.raises(ValueError, match="version|big-endian"):
        parse_gguf_header(_gguf(version=version))


def test_version_2_is_read() -> None:
    assert parse_gguf_header(_gguf(version=2)).version == 2


def test_huge_kv_count_is_rejected_before_allocating() -> None:
    with pytest.raises(ValueError, match="KV count"):
        parse_gguf_header(_gguf(kv_count=2**63))


def test_huge_tensor_count_is_rejected_before_allocating() -> None:
    with pytest.raises(ValueError, match="tensor count"):
        parse_gguf_header(_gguf(tensor_count=2**62))


@pytest.mark.parametrize("itype", [GGUFValueType.STRING, GGUFValueType.UINT8, GGUFValueType.ARRAY])
def test_huge_array_length_is_rejected_before_allocating(itype: int) -> None:
    payload = struct.pack("<IQ", itype, 2**61)
    with pytest.raises(ValueError, match="length of array 'x'"):
        parse_gguf_header(_gguf([ARCH, _kv("x", GGUFValueType.ARRAY, payload)]))


def test_huge_string_length_is_truncation() -> None:
    bad = _kv("x", GGUFValueType.STRING, struct.pack("<Q", 2**63) + b"abc")
    with pytest.raises(ValueError, match="truncated"):
        parse_gguf_header(_gguf([ARCH, bad]))


def test_string_in_array_running_past_the_end_is_truncation() -> None:
    payload = struct.pack("<IQ", GGUFValueType.STRING, 2) + _str("ok") + struct.pack("<Q", 2**63)
    with pytest.raises(ValueError, match="truncated.*array 'x'"):
        parse_gguf_header(_gguf([ARCH, _kv("x", GGUFValueType.ARRAY, payload)]))


def test_unknown_value_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown value type 99"):
        parse_gguf_header(_gguf([ARCH, _kv("x", 99, b"\0" * 8)]))


def test_duplicate_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate metadata key"):
        parse_gguf_header(_gguf([ARCH, ARCH]))


def test_key_that_is_not_utf8_is_rejected() -> None:
    with pytest.raises(ValueError, match="not UTF-8"):
        parse_gguf_header(_gguf([ARCH, _kv(b"\xff\xfe", GGUFValueType.UINT8, b"\1")]))


def test_string_array_item_that_is_not_utf8_is_rejected() -> None:
    payload = struct.pack("<IQ", GGUFValueType.STRING, 1) + _str(b"\xc3")
    with pytest.raises(ValueError, match="not UTF-8"):
        parse_gguf_header(_gguf([ARCH, _kv("x", GGUFValueType.ARRAY, payload)]))


def test_deeply_nested_arrays_are_rejected() -> None:
    payload = struct.pack("<IQ", GGUFValueType.ARRAY, 1) * 20 + struct.pack("<IQ", 0, 0)
    with pytest.raises(ValueError, match="nested"):
        parse_gguf_header(_gguf([ARCH, _kv("x", GGUFValueType.ARRAY, payload)]))


def test_unknown_tensor_type_is_rejected() -> None:
    blob = _gguf(tensors=[_tensor("w", (4,), ttype=1000)], data=b"\0" * 64)
    with pytest.raises(ValueError, match="unknown type 1000"):
        parse_gguf_header(blob)


def test_too_many_tensor_dimensions_are_rejected() -> None:
    blob = _gguf(tensors=[_tensor("w", (1, 1, 1, 1, 1))], data=b"\0" * 64)
    with pytest.raises(ValueError, match="5 dimensions"):
        parse_gguf_header(blob)


def test_duplicate_tensor_name_is_rejected() -> None:
    blob = _gguf(tensors=[_tensor("w", (4,)), _tensor("w", (4,), offset=32)], data=b"\0" * 64)
    with pytest.raises(ValueError, match="duplicate tensor name"):
        parse_gguf_header(blob)


def test_misaligned_tensor_offset_is_rejected() -> None:
    blob = _gguf(tensors=[_tensor("w", (4,), offset=4)], data=b"\0" * 64)
    with pytest.raises(ValueError, match="aligned"):
        parse_gguf_header(blob)


def test_alignment_that_is_not_a_power_of_two_is_rejected() -> None:
    align = _kv("general.alignment", GGUFValueType.UINT32, struct.pack("<I", 24))
    with pytest.raises(ValueError, match="power of two"):
        parse_gguf_header(_gguf([ARCH, align]))
