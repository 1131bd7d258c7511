"""Back-projection and projection against hand-computed / numpy answers.

Voxel indices and packed keys are tested where they live: tests/test_voxel_keys.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovmap.mapping.geometry import backproject, world_points_to_depth_image

NAN, INF = float("nan"), float("inf")
# fx = 2, fy = 4, cx = 1, cy = 0.5
K = torch.tensor([[2.0, 0.0, 1.0], [0.0, 4.0, 0.5], [0.0, 0.0, 1.0]])
# 2 x 3 depth: valid pixels (u=0,v=0,d=1), (u=1,v=0,d=2), (u=1,v=1,d=4)
DEPTH = torch.tensor([[1.0, 2.0, 0.0], [NAN, 4.0, INF]]).reshape(1, 1, 2, 3)
# hand-computed camera points d * ((u - cx) / fx, (v - cy) / fy, 1)
P_CAM = [[-0.5, -0.125, 1.0], [0.0, -0.25, 2.0], [0.0, 0.5, 4.0]]
PIX = [0, 1, 4]


def _pose_rz90_t123() -> torch.Tensor:
    """90 degrees about z, then translate by (1, 2, 3): p_w = (-y + 1, x + 2, z + 3)."""
    return torch.tensor(
        [[0.0, -1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 1.0, 3.0], [0.0, 0.0, 0.0, 1.0]]
    )


def test_backproject_identity_pose(device):
    xyz, pix = backproject(DEPTH.to(device), K.to(device), torch.eye(4, device=device)[None])
    assert xyz.dtype == torch.float32 and pix.dtype == torch.int64
    assert xyz.device.type == device.type
    np.testing.assert_allclose(xyz.cpu().numpy(), np.array(P_CAM), atol=1e-6)
    assert pix.cpu().tolist() == PIX


def test_backproject_rotated_translated_pose():
    xyz, pix = backproject(DEPTH, K, _pose_rz90_t123()[None])
    expected = [[1.125, 1.5, 4.0], [1.25, 2.0, 5.0], [0.5, 2.0, 7.0]]
    np.testing.assert_allclose(xyz.numpy(), np.array(expected), atol=1e-6)
    assert pix.tolist() == PIX


def test_backproject_min_max_depth():
    xyz, pix = backproject(DEPTH, K, torch.eye(4)[None], min_depth=1.5, max_depth=3.0)
    assert pix.tolist() == [1]
    np.testing.assert_allclose(xyz.numpy(), np.array([P_CAM[1]]), atol=1e-6)
    # bounds are inclusive
    _, pix = backproject(DEPTH, K, torch.eye(4)[None], min_depth=2.0, max_depth=4.0)
    assert pix.tolist() == [1, 4]


def test_backproject_all_invalid():
    depth = torch.tensor([[0.0, -1.0, NAN], [INF, -INF, 0.0]]).reshape(1, 1, 2, 3)
    xyz, pix = backproject(depth, K, torch.eye(4)[None])
    assert xyz.shape == (0, 3) and pix.shape == (0,)


def test_backproject_batch_of_two_per_image_intrinsics():
    depth = torch.cat([DEPTH, DEPTH], dim=0)
    K2 = K.clone()
    K2[0, 0] = 4.0  # fx = 4 in the second image: x halves
    poses = torch.stack([torch.eye(4), _pose_rz90_t123()])
    xyz, pix = backproject(depth, torch.stack([K, K2]), poses)
    assert pix.tolist() == PIX + [6 + p for p in PIX]
    second_cam = [[-0.25, -0.125, 1.0], [0.0, -0.25, 2.0], [0.0, 0.5, 4.0]]
    second_world = [[-y + 1, x + 2, z + 3] for x, y, z in second_cam]
    np.testing.assert_allclose(xyz.numpy(), np.array(P_CAM + second_world), atol=1e-6)


def test_backproject_shape_errors():
    with pytest.raises(ValueError, match="depth"):
        backproject(torch.ones(2, 3), K, torch.eye(4)[None])
    with pytest.raises(ValueError, match="pose_c2w"):
        backproject(DEPTH, K, torch.eye(4))
    with pytest.raises(ValueError, match="intrinsics"):
        backproject(DEPTH, torch.eye(4), torch.eye(4)[None])


def _rotation(axis: list[float], angle: float) -> torch.Tensor:
    a = torch.tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    skew = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]], dtype=torch.float64)
    return torch.linalg.matrix_exp(angle * skew)


def test_projection_round_trip_on_plane():
    H, W = 12, 16
    Kp = torch.tensor([[20.0, 0.0, 7.5], [0.0, 20.0, 5.5], [0.0, 0.0, 1.0]])
    v, u = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    depth = (2.0 + 0.05 * u + 0.02 * v).float()  # a tilted plane in the camera frame
    depth[3, 4] = NAN
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = _rotation([0.3, -1.0, 0.2], 0.7)
    pose[:3, 3] = torch.tensor([0.5, -1.0, 2.0])
    xyz, _ = backproject(depth[None, None], Kp, pose.float()[None])
    back = world_points_to_depth_image(xyz, Kp, pose, H, W)
    assert back.shape == (1, H, W)
    assert torch.isnan(back[0, 3, 4])
    mask = ~torch.isnan(depth)
    np.testing.assert_allclose(back[0][mask].numpy(), depth[mask].numpy(), rtol=1e-5)


def test_world_points_to_depth_image_keeps_min_and_drops_behind():
    Kp = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    pts = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 2.0], [0.0, 0.0, -1.0], [10.0, 0.0, 1.0]])
    out = world_points_to_depth_image(pts, Kp, torch.eye(4), 3, 3)
    assert out[0, 1, 1].item() == 2.0
    assert int(torch.isnan(out).sum()) == 8
