"""ROS bag reader: bags written by ``write_rosbag`` from the synthetic scene (ROS 1, ROS 2 with TF, ROS 2 with an
odometry topic), TF interpolation and the optical-frame convention with known answers, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import sources

pytest.importorskip("rosbags", reason='needs the "ros" extra (pip install -e ".[ros]")')

from ovmap.datasets import build_dataset
from ovmap.datasets.rosbag import R_LINK_OPTICAL, TFBuffer, check_rosbag, write_rosbag


def _check_frames(ds) -> None:
    assert len(ds) == sources.NUM_FRAMES and ds.dropped == {"no_depth": 0, "no_pose": 0}
    for a, b in zip(ds, sources.scene_frames()):
        np.testing.assert_allclose(a["pose"].numpy(), b["pose"].numpy(), atol=1e-5)
        np.testing.assert_array_equal(a["intrinsics"].numpy(), b["intrinsics"].numpy())


@pytest.mark.parametrize(
    "kind",
    [
        dict(ros_version=1, poses="tf", depth_encoding="16UC1", rgb_encoding="bgr8"),
        dict(ros_version=2, poses="tf", depth_encoding="32FC1", rgb_encoding="rgb8", depth_offset_s=0.005),
        dict(ros_version=2, poses="odometry", depth_encoding="16UC1", rgb_encoding="png", storage="mcap"),
    ],
    ids=["ros1-tf", "ros2-tf", "ros2-odometry-mcap"],
)
def test_bag_map_equals_folder_map(tmp_path, kind):
    bag = write_rosbag(
        sources.scene(), tmp_path / ("scene.bag" if kind["ros_version"] == 1 else "scene"), **kind
    )
    opts = {"pose_topic": "/odom"} if kind["poses"] == "odometry" else {}
    ds = build_dataset("rosbag", path=str(bag), world_frame="map", **opts)
    _check_frames(ds)
    assert ds.camera_frame == "camera_color_optical_frame"  # from the CameraInfo header
    f = ds[0]
    ref = sources.scene_frames()[0]
    assert (f["rgb"] - ref["rgb"]).abs().max() <= 0.5 / 255 + 1e-6  # lossless colour (rgb8 / bgr8 / png)
    np.testing.assert_allclose(np.diff(ds.timestamps), 1 / 30.0, atol=1e-6)
    sources.assert_same_map(sources.map_of(ds), sources.reference_map(), min_key_fraction=0.995)


def test_odometry_with_explicit_extrinsic_and_drop_counts(tmp_path):
    bag = write_rosbag(sources.scene(), tmp_path / "odo", poses="odometry", rate_hz=10.0, depth_offset_s=0.03)
    # depth 30 ms after colour (next colour 100 ms later): beyond the 20 ms default every frame is dropped
    with pytest.raises(ValueError, match="6 without depth"):
        build_dataset("rosbag", path=str(bag), pose_topic="/odom")
    ds_tf = build_dataset("rosbag", path=str(bag), pose_topic="/odom", max_time_diff=0.04)
    _check_frames(ds_tf)
    # the same extrinsic written out by hand: base_link -> camera_link (yaw 5 deg, 10 cm ahead, 20 cm up) -> optical
    yaw = np.deg2rad(5.0)
    T = np.eye(4)
    T[:3, :3] = (
        np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]]) @ R_LINK_OPTICAL
    )
    T[:3, 3] = [0.1, 0.0, 0.2]
    ds_ex = build_dataset("rosbag", path=str(bag), pose_topic="/odom", max_time_diff=0.04,
                          camera_extrinsic=T.reshape(-1).tolist())  # fmt: skip
    np.testing.assert_allclose(ds_ex.poses(), ds_tf.poses(), atol=1e-9)


def test_frames_without_pose_are_counted(tmp_path):
    bag = write_rosbag(sources.scene(), tmp_path / "tf")
    with pytest.raises(ValueError, match="6 without a pose.*world_frame .nowhere. is not in the TF tree"):
        build_dataset("rosbag", path=str(bag), world_frame="nowhere")
    # pose samples every 1/60 s: a 10 ms gap limit keeps only frames whose stamp has an exact sample (all of them)
    assert len(build_dataset("rosbag", path=str(bag), max_pose_gap=0.01)) == sources.NUM_FRAMES


def test_optical_frame_convention():
    # camera_link looks along +x of the world (identity); its optical frame must look along +x with y down (-z world)
    R = R_LINK_OPTICAL
    np.testing.assert_array_equal(R @ [0, 0, 1], [1, 0, 0])  # optical z (forward) = link x (forward)
    np.testing.assert_array_equal(R @ [1, 0, 0], [0, -1, 0])  # optical x (right) = link -y (left is +y)
    np.testing.assert_array_equal(R @ [0, 1, 0], [0, 0, -1])  # optical y (down) = link -z (up is +z)


def test_tf_buffer_interpolates_and_composes():
    tf = TFBuffer(max_gap_ns=10)

    def rz(deg, x=0.0):
        a = np.deg2rad(deg)
        T = np.eye(4)
        T[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
        T[0, 3] = x
        return T

    tf.add("/map", "odom", 0, rz(0, 1.0), static=True)
    tf.add("odom", "base", 0, rz(0, 0.0), static=False)
    tf.add("odom", "base", 10, rz(90, 2.0), static=False)
    tf.add("base", "cam", 0, rz(0, 0.5), static=True)
    got = tf.lookup(
        "map", "cam", 5
    )  # base at 45 degrees, x = 1 (+1 static); cam 0.5 along the rotated x axis
    want = rz(0, 1.0) @ rz(45, 1.0) @ rz(0, 0.5)
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(tf.lookup("cam", "map", 5), np.linalg.inv(want), atol=1e-12)
    assert tf.lookup("map", "cam", 11) is None  # no extrapolation
    assert tf.lookup("map", "elsewhere", 5) is None


def test_missing_topic_and_check_data(tmp_path):
    bag = write_rosbag(sources.scene(), tmp_path / "b.bag", ros_version=1)
    with pytest.raises(
        ValueError, match=r"no rgb topic '/nope'.*/camera/color/image_raw \(sensor_msgs/msg/Image\)"
    ):
        build_dataset("rosbag", path=str(bag), rgb_topic="/nope")
    ok, text = check_rosbag(bag)
    assert ok, text
    assert "/camera/color/image_raw" in text and "30.00 Hz" in text and "6 associated" in text
    ok, text = check_rosbag(bag, depth_topic="/depth", pose_topic="/odom")
    assert not ok and "depth_topic '/depth' is not in the bag" in text and "pose_topic '/odom'" in text


def test_plumb_bob_undistortion_against_the_model(tmp_path, caplog):
    k1 = -0.2
    bag = write_rosbag(sources.scene(), tmp_path / "dist", distortion=[k1, 0, 0, 0, 0])
    raw = build_dataset("rosbag", path=str(bag), undistort=False)[0]["depth"][0].numpy()
    assert "non-zero plumb_bob distortion" in caplog.text
    und = build_dataset("rosbag", path=str(bag))[0]["depth"][0].numpy()
    # naive model: undistorted pixel (u, v) takes the raw pixel at the distorted position (nearest)
    K = sources.scene_frames()[0]["intrinsics"].double().numpy()
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    h, w = raw.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = (u - cx) / fx, (v - cy) / fy
    r = 1 + k1 * (x * x + y * y)
    ud, vd = np.rint(fx * x * r + cx).astype(int), np.rint(fy * y * r + cy).astype(int)
    inside = (ud >= 0) & (ud < w) & (vd >= 0) & (vd < h)
    want = np.full((h, w), np.nan)
    want[inside] = raw[vd[inside], ud[inside]]
    same = (want == und) | (np.isnan(want) & np.isnan(und))
    assert same.mean() >= 0.999, same.mean()  # only pixels at exact rounding ties could differ
    assert not np.array_equal(np.nan_to_num(raw), np.nan_to_num(und))


def test_missing_extra_is_one_line_naming_it(monkeypatch, tmp_path):
    import sys

    from ovmap.datasets.stamped import MissingExtraError

    monkeypatch.setitem(sys.modules, "rosbags.highlevel", None)  # import fails as if not installed
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[ros\]"') as e:
        build_dataset("rosbag", path=str(tmp_path))
    assert isinstance(e.value, RuntimeError)  # the CLI prints RuntimeErrors as one line


def test_check_data_command(tmp_path, capsys):
    from omegaconf import OmegaConf

    from ovmap.commands.check_data import run_check_data

    bag = write_rosbag(sources.scene(), tmp_path / "b.bag", ros_version=1)
    run_check_data(OmegaConf.create({"dataset": {"name": "rosbag", "path": str(bag), "scene": None}}))
    assert "missing: nothing" in capsys.readouterr().out
    cfg = {"dataset": {"name": "rosbag", "path": str(bag), "scene": None, "info_topic": "/info"}}
    with pytest.raises(ValueError, match="check-data found problems"):
        run_check_data(OmegaConf.create(cfg))
    assert "info_topic '/info' is not in the bag" in capsys.readouterr().out
