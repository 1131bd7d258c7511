from __future__ import annotations

import numpy as np
import pytest

from ovmap.encoders import check_rgb
from ovmap.regions import top_region
from ovmap.vis.colors import heat_colors
from ovmap.registry import Registry


def test_registry_register_get_and_conflicts():
    reg = Registry("thing")

    @reg.register("a")
    class A: ...

    assert reg.get("a") is A and reg.names() == ["a"] and "a" in reg
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(type("B", (), {}))
    with pytest.raises(KeyError, match="Unknown thing 'b'. Available: a"):
        reg.get("b")


def test_top_region_picks_largest_connected_group_near_the_max():
    # two candidate blobs above the margin: one of 3 voxels (best score) and one of 5 connected voxels
    keys = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [10, 10, 10], [11, 10, 10], [11, 11, 10], [12, 11, 11],
                     [12, 12, 12], [5, 5, 5]])
    scores = np.array([0.99, 0.98, 0.97, 0.96, 0.96, 0.96, 0.96, 0.96, 0.10])
    region = top_region(keys, scores, voxel_size=0.1, margin=0.05)
    np.testing.assert_array_equal(np.sort(region.indices), [3, 4, 5, 6, 7])
    centres = keys[3:8] * 0.1
    np.testing.assert_allclose(region.centroid, centres.mean(0))
    np.testing.assert_allclose(region.extent, centres.max(0) - centres.min(0) + 0.1)
    assert top_region(np.zeros((0, 3)), np.zeros(0), 0.1) is None


def test_heat_colors_ramp():
    colors = heat_colors(np.array([0.0, 0.5, 1.0]))
    np.testing.assert_array_equal(colors[0], [68, 1, 84])
    np.testing.assert_array_equal(colors[2], [253, 231, 37])
    assert colors.dtype == np.uint8


def test_check_rgb_errors():
    import torch

    check_rgb(torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        check_rgb(torch.rand(1, 4, 4, 4))
    with pytest.raises(ValueError, match="lie in \\[0, 1\\]"):
        check_rgb(torch.rand(1, 3, 4, 4) * 255)
