"""RowChunks against a dense tensor doing the same writes."""

from __future__ import annotations

import pytest
import torch

from ovmap.mapping.storage import RowChunks


def test_row_chunks_match_a_dense_tensor(device):
    g = torch.Generator().manual_seed(0)
    store = RowChunks((3,), torch.float32, device, chunk_rows=8)
    dense = torch.zeros(0, 3)
    n = 0
    for _ in range(12):
        k = int(torch.randint(1, 20, (1,), generator=g))
        vals = torch.randn(k, 3, generator=g)
        store.reserve(n + k)
        store.write(n, vals.to(device))
        dense = torch.cat([dense, vals])
        n += k
        rows = torch.randperm(n, generator=g)[: max(1, n // 3)]
        upd = torch.randn(rows.shape[0], 3, generator=g)
        store.scatter(rows.to(device), upd.to(device))
        dense[rows] = upd
        assert torch.equal(store.gather(rows.to(device)).cpu(), dense[rows])
        assert torch.equal(store.read(n).cpu(), dense)
    assert store.capacity >= n and store.capacity - n < 8
    assert len(store.chunks) == (n + 7) // 8
    parts = store.views(n)
    assert [lo for lo, _ in parts] == list(range(0, n, 8))
    assert torch.equal(torch.cat([v for _, v in parts]).cpu(), dense)


def test_growth_never_moves_stored_rows():
    store = RowChunks((2,), torch.float32, torch.device("cpu"), chunk_rows=4)
    store.reserve(4)
    first = store.chunks[0]
    store.write(0, torch.ones(4, 2))
    store.reserve(100)
    assert store.chunks[0] is first and first.data_ptr() == store.chunks[0].data_ptr()


def test_chunk_rows_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        RowChunks((2,), torch.float32, torch.device("cpu"), chunk_rows=6)
