"""TextRegion: region pooling, views, global-patch filter, mask generator filters and fusion against independent
computations; the encoder with tiny CLIP + SAM v1 checkpoints; ovmap eval end to end."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from _helpers.cli_eval import synthetic_eval
from ovmap.encoders.clip import CLIP
from ovmap.encoders.textregion import (
    RegionMaskGenerator,
    TextRegionEncoder,
    dense_features,
    fuse_masks,
    multires_sum,
    region_tokens,
    remove_global_patches,
    stability_score,
    tile_boxes,
)

from _helpers_tiny import TINY_CLIP, tiny_sam_state_dict


def test_tile_boxes() -> None:
    boxes, grid = tile_boxes(640, 1136, 336)
    assert grid == (1, 3) and boxes == [(0, 0, 640, 379), (0, 379, 640, 758), (0, 757, 640, 1136)]
    assert tile_boxes(480, 640, 336) == ([(0, 0, 480, 640)], (1, 1))
    assert tile_boxes(100, 100, 336)[1] == (1, 1)


def test_multires_sum_hand_made() -> None:
    maps = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 10.0), torch.full((1, 2, 2), 20.0)])
    out = multires_sum(maps, (1, 2))
    assert torch.equal(out[0], torch.tensor([[11.0, 11, 21, 21], [11, 11, 21, 21]]))


def test_region_pooling_vs_per_region_sum() -> None:
    torch.manual_seed(0)
    clip = CLIP(TINY_CLIP).eval()
    values = torch.randn(6, 32)
    masks = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0.5, 1, 1, 0, 0]], dtype=torch.float32)
    out = region_tokens(clip, masks, values)
    block = clip.visual.last_block
    for r in range(2):
        pooled = sum(masks[r, p] * values[p] for p in range(6))  # unnormalised weights
        u = block.attn.out_proj(pooled)  # bias added once
        ref = F.normalize(clip.visual.ln_post(u) @ clip.visual.proj, dim=-1)
        assert torch.allclose(out[r], ref, atol=1e-5)
    # a binary region's token equals the token of its mean up to ln_post's scale invariance only when the bias
    # vanishes: check the region mean when out_proj has no bias
    with torch.no_grad():
        block.attn.out_proj.bias.zero_()
    mean_tok = region_tokens(clip, masks[:1] / masks[:1].sum(), values)
    assert torch.allclose(mean_tok, region_tokens(clip, masks[:1], values), atol=1e-4)


def test_dense_features_mask_weighted_mean() -> None:
    tokens = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    masks = torch.zeros(2, 2, 3)
    masks[0, 0, :2] = 1.0
    masks[1, 0, 1:] = 0.5
    fb = torch.full((2, 2, 3), 7.0)
    out = dense_features(masks, tokens, fb)
    assert torch.allclose(out[:, 0, 0], torch.tensor([1.0, 0.0]))
    assert torch.allclose(out[:, 0, 1], torch.tensor([1 / 1.5, 0.5 / 1.5]))
    assert torch.allclose(out[:, 0, 2], torch.tensor([0.0, 1.0]))
    assert torch.equal(out[:, 1], fb[:, 1])


def test_global_patch_filter_two_regions() -> None:
    # 4 patches: region A = {0, 1}, region B = {2, 3}; patches 0, 2, 3 agree with their regions, patch 1 looks
    # like region B (a "global" patch): it is removed
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.1, 1.0]])
    masks = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1]])
    out = remove_global_patches(masks, v, 0.07)
    vn = F.normalize(v, dim=-1)
    sim = vn @ vn.T
    s = torch.stack([sim[:, :2].mean(1), sim[:, 2:].mean(1)], 1)
    inside = (masks > 0).float().T
    belong = (s * inside).sum(1) / (inside.sum(1) + 1e-9)
    outside = (s * (1 - inside)).sum(1) / ((1 - inside).sum(1) + 1e-9)
    keep = belong - outside >= 0.07
    assert keep.tolist() == [True, False, True, True]
    assert torch.equal(out, masks * keep[None])


def test_stability_and_fusion() -> None:
    logits = torch.tensor([[[2.0, 0.5], [-0.5, -2.0]]])
    assert float(stability_score(logits)) == pytest.approx(1 / 3)
    big = torch.zeros(3, 10, 10)
    big[0, :6, :6] = 2.0  # whole
    big[1, :5, :5] = 2.0  # contained in mask 0 -> fused into it
    big[2, 7:, 7:] = 1.0  # separate
    boxes = torch.tensor([[0, 0, 5, 5], [0, 0, 4, 4], [7, 7, 9, 9]], dtype=torch.float32)
    fused = fuse_masks(big, boxes)
    assert fused.shape == (2, 10, 10)
    assert torch.equal(fused[0], torch.maximum(big[0], big[1])) and torch.equal(fused[1], big[2])
    # containment uses the soft [0, 3] values (Q-R6): at 3.0 the same support gives 50 / 72 < 0.8, no fusion
    big[1, :5, :5] = 3.0
    assert fuse_masks(big, boxes).shape == (3, 10, 10)


def test_mask_generator_filters_with_stub() -> None:
    """A stub predictor: point 0 returns a good whole mask, the rest low-IoU masks; only one region survives."""
    def predict(points: torch.Tensor):
        n = points.shape[0]
        logits = torch.full((n, 3, 32, 32), -5.0)
        iou = torch.full((n, 3), 0.1)
        logits[0, 2, :16, :16] = 5.0
        iou[0, 2] = 0.95
        logits[1, 1, :16, :16] = 5.0  # duplicate of the same region, lower IoU: removed by NMS
        iou[1, 1] = 0.9
        logits[2, 0, :4, :4] = 5.0  # 16 px <= min_size: dropped
        iou[2, 0] = 0.9
        return logits, iou

    gen = RegionMaskGenerator(predict, points_per_side=2, input_size=64)
    assert gen.point_grid().tolist() == [[16.0, 16.0], [48.0, 16.0], [16.0, 48.0], [48.0, 48.0]]
    masks = gen((64, 64))
    assert masks.shape == (1, 64, 64)
    assert float(masks[0, 10, 10]) == 3.0 and float(masks[0, 50, 50]) == 0.0


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("textregion")
    torch.manual_seed(0)
    torch.save(CLIP(TINY_CLIP).state_dict(), folder / "clip.pt")
    torch.save(tiny_sam_state_dict(image_size=256), folder / "sam.pth")
    return dict(clip_checkpoint=str(folder / "clip.pt"), mask_model="sam", mask_checkpoint=str(folder / "sam.pth"),
                clip_heads=4, clip_text_heads=4, sam_heads=2, sam_decoder_heads=2, crop_size=32, points_per_side=4,
                pred_iou_thresh=-10.0, stability_score_thresh=0.0, min_size=0)


def test_encoder_tiny(tiny_files) -> None:
    enc = TextRegionEncoder(**tiny_files)
    torch.manual_seed(1)
    rgb = torch.rand(1, 3, 40, 72)
    parts = enc.encode_parts(rgb)
    assert parts["fallback"].shape == (16, 4, 8)  # 1 x 2 tiles of a 4 x 4 grid
    assert parts["masks"].shape[1:] == (40, 72) and parts["tokens"].shape[0] == parts["masks"].shape[0]
    feats = enc.encode_image(rgb)
    assert feats.shape == (1, 16, 10, 18) and torch.isfinite(feats).all()
    text = enc.encode_text(["chair", "table"])
    for space in ("cosine", "textregion"):
        enc.prob_space = space
        probs, labels = enc.predict(rgb, text)
        assert probs.shape == (1, 3, 40, 72) and torch.allclose(probs[:, 1:].sum(1), torch.ones(1, 40, 72), atol=1e-5)
    with pytest.raises(ValueError, match="not a SAM 2.1 checkpoint"):  # a SAM v1 file given to mask_model=sam2
        TextRegionEncoder(**{**tiny_files, "mask_model": "sam2"})


def test_ovmap_eval_end_to_end(tiny_files, tmp_path) -> None:
    args = [f"encoder.{k}={v}" for k, v in tiny_files.items()]
    doc = synthetic_eval(tmp_path, "textregion", *args)
    assert doc["scenes"]["synthetic_seed0"]["num_map_voxels"] > 0


def test_mask_ranking_on_ties_keeps_the_reference_order() -> None:
    """48 disjoint masks with one predicted IoU (all tied): NMS keeps all of them in the order of torchvision's CPU
    kernel (``scores.sort(0, descending=True)``, not stable, golden README R2), and the ranking whole > part >
    sub-part is a stable sort of that order (Python's ``sorted``, as the reference)."""
    def predict(points: torch.Tensor):
        n = points.shape[0]
        logits = torch.full((n, 3, 128, 128), -5.0)
        for c in range(3 * n):
            i, j = divmod(c, 8)
            logits[c // 3, c % 3, 16 * i:16 * i + 12, 16 * j:16 * j + 12] = 5.0
        return logits, torch.full((n, 3), 0.9)

    gen = RegionMaskGenerator(predict, points_per_side=4, min_size=100, input_size=128)
    debug: dict = {}
    masks = gen((128, 128), debug)
    expected_nms = torch.sort(torch.full((48,), 0.9), 0, descending=True)[1].tolist()
    assert debug["nms_order"].tolist() == expected_nms
    assert expected_nms != list(range(48))  # the tie order is not the index order
    expected_rank = [c for kind in (2, 1, 0) for c in expected_nms if c % 3 == kind]
    assert debug["ranked"].tolist() == expected_rank
    assert debug["stage"].flatten().tolist() == [4] * 48
    assert debug["fused_group"].tolist() == list(range(48)) and masks.shape == (48, 128, 128)
    for r, c in enumerate(expected_rank):  # region r is the r-th ranked candidate's square
        i, j = divmod(c, 8)
        assert float(masks[r, 16 * i + 6, 16 * j + 6]) == 3.0 and float(masks[r, 16 * i + 14, 16 * j + 14]) == 0.0


def test_value_pooling_option_from_the_config(tiny_files) -> None:
    with pytest.raises(ValueError, match="value_pooling must be 'raw' or 'normalized'"):
        TextRegionEncoder(**tiny_files, value_pooling="mean")


def test_value_pooling_reachable_from_hydra(tiny_files) -> None:
    """`encoder=textregion encoder.value_pooling=normalized` on the command line reaches the constructor."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from ovmap.pipeline import make_encoder

    overrides = ["encoder=textregion", "encoder.value_pooling=normalized",
                 *[f"encoder.{k}={v}" for k, v in tiny_files.items()]]
    with initialize_config_module(version_base="1.3", config_module="ovmap.configs"):
        cfg = compose("eval", overrides=overrides)
    enc = make_encoder("textregion", OmegaConf.to_container(cfg.encoder), None, torch.device("cpu"))
    assert enc.value_pooling == "normalized"
