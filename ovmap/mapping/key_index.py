"""The map's key -> row lookup: a sparse grid of 4 x 4 x 4-voxel blocks.

A frame looks up its V voxels and inserts the new ones. A sorted array of all N keys would cost O(N) moves per
frame to insert into (about 10 ms per frame at 1 M voxels on a laptop core, growing with the map); here only the
small sorted array of *block* keys is rewritten, and a voxel's row is one gather from its block's 64 cells::

    block key = packed key of (i >> 2, j >> 2, k >> 2)        (the same 21-bit fields as ovmap.voxel_keys)
    cell      = (i & 3) * 16 + (j & 3) * 4 + (k & 3)            (0 .. 63)
    row       = cells[slot of the block, cell]                  (int32, -1 = no voxel)

Both are bit operations on the packed key (the axis fields hold ``index + 2**20 >= 0``, so ``>> 2`` is the floor
division on every axis). Cost: 256 bytes per occupied block, about 10-16 bytes per voxel on surfaces scanned at
1-5 cm (a surface fills a quarter to a third of a block's cells), at worst 256 bytes for an isolated voxel. Lookups
and inserts are O(V log B) plus O(B) int64 moves for new blocks (B = blocks, about N / 20), on any device.
"""

from __future__ import annotations

import torch
from jaxtyping import Int64
from torch import Tensor

from ovmap.voxel_keys import KEY_BITS

BLOCK_BITS = 2
"""log2 of the block edge in voxels (4 voxels per axis, 64 cells per block)."""
CELLS = 1 << (3 * BLOCK_BITS)

_BLOCK_FIELD = (1 << (KEY_BITS - BLOCK_BITS)) - 1
# after ``key >> BLOCK_BITS`` each field's top bits receive the low bits of the next field: keep the field bits only
_BLOCK_MASK = _BLOCK_FIELD | (_BLOCK_FIELD << KEY_BITS) | (_BLOCK_FIELD << (2 * KEY_BITS))
_LOW = (1 << BLOCK_BITS) - 1


def block_keys_of(keys: Int64[Tensor, " V"]) -> Int64[Tensor, " V"]:
    """Packed key of the block holding each voxel key (same layout as a voxel key, indices ``>> BLOCK_BITS``)."""
    return (keys >> BLOCK_BITS) & _BLOCK_MASK


def cells_of(keys: Int64[Tensor, " V"]) -> Int64[Tensor, " V"]:
    """Cell of each voxel key inside its block: ``(i & 3) * 16 + (j & 3) * 4 + (k & 3)``."""
    i = (keys >> (2 * KEY_BITS - 2 * BLOCK_BITS)) & (_LOW << (2 * BLOCK_BITS))
    j = (keys >> (KEY_BITS - BLOCK_BITS)) & (_LOW << BLOCK_BITS)
    return i | j | (keys & _LOW)


