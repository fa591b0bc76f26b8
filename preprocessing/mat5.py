"""MATLAB v5 files checked before scipy.io reads them.

scipy's v5 reader is C code that trusts each element's tag: a data-type code outside its table is used as an index,
a complex flag without an imaginary part or a size beyond the element makes it read past the element. On a damaged
file that is a segfault, not an exception (a fuzzed NinaPro-style file crashed it about once in a hundred single-byte
edits; scipy 1.17). `checked_variables` walks the elements in Python first and returns the wanted top-level
variables as a small uncompressed v5 file in memory, which scipy.io.loadmat then reads: anything the walk does not
accept is a DataError naming the file and the byte offset. Compressed variables are inflated once, here.

Layout (MATLAB's "MAT-File Format"): a 128-byte header whose last two bytes say the byte order ("IM": little
endian), then elements of an 8-byte tag (data type, byte count; a "small" element packs both in 4 bytes and its
data in the other 4) and their data, padded to 8 bytes (compressed data is not). A variable is a miMATRIX element holding, in order, its
array flags, dimensions and name, then its class's parts; miCOMPRESSED holds one zlib-compressed miMATRIX.
"""

from __future__ import annotations

import io
import itertools
import math
import struct
import zlib
from pathlib import Path

from .errors import DataError

HEADER_BYTES = 128
MI_INT8, MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED = 1, 5, 6, 14, 15
# numeric element types and their sizes in bytes (utf8/16/32 only hold characters)
ITEM_BYTES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8, 16: 1, 17: 2, 18: 4}
CELL, STRUCT, OBJECT, CHAR, SPARSE = 1, 2, 3, 4, 5
NUMERIC = {CHAR, *range(6, 16)}  # char and double .. uint64
COMPLEX_FLAG = 0x08
MAX_DEPTH = 32  # nested cells/structs; deeper is not a data file
PEEK_BYTES = 4096  # inflated to read a compressed variable's name (tag, flags, dimensions, name) before the rest


def checked_variables(path: Path, names: set[str]) -> io.BytesIO | Path:
    """The top-level variables `names` of a v5 MAT file (those present), as an uncompressed v5 file in memory;
    DataError naming the file for any element the walk finds malformed. A file without the v5 byte-order mark (a
    v4 file, read by scipy's Python code, or not a MAT file at all) is returned as is, for scipy to read or refuse."""
    data = path.read_bytes()
    order = {b"IM": "<", b"MI": ">"}.get(data[126:128]) if len(data) >= HEADER_BYTES else None
    if order is None:
        return path
    walk = _Walk(path, order)
    header = data[:116] + b"\x00" * 8 + data[124:HEADER_BYTES]  # no subsystem data: only plain variables are kept
    kept = [header]
    for offset, mdtype, start, stop in walk.tags(data, HEADER_BYTES, len(data)):
        if mdtype == MI_COMPRESSED:
            peek = walk.inflate(data[start:stop], offset, PEEK_BYTES)
            if len(peek) < 8 or struct.unpack_from(order + "I", peek)[0] != MI_MATRIX:
                raise walk.fail(f"compressed element at byte {offset} does not hold a variable")
            if walk.name(peek, 8, len(peek)) not in names:
                continue
            element = walk.inflate(data[start:stop], offset)
            (_, _, inner_start, inner_stop), *rest = list(walk.tags(element, 0, len(element)))
            if rest:
                raise walk.fail(f"compressed element at byte {offset} holds more than one variable")
            walk.matrix(element, inner_start, inner_stop, 0)
            kept.append(element[:inner_stop] + b"\x00" * (-inner_stop % 8))
        elif mdtype == MI_MATRIX and walk.name(data, start, stop) in names:
            walk.matrix(data, start, stop, 0)
            kept.append(data[offset:stop] + b"\x00" * (-stop % 8))
    return io.BytesIO(b"".join(kept))


