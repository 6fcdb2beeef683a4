"""A small, strict reader of a GGUF file's header: metadata KVs and the tensor table.

Why not `gguf.GGUFReader`: it builds a numpy view for every element of every array, which takes
seconds on a 262k-token vocabulary, and the server reads headers on `/api/show` and `/api/tags`.
This reader walks the header once with `struct.unpack_from` on an `mmap`, reads numeric arrays with
one `numpy.frombuffer` each and decodes string arrays in one pass. Tensor data is never touched.

Format: GGUF v2/v3, little-endian (what llama.cpp writes and loads on every host we ship for).
Every read is bounds-checked: a truncated or corrupt file raises ValueError saying what is wrong
and where, never reads past the end, and a count too large for the bytes left is rejected before
anything is allocated. Tables (value types, quantisation names and block sizes) come from the
`gguf` package so they stay in step with llama.cpp.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS: llama.cpp refuses tensors with more
MAX_ARRAY_NESTING = 8  # arrays of arrays exist in the spec; deeper nesting is corruption

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor_count, kv_count

# Scalar value types: (struct format, numpy dtype). BOOL is one byte, 0 or 1.
_SCALARS: dict[GGUFValueType, tuple[struct.Struct, np.dtype[Any]]] = {
    GGUFValueType.UINT8: (struct.Struct("<B"), np.dtype("<u1")),
    GGUFValueType.INT8: (struct.Struct("<b"), np.dtype("<i1")),
    GGUFValueType.UINT16: (struct.Struct("<H"), np.dtype("<u2")),
    GGUFValueType.INT16: (struct.Struct("<h"), np.dtype("<i2")),
    GGUFValueType.UINT32: (struct.Struct("<I"), np.dtype("<u4")),
    GGUFValueType.INT32: (struct.Struct("<i"), np.dtype("<i4")),
    GGUFValueType.FLOAT32: (struct.Struct("<f"), np.dtype("<f4")),
    GGUFValueType.UINT64: (struct.Struct("<Q"), np.dtype("<u8")),
    GGUFValueType.INT64: (struct.Struct("<q"), np.dtype("<i8")),
    GGUFValueType.FLOAT64: (struct.Struct("<d"), np.dtype("<f8")),
    GGUFValueType.BOOL: (struct.Struct("<?"), np.dtype("?")),
}
# The fewest bytes one value of a type can take: bounds array counts before allocating.
_MIN_ITEM_SIZE: dict[GGUFValueType, int] = {t: s.size for t, (s, _) in _SCALARS.items()}
_MIN_ITEM_SIZE[GGUFValueType.STRING] = 8  # u64 length, empty string
_MIN_ITEM_SIZE[GGUFValueType.ARRAY] = 12  # u32 item type + u64 count, empty array
_MIN_KV_SIZE = 8 + 4 + 1  # empty key, type, one-byte value
_MIN_TENSOR_INFO_SIZE = 8 + 4 + 4 + 8  # empty name, n_dims 0, type, offset


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One entry of the tensor table; `offset` is relative to the start of the data section."""

    name: str
    shape: tuple[int, ...]  # ggml order (ne[0] first), as `GGUFReader.tensors[i].shape`
    type: GGMLQuantizationType
    offset: int
    n_elements: int
    n_bytes: int

    @property
    def n_dims(self) -> int:
        return len(self.shape)

    @property
    def type_name(self) -> str:
        return self.type.name


@dataclass(frozen=True)
class GGUFHeader:
    """Everything before the tensor data of a GGUF file.

    `metadata` maps each key to a Python value: int/float/bool/str for scalars, a list for arrays
    (arrays of arrays are flattened, as `GGUFReader.fields[k].contents()` does). `value_types`
    keeps each key's declared type: `(UINT32,)`, `(ARRAY, STRING)`, `(ARRAY, ARRAY, INT32)`...
    """

    version: int
    metadata: dict[str, Any]
    value_types: dict[str, tuple[GGUFValueType, ...]]
    tensors: list[GGUFTensorInfo]
    alignment: int
    data_offset: int
    file_size: int


def read_gguf_header(path: Path | str) -> GGUFHeader:
    """Parse the header of the GGUF file at `path`; ValueError if it is not a valid GGUF."""
    path = Path(path)
    with path.open("rb") as fh:
        size = fh.seek(0, 2)
        if size < _HEADER.size:
            raise ValueError(f"{path} is not a GGUF file: only {size} bytes")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            try:
                return parse_gguf_header(mm)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from exc


