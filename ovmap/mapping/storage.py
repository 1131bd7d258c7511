"""Append-only row storage in fixed-size chunks: growth never copies, rows never move.

A :class:`RowChunks` holds ``(rows, *row_shape)`` values as a list of ``(chunk_rows, *row_shape)`` tensors. Growing
allocates one more chunk with ``torch.empty``; nothing already stored is copied, so there is no stall and no
2x peak when the map grows. On CPU an untouched part of a chunk costs address space only (Linux commits pages on
first write), so resident memory follows the rows actually written; on CUDA the unused tail of the last chunk
(at most ``chunk_rows - 1`` rows) is allocated.

Row ``r`` lives in chunk ``r // chunk_rows`` at offset ``r % chunk_rows``; ``chunk_rows`` is a power of two.

Growing maps on CPU (``prefault=True``, once the rows fill the first chunk): the next chunk is allocated while
there is still room in the current one, and a background thread asks Linux to populate it
(``madvise(MADV_POPULATE_WRITE)``, Linux >= 5.14), so the kernel zeroes its pages on another core instead of in
page faults on the frame's critical path (about 40 % of the cost of writing a new row). It costs at most one spare
chunk of resident memory and nothing on a single core but the same zeroing done earlier.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 1 << 16
"""65,536 rows per chunk: 192 MiB at 768 float32 channels, 16 chunks at 1 M voxels."""

_MADV_HUGEPAGE = 14
_MADV_POPULATE_WRITE = 23
_HUGE = 2 << 20
_libc = None
_allocator_tuned = False
_populate_supported: bool | None = None
_populate_pool: ThreadPoolExecutor | None = None


def _get_libc():
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def advise_huge_pages(t: Tensor) -> None:
    """Ask Linux to back a large CPU tensor with transparent huge pages (``madvise(MADV_HUGEPAGE)``).

    First writes to a fresh chunk then fault 2 MiB at a time instead of 4 KiB: about half the cost of growing the
    map on this kind of machine. Best effort: a no-op off Linux, on CUDA, or where THP is disabled.
    """
    libc = _get_libc()
    if libc is None or t.device.type != "cpu":
        return
    start, size = t.data_ptr(), t.numel() * t.element_size()
    lo = (start + _HUGE - 1) // _HUGE * _HUGE
    hi = (start + size) // _HUGE * _HUGE
    if hi > lo:
        libc.madvise(lo, hi - lo, _MADV_HUGEPAGE)


def _page_range(t: Tensor) -> tuple[int, int]:
    start = t.data_ptr() // 4096 * 4096
    return start, (t.data_ptr() + t.numel() * t.element_size()) - start


def populate_in_background(t: Tensor) -> Future | None:
    """Fault in every page of a fresh CPU tensor writable on a background thread; contents are left as they are.

    ``madvise(MADV_POPULATE_WRITE)`` only maps pages (it never writes data), so it may race with writes to the
    tensor. Returns the future, or None where unsupported (not Linux >= 5.14, not CPU).
    """
    global _populate_pool
    libc = _get_libc()
    if libc is None or t.device.type != "cpu" or _populate_supported is False:
        return None
    if _populate_pool is None:
        _populate_pool = ThreadPoolExecutor(1, thread_name_prefix="ovmap-prefault")

    def run(tensor: Tensor = t) -> bool:  # the closure keeps the tensor alive until its pages are mapped
        global _populate_supported
        start, size = _page_range(tensor)
        ok = libc.madvise(start, size, _MADV_POPULATE_WRITE) == 0  # ctypes releases the GIL during the call
        if not ok and _populate_supported is None:
            _populate_supported = False
            logger.debug("MADV_POPULATE_WRITE unsupported (errno %d); no background prefault", ctypes.get_errno())
        elif ok:
            _populate_supported = True
        return ok

    return _populate_pool.submit(run)


def tune_cpu_allocator() -> None:
    """Keep freed per-frame temporaries in the process heap instead of returning them to the kernel (glibc).

    glibc returns large freed blocks to the kernel (``munmap`` / heap trimming), so every frame's temporaries
    (a few MB each) are page-faulted in again, which costs as much as the fusion itself. This raises the
    ``mmap`` threshold to 64 MiB and the trim threshold to 512 MiB (``mallopt``), once per process, when the
    first CPU :class:`~ovmap.mapping.voxel_map.VoxelMap` is built. Blocks above 64 MiB (the map's chunks) are
    still ``mmap``-ed. Cost: up to 512 MiB of freed heap may stay resident. Set ``OVMAP_MALLOC_TUNING=0`` to
    leave the allocator alone.
    """
    global _allocator_tuned
    if _allocator_tuned or os.environ.get("OVMAP_MALLOC_TUNING", "1") == "0":
        return
    _allocator_tuned = True
    libc = _get_libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 64 << 20) and libc.mallopt(m_trim_threshold, 512 << 20)
    logger.debug("glibc mallopt tuning %s", "applied" if ok else "refused")


class RowChunks:
    """Rows of a fixed shape and dtype in fixed-size chunks.

    Args:
        row_shape: shape of one row, e.g. ``(C,)``.
        dtype: storage dtype.
        device: torch device.
        chunk_rows: rows per chunk, a power of two.
        prefault: on CPU, keep the next chunk allocated and populated in the background once the first chunk is
            full (see the module doc).
    """

    def __init__(
        self,
        row_shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        prefault: bool = False,
    ) -> None:
        if chunk_rows <= 0 or chunk_rows & (chunk_rows - 1):
            raise ValueError(f"chunk_rows must be a positive power of two, got {chunk_rows}")
        self.row_shape = tuple(row_shape)
        self.dtype = dtype
        self.device = device
        self.chunk_rows = chunk_rows
        self._shift = chunk_rows.bit_length() - 1
        self.chunks: list[Tensor] = []
        self.prefault = bool(prefault) and self.device.type == "cpu"

    @property
    def capacity(self) -> int:
        """Rows that fit without allocating another chunk."""
        return len(self.chunks) * self.chunk_rows

    def nbytes_allocated(self) -> int:
        """Bytes of all chunks (on CPU the untouched tail of the last one is not resident)."""
        return sum(c.numel() * c.element_size() for c in self.chunks)

    def reserve(self, rows: int) -> None:
        """Allocate chunks until ``rows`` rows fit (new rows are uninitialised until written)."""
        while self.capacity < rows:
            self._add_chunk()
        # a growing map: have the next chunk ready (populated off the critical path) before the rows reach it
        if self.prefault and rows >= self.chunk_rows and self.capacity - rows < self.chunk_rows // 2:
            populate_in_background(self._add_chunk())

    def _add_chunk(self) -> Tensor:
        chunk = torch.empty((self.chunk_rows, *self.row_shape), dtype=self.dtype, device=self.device)
        advise_huge_pages(chunk)
        self.chunks.append(chunk)
        return chunk

    def split(self, rows: Tensor) -> list[tuple[int, Tensor | None, Tensor]]:
        """``(chunk, positions in rows, offsets in the chunk)`` for every chunk that ``rows`` touches.

        With a single chunk the positions are None (all of ``rows``)."""
        if len(self.chunks) == 1:
            return [(0, None, rows)]  # type: ignore[list-item]
        cid = rows >> self._shift
        out = []
        for c in range(len(self.chunks)):
            sel = torch.nonzero(cid == c).squeeze(1)
            if sel.numel():
                out.append((c, sel, rows.index_select(0, sel) - (c << self._shift)))
        return out

    def gather(self, rows: Tensor) -> Tensor:
        """``(len(rows), *row_shape)`` copy of the given rows (any order)."""
        if len(self.chunks) == 1:
            return self.chunks[0].index_select(0, rows)
        out = torch.empty((rows.shape[0], *self.row_shape), dtype=self.dtype, device=self.device)
        for c, sel, local in self.split(rows):
            out.index_copy_(0, sel, self.chunks[c].index_select(0, local))
        return out

    def scatter(self, rows: Tensor, values: Tensor) -> None:
        """Write ``values[i]`` to row ``rows[i]`` (rows distinct, within capacity)."""
        values = values.to(self.dtype)
        if len(self.chunks) == 1:
            self.chunks[0].index_copy_(0, rows, values)
            return
        for c, sel, local in self.split(rows):
            self.chunks[c].index_copy_(0, local, values.index_select(0, sel))

    def slices(self, start: int, count: int) -> list[tuple[int, Tensor]]:
        """``(offset, view)`` pairs covering rows ``start .. start + count`` (within capacity): ``view`` holds rows
        ``start + offset ..`` in place, so results can be written straight into storage (``out=view``)."""
        out = []
        done = 0
        while done < count:
            r = start + done
            c, off = r >> self._shift, r & (self.chunk_rows - 1)
            k = min(count - done, self.chunk_rows - off)
            out.append((done, self.chunks[c][off : off + k]))
            done += k
        return out

    def write(self, start: int, values: Tensor) -> None:
        """Write consecutive rows ``start .. start + len(values)`` (within capacity)."""
        values = values.to(self.dtype)
        done = 0
        while done < values.shape[0]:
            r = start + done
            c, off = r >> self._shift, r & (self.chunk_rows - 1)
            k = min(values.shape[0] - done, self.chunk_rows - off)
            self.chunks[c][off : off + k].copy_(values[done : done + k])
            done += k

    def read(self, stop: int) -> Tensor:
        """Rows ``0 .. stop`` as one tensor: a view when they lie in one chunk, else a concatenated copy."""
        if stop <= self.chunk_rows and self.chunks:
            return self.chunks[0][:stop]
        if stop == 0:
            return torch.empty((0, *self.row_shape), dtype=self.dtype, device=self.device)
        parts = []
        for c in range((stop + self.chunk_rows - 1) >> self._shift):
            parts.append(self.chunks[c][: min(self.chunk_rows, stop - (c << self._shift))])
        return torch.cat(parts)

    def views(self, stop: int) -> list[tuple[int, Tensor]]:
        """``(first_row, view)`` of every chunk part holding rows ``0 .. stop`` (no copy)."""
        out = []
        for c in range((stop + self.chunk_rows - 1) >> self._shift):
            lo = c << self._shift
            out.append((lo, self.chunks[c][: min(self.chunk_rows, stop - lo)]))
        return out
