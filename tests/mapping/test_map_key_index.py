"""The block key index (mapping/key_index.py) against naive integer arithmetic and a Python dict."""

import numpy as np
import torch

from ovmap.mapping.key_index import CELLS, BlockKeyIndex, block_keys_of, cells_of
from ovmap.voxel_keys import KEY_OFFSET, pack_indices


def _random_indices(g: torch.Generator, n: int, span: int) -> torch.Tensor:
    """(n, 3) distinct voxel indices around 0, with some at the extremes of the key range."""
    ijk = torch.randint(-span, span, (n, 3), generator=g)
    ijk[:4] = torch.tensor([[-KEY_OFFSET + 1] * 3, [KEY_OFFSET - 1] * 3, [-KEY_OFFSET + 1, 0, KEY_OFFSET - 1],
                            [3, -4, -1]])
    return torch.unique(ijk, dim=0)


def test_block_and_cell_of_a_key_match_floor_division():
    ijk = _random_indices(torch.Generator().manual_seed(0), 5000, 40)
    keys = pack_indices(ijk)
    np.testing.assert_array_equal(block_keys_of(keys).numpy(), pack_indices(torch.div(ijk, 4, rounding_mode="floor"))
                                  .numpy() - _block_offset_shift())
    m = torch.remainder(ijk, 4)
    np.testing.assert_array_equal(cells_of(keys).numpy(), (m[:, 0] * 16 + m[:, 1] * 4 + m[:, 2]).numpy())
    assert int(cells_of(keys).max()) < CELLS


def _block_offset_shift() -> int:
    """A block key packs ``(i + 2**20) >> 2``; ``pack_indices(i // 4)`` packs ``i // 4 + 2**20``: the per-axis
    difference is the constant ``2**20 - 2**18``, the same in every field."""
    d = KEY_OFFSET - (KEY_OFFSET >> 2)
    return (d << 42) | (d << 21) | d


def test_blocks_are_distinct_iff_floor_divided_indices_are():
    ijk = _random_indices(torch.Generator().manual_seed(1), 3000, 10)
    bk = block_keys_of(pack_indices(ijk))
    blocks = {tuple(b) for b in torch.div(ijk, 4, rounding_mode="floor").tolist()}
    assert len(torch.unique(bk)) == len(blocks)
    # block keys sort like the blocks' indices (lexicographic)
    order = torch.argsort(bk)
    fl = torch.div(ijk, 4, rounding_mode="floor")[order].tolist()
    assert fl == sorted(fl)


def test_lookup_and_append_match_a_dict_over_many_batches():
    g = torch.Generator().manual_seed(2)
    index = BlockKeyIndex(torch.device("cpu"))
    truth: dict[int, int] = {}
    pool = pack_indices(_random_indices(g, 20000, 30))
    pool = pool[torch.randperm(len(pool), generator=g)]
    start = 0
    for size in [1, 7, 300, 2500, 0, 5000, 40, 9000]:
        batch = pool[start : start + size]
        start += size
        probe = torch.cat([batch, pool[: start + 50], pool[-100:]])
        expect = [truth.get(k, -1) for k in probe.tolist()]
        assert index.lookup(probe).tolist() == expect
        rows, new, num_new = index.lookup_or_append(batch, len(truth))
        assert bool(new.all()) and num_new == len(batch)  # the batch holds keys not added yet
        truth.update(zip(batch.tolist(), range(len(truth), len(truth) + len(batch))))
        assert rows.tolist() == [truth[k] for k in batch.tolist()]
        assert index.lookup(pool).tolist() == [truth.get(k, -1) for k in pool.tolist()]
    # block keys stay strictly ascending and every slot is used once
    assert bool((index.block_keys[1:] > index.block_keys[:-1]).all())
    assert sorted(index.block_slots.tolist()) == list(range(index.num_blocks))


def test_lookup_or_append_matches_a_dict():
    g = torch.Generator().manual_seed(3)
    index = BlockKeyIndex(torch.device("cpu"))
    truth: dict[int, int] = {}
    pool = pack_indices(_random_indices(g, 12000, 25))
    for size in [0, 1, 500, 3000, 4000, 6000]:
        keys = pool[torch.randperm(len(pool), generator=g)[:size]]
        rows, new, num_new = index.lookup_or_append(keys, len(truth))
        expect_new = [k not in truth for k in keys.tolist()]
        for k in keys.tolist():  # the rule: unknown keys get the next rows in the order they come
            truth.setdefault(k, len(truth))
        assert new.tolist() == expect_new and num_new == sum(expect_new)
        assert rows.tolist() == [truth[k] for k in keys.tolist()]
        assert index.lookup(pool).tolist() == [truth.get(k, -1) for k in pool.tolist()]


def test_empty_index_finds_nothing():
    index = BlockKeyIndex(torch.device("cpu"))
    keys = pack_indices(torch.tensor([[0, 0, 0], [-5, 2, 9]]))
    assert index.lookup(keys).tolist() == [-1, -1]
    rows, new, num_new = index.lookup_or_append(keys[:0], 0)
    assert rows.numel() == 0 and new.numel() == 0 and num_new == 0 and index.num_blocks == 0