def parse_gguf_header(buffer: bytes | mmap.mmap) -> GGUFHeader:
    """Parse a GGUF header from the bytes of a whole file (every tensor must lie inside them)."""
    return _Parser(buffer).parse()


class _Parser:
    """Cursor over the buffer; every read checks that its bytes are there first."""

    def __init__(self, buffer: bytes | mmap.mmap) -> None:
        self.buf = buffer
        self.size = len(buffer)
        self.pos = 0

    def parse(self) -> GGUFHeader:
        self._need(_HEADER.size, "the file header")
        magic, version, tensor_count, kv_count = _HEADER.unpack_from(self.buf, 0)
        if magic != GGUF_MAGIC:
            raise ValueError(f"not a GGUF file (magic {magic!r})")
        if version not in SUPPORTED_VERSIONS:
            if version & 0xFFFF == 0 and (version >> 16) in SUPPORTED_VERSIONS + (1,):
                raise ValueError("big-endian GGUF files are not supported")
            raise ValueError(f"unsupported GGUF version {version} (supported: 2, 3)")
        self.pos = _HEADER.size
        self._check_count(kv_count, _MIN_KV_SIZE, "metadata KV count")
        metadata: dict[str, Any] = {}
        value_types: dict[str, tuple[GGUFValueType, ...]] = {}
        for _ in range(kv_count):
            key_at = self.pos
            key = self._string("a metadata key")
            if key in metadata:
                raise ValueError(f"duplicate metadata key {key!r} at offset {key_at}")
            vtype = self._value_type(self._u32(f"the type of {key!r}"), key)
            metadata[key], value_types[key] = self._value(vtype, key, 0)

        self._check_count(tensor_count, _MIN_TENSOR_INFO_SIZE, "tensor count")
        infos = [self._tensor_info() for _ in range(tensor_count)]

        alignment = DEFAULT_ALIGNMENT
        if "general.alignment" in metadata:
            if value_types["general.alignment"] != (GGUFValueType.UINT32,):
                raise ValueError("general.alignment must be a UINT32")
            alignment = metadata["general.alignment"]
            if alignment == 0 or alignment & (alignment - 1):
                raise ValueError(f"general.alignment {alignment} is not a power of two")
        data_offset = -(-self.pos // alignment) * alignment
        tensors = self._check_tensors(infos, alignment, data_offset)
        return GGUFHeader(
            version=version,
            metadata=metadata,
            value_types=value_types,
            tensors=tensors,
            alignment=alignment,
            data_offset=data_offset,
            file_size=self.size,
        )

    # -- primitives -----------------------------------------------------------------------------

    def _need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise ValueError(
                f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"{max(self.size - self.pos, 0)} left"
            )

    def _check_count(self, count: int, min_item_size: int, what: str) -> None:
        if count * min_item_size > self.size - self.pos:
            raise ValueError(
                f"{what} {count} at offset {self.pos} cannot fit in the "
                f"{self.size - self.pos} bytes left"
            )

    def _u32(self, what: str) -> int:
        self._need(4, what)
        (value,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return value

    def _u64(self, what: str) -> int:
        self._need(8, what)
        (value,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return value

    def _string(self, what: str) -> str:
        length = self._u64(f"the length of {what}")
        self._need(length, what)
        start = self.pos
        self.pos += length
        try:
            return str(self.buf[start : self.pos], "utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{what} at offset {start} is not UTF-8: {exc}") from None

    @staticmethod
    def _value_type(raw: int, key: str) -> GGUFValueType:
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise ValueError(f"unknown value type {raw} for {key!r}") from None

    # -- values ---------------------------------------------------------------------------------

    def _value(
        self, vtype: GGUFValueType, key: str, depth: int
    ) -> tuple[Any, tuple[GGUFValueType, ...]]:
        if vtype == GGUFValueType.STRING:
            return self._string(f"the value of {key!r}"), (vtype,)
        if vtype == GGUFValueType.ARRAY:
            return self._array(key, depth)
        fmt, _ = _SCALARS[vtype]
        self._need(fmt.size, f"the value of {key!r}")
        (value,) = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return value, (vtype,)

    def _array(self, key: str, depth: int) -> tuple[list[Any], tuple[GGUFValueType, ...]]:
        if depth >= MAX_ARRAY_NESTING:
            raise ValueError(f"arrays nested deeper than {MAX_ARRAY_NESTING} in {key!r}")
        itype = self._value_type(self._u32(f"the item type of {key!r}"), key)
        count = self._u64(f"the length of {key!r}")
        self._check_count(count, _MIN_ITEM_SIZE[itype], f"length of array {key!r}")
        if itype == GGUFValueType.STRING:
            return self._string_array(count, key), (GGUFValueType.ARRAY, itype)
        if itype == GGUFValueType.ARRAY:
            flat: list[Any] = []
            types: tuple[GGUFValueType, ...] = (GGUFValueType.ARRAY, itype)
            for _ in range(count):
                items, types = self._array(key, depth + 1)
                flat.extend(items)  # flattened, as GGUFReader's contents() does
                types = (GGUFValueType.ARRAY, *types)
            return flat, types
        _, dtype = _SCALARS[itype]
        nbytes = count * dtype.itemsize
        self._need(nbytes, f"array {key!r}")
        values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).tolist()
        self.pos += nbytes
        return values, (GGUFValueType.ARRAY, itype)

    def _string_array(self, count: int, key: str) -> list[str]:
        """Decode `count` length-prefixed strings in one tight pass (a vocabulary: 262k of them).

        The loop only slices; past-the-end reads surface as `struct.error` (a length prefix
        beyond the buffer) or as the final position check (slices clamp at the end).
        """
        buf, pos = self.buf, self.pos
        unpack = _U64.unpack_from
        raw: list[bytes] = [b""] * count
        try:
            for i in range(count):
                (length,) = unpack(buf, pos)
                pos += 8
                raw[i] = buf[pos : pos + length]
                pos += length
        except struct.error:
            raise ValueError(
                f"truncated: the length of string {i} of array {key!r} is past the end"
            ) from None
        if pos > self.size:
            raise ValueError(f"truncated: the strings of array {key!r} run past the end")
        try:
            strings = list(map(bytes.decode, raw))
        except UnicodeDecodeError as exc:
            raise ValueError(f"a string of array {key!r} is not UTF-8: {exc}") from None
        self.pos = pos
        return strings

    # -- tensors --------------------------------------------------------------------------------

    def _tensor_info(self) -> tuple[str, tuple[int, ...], int, int]:
        name = self._string("a tensor name")
        n_dims = self._u32(f"n_dims of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise ValueError(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
        self._need(8 * n_dims, f"the dimensions of tensor {name!r}")
        shape = struct.unpack_from(f"<{n_dims}Q", self.buf, self.pos)
        self.pos += 8 * n_dims
        raw_type = self._u32(f"the type of tensor {name!r}")
        offset = self._u64(f"the offset of tensor {name!r}")
        return name, shape, raw_type, offset

    def _check_tensors(
        self, infos: list[tuple[str, tuple[int, ...], int, int]], alignment: int, data_offset: int
    ) -> list[GGUFTensorInfo]:
        tensors: list[GGUFTensorInfo] = []
        seen: set[str] = set()
        for name, shape, raw_type, offset in infos:
            if name in seen:
                raise ValueError(f"duplicate tensor name {name!r}")
            seen.add(name)
            try:
                ttype = GGMLQuantizationType(raw_type)
            except ValueError:
                raise ValueError(f"tensor {name!r} has unknown type {raw_type}") from None
            if ttype not in GGML_QUANT_SIZES:
                raise ValueError(f"tensor {name!r} has type {ttype.name} of unknown size")
            block_size, type_size = GGML_QUANT_SIZES[ttype]
            n_elements = 1
            for dim in shape:
                n_elements *= dim
            if shape and shape[0] % block_size:
                raise ValueError(
                    f"tensor {name!r}: first dimension {shape[0]} is not a multiple of the "
                    f"{ttype.name} block size {block_size}"
                )
            n_bytes = n_elements * type_size // block_size
            if offset % alignment:
                raise ValueError(f"tensor {name!r} offset {offset} is not {alignment}-aligned")
            end = data_offset + offset + n_bytes
            if end > self.size:
                raise ValueError(
                    f"truncated: tensor {name!r} ends at byte {end}, the file has {self.size}"
                )
            tensors.append(GGUFTensorInfo(name, shape, ttype, offset, n_elements, n_bytes))
        return tensors