class BlockKeyIndex:
    """Packed voxel key -> map row, for keys inserted once each.

    Args:
        device: torch device of the index.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.block_keys = torch.zeros(0, dtype=torch.int64, device=self.device)  # (B,) ascending
        self.block_slots = torch.zeros(0, dtype=torch.int64, device=self.device)  # (B,) slot of each block
        self.cells = torch.zeros(0, CELLS, dtype=torch.int32, device=self.device)  # (capacity, 64) rows, -1 = none

    @property
    def num_blocks(self) -> int:
        return int(self.block_keys.shape[0])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.block_keys, self.block_slots, self.cells))

    def _slots(self, bkeys: Int64[Tensor, " V"]) -> tuple[Int64[Tensor, " V"], Tensor]:
        """Slot of each block key and whether the block exists (slot arbitrary where it does not)."""
        nb = self.num_blocks
        if nb == 0:
            return torch.zeros_like(bkeys), torch.zeros(bkeys.shape, dtype=torch.bool, device=self.device)
        pos = torch.searchsorted(self.block_keys, bkeys).clamp_(max=nb - 1)
        return self.block_slots.index_select(0, pos), self.block_keys.index_select(0, pos) == bkeys

    def _rows(self, slots: Int64[Tensor, " V"], exists: Tensor, cells: Int64[Tensor, " V"]) -> Int64[Tensor, " V"]:
        """Row held by each (slot, cell), -1 where the block does not exist or the cell is empty."""
        if self.num_blocks == 0:
            return torch.full_like(cells, -1)
        return self.cells.view(-1).index_select(0, slots * CELLS + cells).long().masked_fill_(~exists, -1)

    def lookup(self, keys: Int64[Tensor, " V"]) -> Int64[Tensor, " V"]:
        """Row of each key, -1 where the key was never added."""
        return self._rows(*self._slots(block_keys_of(keys)), cells_of(keys))

    def lookup_or_append(self, keys: Int64[Tensor, " V"], next_row: int) -> tuple[Int64[Tensor, " V"], Tensor, int]:
        """Rows of ``keys`` (distinct), giving the keys not in the index the rows ``next_row, next_row + 1, ...`` in
        the order they come, and recording them: one block search for both (a frame's lookup and insertion).

        Returns:
            rows: (V,) int64; new: (V,) bool, True for the keys that were added; the number added.
        """
        if keys.shape[0] == 0:
            return torch.zeros_like(keys), torch.zeros(0, dtype=torch.bool, device=self.device), 0
        bkeys, cells = block_keys_of(keys), cells_of(keys)
        slots, exists = self._slots(bkeys)
        rows = self._rows(slots, exists, cells)
        new = rows < 0
        rank = torch.cumsum(new, 0)
        num_new = int(rank[-1])
        if num_new == 0:
            return rows, new, 0
        if next_row + num_new >= 1 << 31:
            raise ValueError(f"the key index holds rows < 2**31; {next_row + num_new} rows needed")
        rows = torch.where(new, next_row + rank - 1, rows)
        if not bool(exists.all()):
            missing = ~exists
            self._add_blocks(torch.unique(bkeys[missing]))
            slots = slots.masked_scatter(missing, self._slots(bkeys[missing])[0])
        sel = torch.nonzero(new).squeeze(1)
        self.cells.view(-1).index_copy_(0, slots.index_select(0, sel) * CELLS + cells.index_select(0, sel),
                                        rows.index_select(0, sel).to(torch.int32))
        return rows, new, num_new

    def _add_blocks(self, new_bkeys: Int64[Tensor, " K"]) -> None:
        """Insert sorted, distinct, absent block keys with fresh slots (O(B) moves, no sort)."""
        nb, k = self.num_blocks, int(new_bkeys.shape[0])
        if nb + k > self.cells.shape[0]:  # capacity doubling of the small cell table
            grown = torch.full((max(nb + k, 2 * self.cells.shape[0], 1024), CELLS), -1, dtype=torch.int32,
                               device=self.device)
            grown[:nb] = self.cells[:nb]
            self.cells = grown
        new_slots = torch.arange(nb, nb + k, device=self.device)
        # destination of new block j in the merged order: its insertion point among the old keys plus j
        dest = torch.searchsorted(self.block_keys, new_bkeys) + torch.arange(k, device=self.device)
        is_new = torch.zeros(nb + k, dtype=torch.bool, device=self.device)
        is_new[dest] = True
        merged_keys = torch.empty(nb + k, dtype=torch.int64, device=self.device)
        merged_slots = torch.empty(nb + k, dtype=torch.int64, device=self.device)
        merged_keys[dest] = new_bkeys
        merged_slots[dest] = new_slots
        if nb:
            merged_keys.masked_scatter_(~is_new, self.block_keys)
            merged_slots.masked_scatter_(~is_new, self.block_slots)
        self.block_keys, self.block_slots = merged_keys, merged_slots
