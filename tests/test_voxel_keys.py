"""ovmap.voxel_keys against naive per-element Python computations, for torch and numpy inputs alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovmap import voxel_keys as vk


def _naive_key(i: int, j: int, k: int) -> int:
    o = 2 ** 20
    return (i + o) * 2 ** 42 + (j + o) * 2 ** 21 + (k + o)


def test_pack_matches_naive_and_roundtrips() -> None:
    rng = np.random.default_rng(0)
    ijk = rng.integers(-(2 ** 20) + 1, 2 ** 20, size=(500, 3))
    want = np.array([_naive_key(*map(int, r)) for r in ijk], dtype=np.int64)
    np.testing.assert_array_equal(vk.pack_indices(ijk), want)
    np.testing.assert_array_equal(vk.pack_indices(torch.from_numpy(ijk)).numpy(), want)
    np.testing.assert_array_equal(vk.unpack_keys(want), ijk)
    np.testing.assert_array_equal(vk.unpack_keys(torch.from_numpy(want)).numpy(), ijk)


def test_keys_sort_like_lexicographic_indices() -> None:
    rng = np.random.default_rng(1)
    ijk = rng.integers(-5, 5, size=(300, 3))
    by_key = ijk[np.argsort(vk.pack_indices(ijk), kind="stable")]
    by_tuple = np.array(sorted(map(tuple, ijk)))
    np.testing.assert_array_equal(by_key, by_tuple)
    np.testing.assert_array_equal(ijk[vk.lexicographic_order(ijk)], by_tuple)


@pytest.mark.parametrize("bad", [2 ** 20, -(2 ** 20)])
def test_pack_rejects_out_of_range(bad: int) -> None:
    for arr in (np.array([[0, bad, 0]]), torch.tensor([[0, bad, 0]])):
        with pytest.raises(ValueError, match="overflows the packed key"):
            vk.pack_indices(arr)


def test_indices_round_half_even_in_working_dtype() -> None:
    pts = np.array([[0.025, -0.025, 0.075], [0.125, 1.0, -0.0749]])
    s = 0.05
    want32 = [[round(float(np.float32(p) / np.float32(s))) for p in row] for row in pts]  # Python round: half-even
    want64 = [[round(p / s) for p in row] for row in pts]
    np.testing.assert_array_equal(vk.voxel_indices(pts, s), want32)
    np.testing.assert_array_equal(vk.voxel_indices(torch.tensor(pts), s).numpy(), want32)
    np.testing.assert_array_equal(vk.voxel_indices(pts, s, dtype=np.float64), want64)


def test_centres_and_back() -> None:
    ijk = np.array([[3, -7, 100000], [0, 1, -1]])
    s = 0.05
    want = np.array([[np.float32(v) * np.float32(s) for v in row] for row in ijk], dtype=np.float32)
    np.testing.assert_array_equal(vk.voxel_centers(ijk, s), want)
    np.testing.assert_array_equal(vk.voxel_centers(torch.tensor(ijk), s).numpy(), want)
    np.testing.assert_array_equal(vk.indices_from_centers(want, s), ijk)


@pytest.mark.parametrize("size", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_voxel_size(size: float) -> None:
    with pytest.raises(ValueError, match="voxel_size"):
        vk.voxel_indices(np.zeros((1, 3)), size)
