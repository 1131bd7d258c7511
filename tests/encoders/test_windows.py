"""paste_window against a hand-computed canvas."""

from __future__ import annotations

import torch

from ovmap.encoders.windows import paste_window


def test_two_overlapping_windows_average_on_the_canvas() -> None:
    acc, cnt = torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)
    # image 20 x 40 -> canvas 2 x 4 (10 px per cell); windows cover x in [0, 30) and [10, 40)
    paste_window(acc, cnt, torch.full((1, 2, 3), 1.0), (0, 0, 20, 30), (20, 40))
    paste_window(acc, cnt, torch.full((1, 2, 3), 3.0), (0, 10, 20, 40), (20, 40))
    assert (acc / cnt).tolist() == [[[1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 2.0, 3.0]]]


def test_grid_of_another_size_is_resized_bilinearly_to_its_cells() -> None:
    acc, cnt = torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)
    grid = torch.arange(16.0).reshape(1, 4, 4)
    paste_window(acc, cnt, grid, (0, 0, 8, 8), (8, 8))
    # 4x4 -> 2x2 bilinear (align_corners=False) samples the centres of 2x2 blocks: their means
    want = grid.reshape(2, 2, 2, 2).permute(0, 2, 1, 3).reshape(2, 2, 4).mean(-1)
    assert torch.allclose(acc[0], want) and cnt.eq(1).all()
