"""Live and recorded views of a mapping run in the rerun viewer (rerun-sdk 0.41).

See ``ovmap/vis/README.md`` for the entity layout and the modes.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ovmap.naming import slug
from ovmap.vis.colors import PCAColorizer, heat_colors, label_palette, log_hit_colors
from ovmap.vis.labels import map_class_names, voxel_labels

log = logging.getLogger("ovmap.vis")

MODES = ("save", "serve", "connect", "spawn")
DEFAULT_CONNECT_URL = "rerun+http://127.0.0.1:9876/proxy"


def has_display() -> bool:
    """True where a native viewer window can open (X11 / Wayland on Linux; always on macOS and Windows)."""
    if sys.platform.startswith(("darwin", "win")):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def viewer_url(web_port: int, grpc_url: str) -> str:
    """The address of a served web viewer that connects itself to ``grpc_url``."""
    return f"http://127.0.0.1:{web_port}/?url={quote(grpc_url, safe='')}"


def check_port_free(port: int, host: str, setting: str) -> None:
    """Raise a clear error when ``port`` cannot be bound (rerun only logs that failure and carries on)."""
    import socket

    if not 0 < int(port) < 65536:
        raise ValueError(f"{setting} must be a port number in 1..65535, got {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, int(port)))
        except OSError as err:
            raise OSError(
                f"port {port} is in use ({err.strerror}): choose another with {setting}=<port>"
            ) from None


def _np(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


class RerunVisualizer:
    """Logs a mapping run to rerun: camera, images, feature colouring, the voxel map and query heat.

    Use :meth:`on_frame` as the ``on_frame`` callback of :func:`ovmap.pipeline.build_map`, then
    :meth:`log_map` for the final map, :meth:`log_queries` for query heat, :meth:`finish` and :meth:`close`.

    Args:
        mode: ``save`` (write ``save_path``), ``serve`` (host a gRPC server on 127.0.0.1:``grpc_port`` and a
            web viewer on ``web_port``; also writes ``save_path`` when set), ``connect`` (stream to a viewer
            at ``connect_url``; also writes ``save_path`` when set) or ``spawn`` (start a native viewer; on a
            machine without a display this falls back to ``save`` with a warning).
        save_path: the ``.rrd`` file; required by ``save`` (and by ``spawn``'s fallback).
        web_port: port of the served web viewer (``serve``).
        grpc_port: port of the gRPC server (``serve``) or of the spawned viewer (``spawn``).
        connect_url: ``rerun+http://host:port/proxy`` of a running viewer (``connect``); None = local default.
        app_id: rerun application id.
        class_names: class table (index 0 = ignore) for label colours; None = from the map or its encoder.
        map_period: log the voxel clouds every ``map_period`` frames (and always in :meth:`log_map`).
        image_period: log the images and feature colouring every ``image_period`` frames.
        max_points: clouds larger than this are decimated (evenly strided) before logging; 0 = never.
        point_radius: point radius in metres; None = half the voxel size.
        open_browser: ``serve``: also open the viewer in the default browser.
    """

    def __init__(
        self,
        mode: str = "save",
        save_path: str | os.PathLike | None = "recording.rrd",
        web_port: int = 9090,
        grpc_port: int = 9876,
        connect_url: str | None = None,
        app_id: str = "ovmap",
        class_names: list[str] | None = None,
        map_period: int = 5,
        image_period: int = 1,
        max_points: int = 1_000_000,
        point_radius: float | None = None,
        open_browser: bool = False,
    ) -> None:
        import rerun as rr

        if mode not in MODES:
            raise ValueError(f"vis.mode must be one of {', '.join(MODES)}, got '{mode}'")
        if map_period < 1 or image_period < 1:
            raise ValueError(f"map_period and image_period must be >= 1, got {map_period}, {image_period}")
        self.rr = rr
        self.requested_mode = mode
        self.save_path = Path(save_path) if save_path else None
        self.web_port = int(web_port)
        self.grpc_port = int(grpc_port)
        self.connect_url = connect_url or DEFAULT_CONNECT_URL
        self.class_names = list(class_names) if class_names else None
        self.map_period = int(map_period)
        self.image_period = int(image_period)
        self.max_points = int(max_points)
        self.point_radius = point_radius
        self.url: str | None = None  # serve: the viewer URL
        self.grpc_url: str | None = None
        self._pca = PCAColorizer()
        self._frames = 0
        self._trajectory: list[np.ndarray] = []
        self._last_time = 0
        self._annotated = False
        self._closed = False
        self._text_cache: dict[str, Any] = {}
        self.rec = rr.RecordingStream(app_id)
        self.mode = self._start(mode, open_browser)
        self.rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
        if self.class_names:
            self._log_annotation(self.class_names)

    # ------------------------------------------------------------------------------------------------ sinks
    def _start(self, mode: str, open_browser: bool) -> str:
        rr = self.rr
        blueprint = self.blueprint()
        if mode == "spawn":
            if not has_display():
                log.warning(
                    "vis.mode=spawn needs a display (DISPLAY/WAYLAND_DISPLAY unset): saving to %s instead; "
                    "use vis.mode=serve to watch in a browser",
                    self.save_path,
                )
                mode = "save"
            else:
                try:
                    self.rec.spawn(port=self.grpc_port, default_blueprint=blueprint)
                    return "spawn"
                except Exception as err:  # noqa: BLE001 - a viewer that cannot start must not stop mapping
                    log.warning(
                        "could not spawn the rerun viewer (%s): saving to %s instead", err, self.save_path
                    )
                    mode = "save"
        sinks: list[Any] = []
        if self.save_path is not None:
            self.save_path.parent.mkdir(parents=True, exist_ok=True)
            sinks.append(rr.FileSink(str(self.save_path)))
        if mode == "save" and not sinks:
            raise ValueError("vis.mode=save needs vis.save_path")
        if mode == "serve":
            check_port_free(self.grpc_port, "127.0.0.1", "vis.grpc_port")
            check_port_free(self.web_port, "0.0.0.0", "vis.web_port")  # where serve_web_viewer listens
            sinks.append(rr.GrpcServerSink(bind_ip="127.0.0.1", port=self.grpc_port))
            self.grpc_url = f"rerun+http://127.0.0.1:{self.grpc_port}/proxy"
        elif mode == "connect":
            sinks.append(rr.GrpcSink(self.connect_url))
            self.grpc_url = self.connect_url
        self.rec.set_sinks(*sinks, default_blueprint=blueprint)
        if mode == "serve":
            # the static web app listens on all interfaces (rerun 0.41 has no bind argument); the data is
            # only on the loopback gRPC server above.
            rr.serve_web_viewer(web_port=self.web_port, open_browser=open_browser, connect_to=self.grpc_url)
            self.url = viewer_url(self.web_port, self.grpc_url)
            log.info("rerun web viewer: %s", self.url)
        return mode

    TABS = (
        "map: RGB",
        "map: features (PCA)",
        "map: labels",
        "map: log2 hits",
        "queries: heat",
        "queries: top",
    )

    def blueprint(self, active_tab: str = "map: RGB") -> Any:
        """Layout: tabs of 3D views (one per voxel colouring, see ``TABS``) beside the camera images."""
        import rerun.blueprint as rrb

        camera = [
            "+ world/pose",
            "+ world/pose/img",
            "+ world/trajectory",
        ]  # not the depth: it would hide the map

        def view3d(name: str, cloud: str) -> Any:
            return rrb.Spatial3DView(name=name, origin="world", contents=[f"+ {cloud}", *camera])

        return rrb.Blueprint(
            rrb.Horizontal(
                rrb.Tabs(
                    view3d("map: RGB", "world/voxel_rgb"),
                    view3d("map: features (PCA)", "world/voxel_feature"),
                    view3d("map: labels", "world/voxel_label"),
                    view3d("map: log2 hits", "world/voxel_log_hit_count"),
                    view3d("queries: heat", "world/queries/**"),
                    view3d("queries: top", "world/query_top/**"),
                    active_tab=self.TABS.index(active_tab),
                ),
                rrb.Grid(
                    rrb.Spatial2DView(name="RGB", origin="world/pose", contents=["+ world/pose/img"]),
                    rrb.Spatial2DView(name="depth", origin="world/pose", contents=["+ world/pose/img_depth"]),
                    rrb.Spatial2DView(
                        name="features (PCA)", origin="world/pose", contents=["+ world/pose/img_feat"]
                    ),
                    rrb.Spatial2DView(
                        name="labels", origin="world/pose", contents=["+ world/pose/img_label"]
                    ),
                ),
                column_shares=[3, 2],
            ),
            collapse_panels=True,
        )

    # ------------------------------------------------------------------------------------------------ logging
    def _log_annotation(self, names: list[str]) -> None:
        rr = self.rr
        palette = label_palette(len(names))
        ctx = [
            rr.AnnotationInfo(id=i, label=name, color=tuple(int(c) for c in palette[i]))
            for i, name in enumerate(names)
        ]
        self.rec.log("world", rr.AnnotationContext(ctx), static=True)
        self._annotated = True

    def _ensure_classes(self, voxel_map: Any) -> None:
        if self.class_names is None:
            self.class_names = map_class_names(voxel_map)
        if self.class_names and not self._annotated:
            self._log_annotation(self.class_names)

    def set_time(self, frame_index: int) -> None:
        """Put subsequent logs at ``frame_index`` on the ``frame`` timeline."""
        self._last_time = int(frame_index)
        self.rec.set_time("frame", sequence=self._last_time)

    def _decimate(self, n: int) -> np.ndarray | slice:
        if self.max_points <= 0 or n <= self.max_points:
            return slice(None)
        return np.linspace(0, n - 1, self.max_points).round().astype(np.int64)

    def on_frame(self, frame: dict[str, Any], values: Tensor, info: dict[str, Any], voxel_map: Any) -> None:
        """The ``build_map`` callback: this frame's camera and images, and the map every ``map_period``."""
        self._ensure_classes(voxel_map)
        self.set_time(int(frame.get("index", self._frames)))
        if not info.get("skipped"):
            self.log_camera(
                frame["pose"], frame["intrinsics"], frame["rgb"].shape[-2:], frame["depth"].shape[-2:]
            )
        if self._frames % self.image_period == 0:
            self.log_images(frame, values, probabilities=voxel_map.mode == "probability")
        if self._frames % self.map_period == 0:
            self.log_map(voxel_map)
        self._frames += 1
        self.rec.log("stats/voxels", self.rr.Scalars(float(len(voxel_map))))

    def show(self, tab: str) -> None:
        """Re-send the layout with one of ``TABS`` active (e.g. "queries: top" once queries are logged)."""
        self.rec.send_blueprint(self.blueprint(active_tab=tab))

    def __call__(self, frame: dict[str, Any], values: Tensor, info: dict[str, Any], voxel_map: Any) -> None:
        self.on_frame(frame, values, info, voxel_map)

    def log_camera(
        self, pose: Tensor, intrinsics: Tensor, rgb_hw: tuple[int, int], depth_hw: tuple[int, int]
    ) -> None:
        """Camera-to-world pose (OpenCV axes) and its pinhole, sized for the RGB image."""
        rr = self.rr
        c2w = _np(pose).astype(np.float64)
        if not np.isfinite(c2w).all():
            return
        K = _np(intrinsics).astype(np.float64).copy()
        (h, w), (dh, dw) = tuple(rgb_hw), tuple(depth_hw)
        K[0] *= w / dw  # intrinsics are for the depth image; the frustum shows the RGB image
        K[1] *= h / dh
        self.rec.log("world/pose", rr.Transform3D(translation=c2w[:3, 3], mat3x3=c2w[:3, :3]))
        self.rec.log(
            "world/pose",
            rr.Pinhole(
                image_from_camera=K,
                resolution=[w, h],
                camera_xyz=rr.ViewCoordinates.RDF,
                image_plane_distance=0.3,
            ),
        )
        self._trajectory.append(c2w[:3, 3].astype(np.float32))
        if len(self._trajectory) >= 2:
            self.rec.log(
                "world/trajectory", rr.LineStrips3D([np.stack(self._trajectory)], colors=[[255, 64, 64]])
            )

    def log_images(
        self, frame: dict[str, Any], values: Tensor | None = None, probabilities: bool = False
    ) -> None:
        """RGB, depth, labels and the feature colouring under ``world/pose`` (all at the RGB resolution)."""
        rr = self.rr
        rgb = frame["rgb"].detach().float().cpu()
        h, w = rgb.shape[-2:]
        self.rec.log(
            "world/pose/img", rr.Image((rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
        )
        depth = frame["depth"].detach().float().cpu()
        if depth.shape[-2:] != (h, w):
            depth = F.interpolate(depth[None], size=(h, w), mode="nearest")[0]
        self.rec.log("world/pose/img_depth", rr.DepthImage(depth[0].numpy(), meter=1.0))
        if frame.get("labels") is not None:
            labels = frame["labels"].detach().cpu().reshape(-1, *frame["labels"].shape[-2:])[0]
            self.rec.log(
                "world/pose/img_label", rr.SegmentationImage(labels.to(torch.int32).numpy().astype(np.uint16))
            )
        if values is not None:
            colors = self.feature_image(values, probabilities)
            if colors.shape[:2] != (h, w):
                t = torch.from_numpy(colors).permute(2, 0, 1)[None].float()
                colors = F.interpolate(t, size=(h, w), mode="nearest")[0].permute(1, 2, 0).byte().numpy()
            self.rec.log("world/pose/img_feat", rr.Image(colors))

    def feature_image(self, values: Tensor, probabilities: bool = False) -> np.ndarray:
        """(C, h, w) features -> (h, w, 3) PCA colours; (K+1, H, W) probabilities -> argmax label colours."""
        values = values.detach().float().cpu()
        if probabilities:
            labels = values[1:].argmax(dim=0) + 1
            labels[values[1:].sum(dim=0) <= 0] = 0
            return label_palette(values.shape[0])[labels.numpy()]
        return self._pca(values.permute(1, 2, 0))

    def log_map(self, voxel_map: Any) -> None:
        """The voxel map as four clouds: RGB, PCA of features, log2 hit count and labels."""
        rr = self.rr
        self._ensure_classes(voxel_map)
        n = len(voxel_map)
        if n == 0:
            return
        sel = self._decimate(n)
        xyz = _np(voxel_map.centers)[sel].astype(np.float32)
        radius = self.point_radius if self.point_radius is not None else voxel_map.voxel_size / 2
        rgb = (_np(voxel_map.rgb)[sel].clip(0, 1) * 255).round().astype(np.uint8)
        self.rec.log("world/voxel_rgb", rr.Points3D(xyz, colors=rgb, radii=radius))
        self.rec.log(
            "world/voxel_feature", rr.Points3D(xyz, colors=self._pca(voxel_map.features[sel]), radii=radius)
        )
        self.rec.log(
            "world/voxel_log_hit_count",
            rr.Points3D(xyz, colors=log_hit_colors(voxel_map.hits[sel]), radii=radius),
        )
        try:
            labels, names = voxel_labels(voxel_map, self.class_names, self._text_cache)
        except ValueError as err:
            log.debug("no voxel labels: %s", err)
            return
        if not self._annotated:
            self._log_annotation(names)
        self.rec.log(
            "world/voxel_label", rr.Points3D(xyz, class_ids=labels[sel].astype(np.uint16), radii=radius)
        )

    def log_queries(
        self, voxel_map: Any, result: Any, by: str = "similarity", top_fraction: float = 0.5
    ) -> list[str]:
        """One heat cloud per query at ``world/queries/<slug>`` (min-max normalised, purple = low, yellow =
        high), and its voxels with a normalised heat >= ``top_fraction`` at ``world/query_top/<slug>``
        (seen from outside, a room's walls and ceiling hide the heat inside; the "queries: top" tab shows only these).

        Args:
            voxel_map: the queried map (for the voxel centres).
            result: its :class:`~ovmap.mapping.voxel_map.QueryResult`.
            by: "similarity" or "probabilities".
            top_fraction: normalised heat threshold of the ``world/query_top`` clouds.

        Returns:
            The ``world/queries/<slug>`` entity paths logged.
        """
        rr = self.rr
        scores = _np(result.similarity if by == "similarity" else result.probabilities)
        sel = self._decimate(scores.shape[1])
        xyz = _np(voxel_map.centers)[sel].astype(np.float32)
        radius = self.point_radius if self.point_radius is not None else voxel_map.voxel_size / 2
        paths = []
        for text, row in zip(result.texts, scores):
            path = f"world/queries/{slug(text, default='query')}"
            colors = heat_colors(row[sel])
            self.rec.log(path, rr.Points3D(xyz, colors=colors, radii=radius))
            lo, hi = float(row.min()), float(row.max())
            top = (row[sel] - lo) >= top_fraction * (hi - lo)
            self.rec.log(
                f"world/query_top/{slug(text, default='query')}",
                rr.Points3D(xyz[top], colors=colors[top], radii=radius),
            )
            paths.append(path)
        return paths

    def log_points(
        self,
        entity: str,
        xyz: np.ndarray | Tensor,
        labels: np.ndarray | Tensor | None = None,
        colors: np.ndarray | None = None,
        radius: float = 0.02,
    ) -> None:
        """A generic cloud, coloured by class ids (through the annotation context) or by ``colors``."""
        rr = self.rr
        xyz = _np(xyz).astype(np.float32)
        sel = self._decimate(len(xyz))
        class_ids = None if labels is None else _np(labels)[sel].astype(np.uint16)
        self.rec.log(
            entity,
            rr.Points3D(
                xyz[sel],
                class_ids=class_ids,
                colors=None if colors is None else np.asarray(colors)[sel],
                radii=radius,
            ),
        )

    def log_scalar(self, entity: str, value: float) -> None:
        """A scalar time series (e.g. ``metrics/miou``)."""
        self.rec.log(entity, self.rr.Scalars(float(value)))

    # ---------------------------------------------------------------------------------------------- lifetime
    def describe(self) -> str:
        """One line saying where the recording goes."""
        if self.mode == "serve":
            extra = f" (and {self.save_path})" if self.save_path else ""
            return f"rerun web viewer: {self.url}{extra}"
        if self.mode == "connect":
            extra = f" (and {self.save_path})" if self.save_path else ""
            return f"rerun recording streamed to {self.connect_url}{extra}"
        if self.mode == "spawn":
            return "rerun recording streamed to the spawned viewer"
        return f"rerun recording: {self.save_path} (open it with: rerun {self.save_path})"

    def finish(self, serve_seconds: float | None = None) -> None:
        """Flush; in ``serve`` mode keep the viewer up for ``serve_seconds`` (None = until Ctrl-C)."""
        self._flush()
        if self.mode != "serve":
            return
        print(f"serving the rerun web viewer at {self.url}", flush=True)
        print(
            "press Ctrl-C to stop" if serve_seconds is None else f"serving for {serve_seconds:g} s",
            flush=True,
        )
        deadline = None if serve_seconds is None else time.monotonic() + float(serve_seconds)
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic())))
        except KeyboardInterrupt:
            print("stopped serving", flush=True)

    def close(self) -> None:
        """Flush and close every sink (finalises the .rrd file; stops the gRPC server)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._flush()
        finally:
            try:
                self.rec.disconnect()
            except Exception as err:  # noqa: BLE001 - closing a viewer connection must not fail the run
                log.warning("rerun: %s", err)

    def _flush(self) -> None:
        try:
            self.rec.flush()
        except Exception as err:  # noqa: BLE001 - e.g. connect mode with no viewer listening
            log.warning(
                "rerun: could not deliver the recording to %s: %s", self.grpc_url or self.save_path, err
            )

    def __enter__(self) -> RerunVisualizer:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
