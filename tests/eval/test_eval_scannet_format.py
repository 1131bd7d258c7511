"""`ovmap eval` on a ScanNet-format export of the synthetic room: a real loader, lifted GT, one scene picked.

The synthetic frames are written in the SensReader layout (colour JPEG, depth in mm, pose and intrinsic text
files, raw label-filt ids mapped to NYU40 through a scannetv2-labels.combined.tsv), so the whole chain
dataset loader -> oracle -> map -> lifted GT -> kNN -> metrics runs on the on-disk format users have.
"""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from _helpers import naive_eval

from ovmap.datasets import SyntheticScene, load_label_set
from ovmap.datasets.scannet import ScanNetDataset
from ovmap.encoders.oracle import OracleEncoder

# synthetic class -> NYU40 name (plant -> otherprop, which the ScanNet protocol ignores)
TO_NYU40 = {"wall": "wall", "floor": "floor", "ceiling": "ceiling", "table": "table", "chair": "chair",
            "sofa": "sofa", "bed": "bed", "lamp": "lamp", "cabinet": "cabinet", "monitor": "television",
            "plant": "otherprop", "shelf": "shelves", "rug": "floor mat", "door": "door", "window": "window"}


def write_scannet_export(scene: SyntheticScene, root, name: str = "scene0011_00") -> None:
    nyu = load_label_set("nyu40")
    rows = []
    for cid, cname in enumerate(scene.class_names[1:], start=1):
        nyu_name = TO_NYU40[cname]
        rows.append((100 + cid, nyu.index(nyu_name) + 1, nyu_name))  # raw id 100+c -> nyu40 id
    s = root / name
    for sub in ("color", "depth", "pose", "intrinsic"):
        (s / sub).mkdir(parents=True, exist_ok=True)
    labels_dir = s / f"{name}_2d-label-filt" / "label-filt"
    labels_dir.mkdir(parents=True)
    for i in range(len(scene)):
        f = scene[i]
        rgb = (f["rgb"].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
        cv2.imwrite(str(s / "color" / f"{i}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        depth = np.nan_to_num(f["depth"][0].numpy() * 1000.0, nan=0.0).round().astype(np.uint16)
        cv2.imwrite(str(s / "depth" / f"{i}.png"), depth)
        np.savetxt(s / "pose" / f"{i}.txt", f["pose"].numpy())
        raw = np.where(f["labels"][0].numpy() > 0, f["labels"][0].numpy() + 100, 0).astype(np.uint16)
        cv2.imwrite(str(labels_dir / f"{i}.png"), raw)
        if i == 0:
            K4 = np.eye(4)
            K4[:3, :3] = f["intrinsics"].numpy()
            np.savetxt(s / "intrinsic" / "intrinsic_depth.txt", K4)
    lines = ["id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyuClass\tnyu40class"]
    lines += [f"{raw}\t{n}\t{n}\t1\t{nid}\t0\t{n}\t{n}" for raw, nid, n in rows]
    (root / "scannetv2-labels.combined.tsv").write_text("\n".join(lines) + "\n")


@pytest.mark.slow  # ~1 min per mode: the naive metric recomputation is pure Python
@pytest.mark.parametrize("mode", ["probability", "feature"])
def test_eval_on_scannet_layout_with_lifted_gt(tmp_path, mode):
    write_scannet_export(SyntheticScene(preset="test", num_frames=8), tmp_path / "scannet")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "ovmap", "eval", "dataset=scannet", f"dataset.path={tmp_path / 'scannet'}",
         "dataset.scene=scene0011_00", f"mapping.mode={mode}", "device=cpu", "progress=false",
         f"cache_dir={tmp_path / 'cache'}",
         "eval.independent_threshold=null", f"out_dir={out}"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "metrics.json").read_text())
    assert list(doc["scenes"]) == ["scene0011_00"]  # dataset.scene picks one scene out of the protocol list
    scene = doc["scenes"]["scene0011_00"]
    assert doc["scene_info"]["scene0011_00"]["gt_source"] == "lifted"
    assert scene["num_gt_voxels_total"] == scene["num_map_voxels"]
    # exact metrics: a naive recomputation from the map's per-voxel class frequencies (tests/_helpers)
    dataset = ScanNetDataset(tmp_path / "scannet", scene="scene0011_00")
    encoder = OracleEncoder(list(dataset.class_names)) if mode == "feature" else None
    want = naive_eval.oracle_metrics(dataset, naive_eval.cached_map(tmp_path / "cache", "scene0011_00"), encoder,
                                     "lifted", mode)
    assert scene["num_gt_voxels_total"] == want["num_gt_voxels_total"]
    for key in ("miou", "fmiou", "acc"):
        assert scene[key] == pytest.approx(want[key], abs=1e-12), key
    assert want["miou"] > 0.5
    present = scene["per_class_iou"]
    assert "otherprop" not in present  # the protocol ignores other* classes
    assert {"wall", "floor", "chair", "bed"} <= set(present)
