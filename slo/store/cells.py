"""The BLOB format of every count array in the store: a small header, then the array dense or
only its non-zero cells, whichever is smaller (idle series and quiet minutes cost nothing)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from slo.store.errors import StoreError

U32 = npt.NDArray[np.uint32]

_HEADER = struct.Struct("<HHIB")  # rows, cols, non-zero cells, dense flag
_DENSE, _SPARSE = 1, 0


def pack(a: npt.NDArray[np.integer]) -> bytes:
    """A 2-D count array: dense, or only its non-zero cells when that is smaller."""
    flat = np.ascontiguousarray(a, dtype="<u4").ravel()
    nz = np.flatnonzero(flat)
    if nz.size * 6 >= flat.size * 4:
        return _HEADER.pack(a.shape[0], a.shape[1], nz.size, _DENSE) + flat.tobytes()
    return (
        _HEADER.pack(a.shape[0], a.shape[1], nz.size, _SPARSE)
        + nz.astype("<u2").tobytes()
        + flat[nz].tobytes()
    )


def unpack(blob: bytes) -> U32:
    out: U32 = unpack_many([blob])[0]
    return out


def unpack_many(blobs: Sequence[bytes]) -> U32:
    """Decode blobs of one shape into one (n, rows, cols) array, dense and sparse in bulk."""
    if not blobs:
        return np.zeros((0, 0, 0), dtype=np.uint32)
    rows, cols, _, _ = _HEADER.unpack_from(blobs[0])
    size = rows * cols
    out = np.zeros((len(blobs), size), dtype=np.uint32)
    sparse_at, counts, idx_parts, val_parts = [], [], [], []
    h = _HEADER.size
    dense_len = h + 4 * size
    for i, b in enumerate(blobs):
        if b[8] == _DENSE:
            if len(b) != dense_len:
                raise StoreError(f"mixed array shapes in one read (expected {rows}x{cols})")
            out[i] = np.frombuffer(b, dtype="<u4", count=size, offset=h)
            continue
        n = int.from_bytes(b[4:8], "little")
        if n:
            view = memoryview(b)
            sparse_at.append(i)
            counts.append(n)
            idx_parts.append(view[h : h + 2 * n])
            val_parts.append(view[h + 2 * n :])
    if sparse_at:
        where = np.repeat(np.array(sparse_at), counts)
        cells = np.frombuffer(b"".join(idx_parts), dtype="<u2")
        out[where, cells] = np.frombuffer(b"".join(val_parts), dtype="<u4")
    return out.reshape(len(blobs), rows, cols)