class _Walk:
    def __init__(self, path: Path, order: str):
        self.path, self.order = path, order

    def fail(self, problem: str) -> DataError:
        return DataError(self.path, f"damaged MAT v5 file: {problem}")

    def tags(self, data: bytes, start: int, stop: int):
        """(offset, data type, data start, data stop) of each element in data[start:stop]."""
        offset = start
        while offset < stop:
            if stop - offset < 8:
                raise self.fail(f"element tag at byte {offset} cut short")
            first, second = struct.unpack_from(self.order + "II", data, offset)
            if first >> 16:  # small element: byte count in the upper half, data in the tag's second word
                mdtype, size, begin, after = first & 0xFFFF, first >> 16, offset + 4, offset + 8
                if size > 4:
                    raise self.fail(f"small element at byte {offset} claims {size} bytes")
            else:
                mdtype, size, begin = first, second, offset + 8
                after = begin + size + (0 if mdtype == MI_COMPRESSED else -size % 8)  # compressed data is not padded
            if begin + size > stop:
                raise self.fail(f"element at byte {offset} claims {size} bytes, {stop - begin} remain")
            yield offset, mdtype, begin, begin + size
            offset = min(after, stop)

    def inflate(self, compressed: bytes, offset: int, at_most: int = 0) -> bytes:
        """The inflated element (its first `at_most` bytes when given)."""
        try:
            return zlib.decompressobj().decompress(compressed, at_most) if at_most else zlib.decompress(compressed)
        except zlib.error as err:
            raise self.fail(f"compressed element at byte {offset}: {err}") from None

    def name(self, data: bytes, start: int, stop: int) -> str:
        """The name of the miMATRIX whose payload starts at `start` (only its first three parts are read, so `data`
        may be the first bytes of an inflated variable)."""
        parts = list(itertools.islice(self.tags(data, start, stop), 3))
        if len(parts) < 3 or parts[2][1] != MI_INT8:
            raise self.fail(f"variable at byte {start} has no name element")
        return data[parts[2][2]:parts[2][3]].decode("latin-1")

    def parts(self, data: bytes, start: int, stop: int, minimum: int) -> list:
        parts = list(self.tags(data, start, stop))
        if len(parts) < minimum:
            raise self.fail(f"variable at byte {start} has {len(parts)} parts, at least {minimum} needed")
        return parts

    def matrix(self, data: bytes, start: int, stop: int, depth: int) -> None:
        """Check one miMATRIX payload data[start:stop] the way scipy's reader will read it."""
        if depth > MAX_DEPTH:
            raise self.fail(f"variables nested more than {MAX_DEPTH} deep")
        parts = self.parts(data, start, stop, minimum=2)
        (flags_at, flags_type, flags, flags_end), (dims_at, dims_type, dims, dims_end) = parts[:2]
        if flags_type != MI_UINT32 or flags_end - flags != 8:
            raise self.fail(f"array flags at byte {flags_at} are not two uint32 words")
        word = struct.unpack_from(self.order + "I", data, flags)[0]
        kind, is_complex = word & 0xFF, bool(word >> 8 & COMPLEX_FLAG)
        if dims_type != MI_INT32 or (dims_end - dims) % 4 or dims_end - dims < 8:
            raise self.fail(f"dimensions at byte {dims_at} are not two or more int32")
        shape = struct.unpack_from(f"{self.order}{(dims_end - dims) // 4}i", data, dims)
        if min(shape) < 0:
            raise self.fail(f"negative dimension {shape} at byte {dims_at}")
        rest = parts[3:]  # after the name (checked by `name` for top-level variables, here for nested ones)
        if len(parts) < 3 or parts[2][1] != MI_INT8:
            raise self.fail(f"variable at byte {start} has no name element")
        if kind in NUMERIC:  # characters may be stored as UTF-8, a variable number of bytes each
            self.numeric(data, rest, 1 + is_complex, None if kind == CHAR else math.prod(shape), start)
        elif kind == SPARSE:
            if len(rest) != 3 + is_complex or any(mdtype != MI_INT32 for _, mdtype, _, _ in rest[:2]):
                raise self.fail(f"sparse variable at byte {start} has {len(rest)} parts")
            self.numeric(data, rest[2:], 1 + is_complex, None, start)
        elif kind == CELL:
            self.children(data, rest, math.prod(shape), depth, start)
        elif kind in (STRUCT, OBJECT):
            fixed = 3 if kind == OBJECT else 2  # [class name,] field-name length, field names
            if len(rest) < fixed:
                raise self.fail(f"struct at byte {start} has no field names")
            (_, length_type, length_at, _), (_, names_type, names_at, names_end) = rest[fixed - 2:fixed]
            length = struct.unpack_from(self.order + "i", data, length_at)[0] if length_type == MI_INT32 else 0
            if length <= 0 or names_type != MI_INT8 or (names_end - names_at) % length:
                raise self.fail(f"struct field names at byte {start} are malformed")
            self.children(data, rest[fixed:], math.prod(shape) * ((names_end - names_at) // length), depth, start)
        else:
            raise self.fail(f"variable at byte {start} is of MATLAB class {kind}, not an array, cell or struct")

    def numeric(self, data: bytes, rest: list, count: int, elements: int | None, start: int) -> None:
        if len(rest) != count:
            raise self.fail(f"variable at byte {start} has {len(rest)} data parts, its flags say {count}")
        for at, mdtype, begin, end in rest:
            if mdtype not in ITEM_BYTES:
                raise self.fail(f"data at byte {at} has unknown data type {mdtype}")
            if elements is not None and end - begin != elements * ITEM_BYTES[mdtype]:
                raise self.fail(f"data at byte {at} holds {end - begin} bytes, its dimensions need "
                                f"{elements * ITEM_BYTES[mdtype]}")

    def children(self, data: bytes, rest: list, count: int, depth: int, start: int) -> None:
        if len(rest) != count:
            raise self.fail(f"variable at byte {start} holds {len(rest)} elements, its dimensions say {count}")
        for at, mdtype, begin, end in rest:
            if mdtype != MI_MATRIX:
                raise self.fail(f"element at byte {at} of a cell or struct is not a variable (type {mdtype})")
            self.matrix(data, begin, end, depth + 1)
