"""PosedRGBDDataset contract: registry, build_dataset, frame selection, resizing, validation (in-memory dataset)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from ovmap.datasets import DATASETS, PosedRGBDDataset, available_datasets, build_dataset


class ToyDataset(PosedRGBDDataset):
    """n raw frames of known content; optional per-frame shape overrides to provoke validation errors."""

    def __init__(self, n=7, hw=(6, 8), depth_hw=None, bad_label_frame=None, bad_rgb_frame=None, **kw):
        super().__init__(**kw)
        self.n, self.hw, self.depth_hw = n, hw, depth_hw or hw
        self.bad_label_frame, self.bad_rgb_frame = bad_label_frame, bad_rgb_frame
        self.class_names = ["ignore", "a", "b"]

    @property
    def has_labels(self):
        return True

    def _num_raw_frames(self):
        return self.n

    def _load_raw_frame(self, i):
        h, w = self.hw
        if i == self.bad_rgb_frame:
            h += 2
        dh, dw = self.depth_hw
        depth = np.full((dh, dw), 1.0 + i, np.float32)
        depth[0, 0] = 0.0
        labels = (np.arange(h * w).reshape(h, w) % 3).astype(np.int64)
        if i == self.bad_label_frame:
            labels = labels[:-1]
        K = np.array([[10.0, 0, (dw - 1) / 2], [0, 12.0, (dh - 1) / 2], [0, 0, 1]])
        pose = np.eye(4)
        pose[0, 3] = i
        return {"rgb": np.full((3, h, w), 0.5, np.float32), "depth": depth, "pose": pose, "intrinsics": K,
                "labels": labels}  # fmt: skip


def test_registry_names_and_errors():
    assert {"synthetic", "folder"} <= set(available_datasets())
    with pytest.raises(KeyError, match="synthetic"):
        build_dataset("synthetc")
    with pytest.raises(TypeError, match="bogus_arg"):
        build_dataset("synthetic", preset="test", bogus_arg=3)
    assert DATASETS.get("synthetic").__name__ == "SyntheticScene"


def test_import_does_not_load_open3d():
    code = "import sys, ovmap.datasets; assert 'open3d' not in sys.modules, 'open3d imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("skip,expected", [(0, [0, 1, 2, 3, 4, 5, 6]), (1, [0, 2, 4, 6]), (2, [0, 3, 6]), (6, [0]),
                                           (10, [0])])  # fmt: skip
def test_frame_skip_keeps_index_mod_k_plus_1(skip, expected):
    ds = ToyDataset(n=7, frame_skip=skip)
    assert len(ds) == len(expected)
    assert [f["index"] for f in ds] == expected
    assert [ds[i]["index"] for i in range(len(ds))] == expected
    assert ds[-1]["index"] == expected[-1]
    # the pose comes from the raw frame
    assert [float(f["pose"][0, 3]) for f in ds] == expected
    with pytest.raises(IndexError):
        ds[len(expected)]


def test_frame_dict_types_and_zero_depth_is_nan():
    f = ToyDataset()[0]
    assert set(f) == {"rgb", "depth", "pose", "intrinsics", "index", "labels"}
    assert f["rgb"].dtype == torch.float32 and f["rgb"].shape == (3, 6, 8)
    assert f["depth"].dtype == torch.float32 and f["depth"].shape == (1, 6, 8)
    assert f["pose"].dtype == torch.float32 and f["pose"].shape == (4, 4)
    assert f["intrinsics"].dtype == torch.float32 and f["intrinsics"].shape == (3, 3)
    assert f["labels"].dtype == torch.int64 and f["labels"].shape == (1, 6, 8)
    assert torch.isnan(f["depth"][0, 0, 0]) and torch.isfinite(f["depth"][0, 1:]).all()


def test_resizing_rgb_depth_labels_and_intrinsics():
    ds = ToyDataset(hw=(6, 8), depth_hw=(12, 16), rgb_resolution=[3, 4], depth_resolution=(6, 4))
    f = ds[2]
    assert f["rgb"].shape == (3, 3, 4) and torch.allclose(f["rgb"], torch.full((3, 3, 4), 0.5))
    assert f["depth"].shape == (1, 6, 4)
    assert f["labels"].shape == (1, 3, 4)
    # nearest-exact picks source pixel floor((i + 0.5) * scale): rows 1, 3, 5; cols 1, 3, 5, 7
    src = (np.arange(48).reshape(6, 8) % 3)[np.ix_([1, 3, 5], [1, 3, 5, 7])]
    np.testing.assert_array_equal(f["labels"][0].numpy(), src)
    assert set(np.unique(f["labels"].numpy())) <= {0, 1, 2}  # no interpolated label values
    # K from native depth 12x16 to 6x4: row 0 times 4/16, row 1 times 6/12
    K = torch.tensor([[10.0 * 0.25, 0, 7.5 * 0.25], [0, 12.0 * 0.5, 5.5 * 0.5], [0, 0, 1]])
    torch.testing.assert_close(f["intrinsics"], K)
    assert torch.all(f["depth"][torch.isfinite(f["depth"])] == 3.0)


def test_validation_errors_name_the_frame():
    with pytest.raises(ValueError, match="frame 3"):
        ToyDataset(bad_label_frame=3)[3]
    ds = ToyDataset(bad_rgb_frame=2)
    ds[0]
    with pytest.raises(ValueError, match="frame 2"):
        ds[2]
    with pytest.raises((TypeError, ValueError)):
        ToyDataset(rgb_resolution=[4])
    with pytest.raises(ValueError):
        ToyDataset(frame_skip=-1)


def test_config_is_json_serialisable():
    import json

    cfg = ToyDataset(frame_skip=2, rgb_resolution=(3, 4)).config()
    assert json.loads(json.dumps(cfg)) == {"frame_skip": 2, "rgb_resolution": [3, 4], "depth_resolution": None}
