"""The built-in synthetic scene: a procedural, seeded indoor room rendered with open3d ray casting.

No downloads: walls, floor, ceiling and 12 object classes built from boxes, cylinders and spheres are placed from a
seed without overlaps; a camera circles the room on a smooth ellipse, looking inwards and slightly down. Every frame
has shaded, textured RGB, z-depth, per-pixel class ids, the camera-to-world pose and K; :meth:`gt_points` samples the
surfaces densely with class ids. open3d is imported lazily, only when the first frame or GT point set is needed.

Typical usage example:

    >>> from ovmap.datasets import SyntheticScene
    >>> ds = SyntheticScene(preset="test", seed=0)  # doctest: +SKIP
    >>> f = ds[0]; f["labels"].unique()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ovmap.datasets.base import DATASETS, PosedRGBDDataset

logger = logging.getLogger(__name__)

CLASS_NAMES: list[str] = [
    "ignore", "wall", "floor", "ceiling", "table", "chair", "sofa", "bed", "lamp", "cabinet", "monitor", "plant",
    "shelf", "rug", "door", "window",
]  # fmt: skip
CLASS_ID: dict[str, int] = {n: i for i, n in enumerate(CLASS_NAMES)}

VISIBILITY_VIEWPOINTS = 128  # free-space viewpoints deciding which GT surface samples are observable

# Base albedo per class id (RGB in [0, 1]); shading and 3D texture noise modulate it.
CLASS_COLORS = np.array(
    [
        [0.00, 0.00, 0.00],  # ignore
        [0.80, 0.78, 0.72],  # wall
        [0.55, 0.40, 0.28],  # floor
        [0.92, 0.92, 0.90],  # ceiling
        [0.60, 0.42, 0.25],  # table
        [0.75, 0.20, 0.15],  # chair
        [0.25, 0.35, 0.60],  # sofa
        [0.85, 0.80, 0.60],  # bed
        [0.95, 0.85, 0.40],  # lamp
        [0.45, 0.30, 0.20],  # cabinet
        [0.12, 0.12, 0.14],  # monitor
        [0.20, 0.60, 0.22],  # plant
        [0.70, 0.60, 0.45],  # shelf
        [0.60, 0.15, 0.40],  # rug
        [0.50, 0.32, 0.18],  # door
        [0.55, 0.75, 0.90],  # window
    ],
    dtype=np.float32,
)

PRESETS: dict[str, dict[str, Any]] = {
    # A demo-sized room: 72 frames, one full loop at 5 degrees per frame.
    "demo": {"num_frames": 72, "height": 240, "width": 320, "room_size": (6.0, 5.0, 2.8), "gt_points_per_m2": 4000.0},
    # Small and fast for tests; same room and layout as "demo" for a given seed.
    "test": {"num_frames": 14, "height": 96, "width": 128, "room_size": (6.0, 5.0, 2.8), "gt_points_per_m2": 1500.0},
}

HFOV_FX_FACTOR = 0.65  # fx = fy = 0.65 * W: a 75.1 degree horizontal field of view
WALL_BAND = 1.0  # depth (m) of the strip along the walls that holds wall-standing objects
CAM_MARGIN = 0.3  # horizontal clearance (m) between the camera path and wall-object footprints
CHAIR_GRID = 0.05  # the chair is snapped to this grid so its thin parts do not straddle 5 cm voxel faces

Mesh = tuple[np.ndarray, np.ndarray]  # (V, 3) float64 vertices, (T, 3) int64 triangles


# --------------------------------------------------------------------------------------------- mesh primitives
def _box(lo: Any, hi: Any, bottom: bool = True) -> Mesh:
    """Axis-aligned box between corners ``lo`` and ``hi``; ``bottom=False`` drops the (hidden) bottom face."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    v = np.array([[x, y, z] for z in (lo[2], hi[2]) for y in (lo[1], hi[1]) for x in (lo[0], hi[0])])
    faces = [
        (0, 2, 3, 1),  # bottom (z = lo)
        (4, 5, 7, 6),  # top
        (0, 1, 5, 4),  # y = lo
        (2, 6, 7, 3),  # y = hi
        (0, 4, 6, 2),  # x = lo
        (1, 3, 7, 5),  # x = hi
    ]
    if not bottom:
        faces = faces[1:]
    tris = [t for a, b, c, d in faces for t in ((a, b, c), (a, c, d))]
    return v, np.array(tris, dtype=np.int64)


def _quad(p0: Any, p1: Any, p2: Any, p3: Any) -> Mesh:
    return np.array([p0, p1, p2, p3], float), np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int64)


def _cylinder(center_xy: Any, radius: float, z0: float, z1: float, n: int = 24, bottom: bool = False) -> Mesh:
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = np.stack([center_xy[0] + radius * np.cos(ang), center_xy[1] + radius * np.sin(ang)], 1)
    v = np.concatenate(
        [np.c_[ring, np.full(n, z0)], np.c_[ring, np.full(n, z1)], [[center_xy[0], center_xy[1], z1]],
         [[center_xy[0], center_xy[1], z0]]]
    )  # fmt: skip
    i = np.arange(n)
    j = (i + 1) % n
    tris = [np.stack([i, j, n + j], 1), np.stack([i, n + j, n + i], 1), np.stack([n + i, n + j, np.full(n, 2 * n)], 1)]
    if bottom:
        tris.append(np.stack([j, i, np.full(n, 2 * n + 1)], 1))
    return v, np.concatenate(tris).astype(np.int64)


def _sphere(center: Any, radius: float, n_lat: int = 12, n_lon: int = 24) -> Mesh:
    lat = np.linspace(0, np.pi, n_lat + 1)[1:-1]
    lon = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    ring = np.stack([np.sin(la) * np.cos(lo), np.sin(la) * np.sin(lo), np.cos(la)], -1).reshape(-1, 3)
    v = np.concatenate([[[0, 0, 1]], ring, [[0, 0, -1]]]) * radius + np.asarray(center, float)
    tris = []
    last = len(v) - 1
    for b in range(n_lon):
        c = (b + 1) % n_lon
        tris.append((0, 1 + b, 1 + c))
        tris.append((last, 1 + (n_lat - 2) * n_lon + c, 1 + (n_lat - 2) * n_lon + b))
        for a in range(n_lat - 2):
            p, q = 1 + a * n_lon, 1 + (a + 1) * n_lon
            tris += [(p + b, q + b, q + c), (p + b, q + c, p + c)]
    return v, np.array(tris, dtype=np.int64)


# ------------------------------------------------------------------------------- objects in a local frame
# Local frame: footprint centred at the origin, x in [-w/2, w/2], y in [-d/2, d/2], the back at +y (towards the wall),
# the front facing -y; z up from the floor. Each builder returns a list of meshes.
def _table(w: float, d: float) -> list[Mesh]:
    top_h, leg = 0.75, 0.05
    parts = [_box((-w / 2, -d / 2, top_h - 0.04), (w / 2, d / 2, top_h))]
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx, cy = sx * (w / 2 - 0.06), sy * (d / 2 - 0.06)
            parts.append(_box((cx - leg / 2, cy - leg / 2, 0), (cx + leg / 2, cy + leg / 2, top_h - 0.04), False))
    return parts


def _monitor(x: float, y: float) -> list[Mesh]:
    z = 0.75
    return [
        _box((x - 0.1, y - 0.07, z), (x + 0.1, y + 0.07, z + 0.015), False),
        _box((x - 0.025, y - 0.02, z + 0.015), (x + 0.025, y + 0.02, z + 0.12), False),
        _box((x - 0.28, y - 0.045, z + 0.09), (x + 0.28, y - 0.015, z + 0.43)),
    ]


def _chair(w: float, d: float) -> list[Mesh]:
    # Grid-aligned: with the footprint corner on the 5 cm grid, legs (4 cm) and back (4 cm) sit inside one cell
    # and the 3 cm seat inside one 5 cm layer.
    seat0, seat1, leg = 0.415, 0.445, 0.04
    parts = [_box((-0.24, -0.24, seat0), (0.24, 0.24, seat1))]
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx, cy = sx * 0.225, sy * 0.225
            parts.append(_box((cx - leg / 2, cy - leg / 2, 0), (cx + leg / 2, cy + leg / 2, seat0), False))
    parts.append(_box((-0.23, 0.205, seat1), (0.23, 0.245, 0.92)))
    return parts


def _sofa(w: float, d: float) -> list[Mesh]:
    return [
        _box((-w / 2, -d / 2, 0), (w / 2, d / 2, 0.42), False),
        _box((-w / 2, d / 2 - 0.22, 0.42), (w / 2, d / 2, 0.85)),
        _box((-w / 2, -d / 2, 0.42), (-w / 2 + 0.16, d / 2 - 0.22, 0.62)),
        _box((w / 2 - 0.16, -d / 2, 0.42), (w / 2, d / 2 - 0.22, 0.62)),
    ]


def _bed(w: float, d: float) -> list[Mesh]:
    return [
        _box((-w / 2 + 0.06, -d / 2, 0), (w / 2, d / 2, 0.3), False),
        _box((-w / 2 + 0.08, -d / 2 + 0.03, 0.3), (w / 2 - 0.03, d / 2 - 0.03, 0.52)),
        _box((-w / 2, -d / 2, 0), (-w / 2 + 0.06, d / 2, 0.95), False),
    ]


def _lamp(w: float, d: float) -> list[Mesh]:
    return [
        _cylinder((0, 0), 0.15, 0.0, 0.03),
        _cylinder((0, 0), 0.025, 0.03, 1.35),
        _cylinder((0, 0), 0.19, 1.35, 1.62, bottom=True),
    ]


def _cabinet(w: float, d: float) -> list[Mesh]:
    return [
        _box((-w / 2, -d / 2, 0), (w / 2, d / 2, 1.0), False),
        _box((-0.1, -d / 2 - 0.02, 0.6), (-0.03, -d / 2, 0.65)),
        _box((0.03, -d / 2 - 0.02, 0.6), (0.1, -d / 2, 0.65)),
    ]


def _shelf(w: float, d: float) -> list[Mesh]:
    h, t = 1.8, 0.03
    parts = [
        _box((-w / 2, -d / 2, 0), (-w / 2 + t, d / 2, h), False),
        _box((w / 2 - t, -d / 2, 0), (w / 2, d / 2, h), False),
        _box((-w / 2 + t, d / 2 - 0.02, 0), (w / 2 - t, d / 2, h), False),
    ]
    for z in np.linspace(0.05, h - t, 5):
        parts.append(_box((-w / 2 + t, -d / 2, z), (w / 2 - t, d / 2 - 0.02, z + t)))
    return parts


def _plant(w: float, d: float) -> list[Mesh]:
    return [_cylinder((0, 0), 0.16, 0.0, 0.38), _sphere((0, 0, 0.68), 0.3)]


def _rug(w: float, d: float) -> list[Mesh]:
    return [_box((-w / 2, -d / 2, 0), (w / 2, d / 2, 0.012), False)]


def _door(w: float, d: float) -> list[Mesh]:
    # footprint depth includes a clearance zone; the leaf itself is 4 cm thick against the wall (+y)
    return [_box((-0.45, d / 2 - 0.04, 0), (0.45, d / 2, 2.05), False)]


def _window(w: float, d: float) -> list[Mesh]:
    return [_box((-0.6, d / 2 - 0.03, 0.95), (0.6, d / 2, 2.05))]


@dataclass
class _Spec:
    name: str
    w: float
    d: float
    build: Callable[[float, float], list[Mesh]]
    wall_gap: float = 0.02


WALL_OBJECTS = [
    _Spec("bed", 1.9, 0.95, _bed),
    _Spec("sofa", 1.9, 0.85, _sofa),
    _Spec("shelf", 1.0, 0.34, _shelf),
    _Spec("cabinet", 0.8, 0.45, _cabinet),
    _Spec("door", 1.1, 0.6, _door, 0.0),
    _Spec("window", 1.4, 0.3, _window, 0.0),
    _Spec("lamp", 0.42, 0.42, _lamp, 0.1),
    _Spec("plant", 0.62, 0.62, _plant, 0.05),
]


@dataclass
class SceneObject:
    """One placed object: its class and axis-aligned footprint [x0, x1] x [y0, y1] (metres, world frame)."""

    name: str
    class_id: int
    footprint: tuple[float, float, float, float]
    meshes: list[Mesh] = field(default_factory=list, repr=False)


def _rotate_z(meshes: list[Mesh], quarter_turns: int, offset: Any) -> list[Mesh]:
    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][quarter_turns % 4]
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], float)
    off = np.asarray(offset, float)
    return [(v @ R.T + off, t) for v, t in meshes]


def _footprint(cx: float, cy: float, w: float, d: float, quarter_turns: int) -> tuple[float, float, float, float]:
    hw, hd = (w / 2, d / 2) if quarter_turns % 2 == 0 else (d / 2, w / 2)
    return (cx - hw, cx + hw, cy - hd, cy + hd)


def _overlaps(a: tuple, b: tuple, margin: float) -> bool:
    return a[0] < b[1] + margin and b[0] < a[1] + margin and a[2] < b[3] + margin and b[2] < a[3] + margin


def _hits_path(fp: tuple, path_xy: np.ndarray, margin: float) -> bool:
    x, y = path_xy[:, 0], path_xy[:, 1]
    inside = (x > fp[0] - margin) & (x < fp[1] + margin) & (y > fp[2] - margin) & (y < fp[3] + margin)
    return bool(inside.any())


def _ellipse_radii(room: tuple[float, float, float]) -> tuple[float, float]:
    return room[0] / 2 - WALL_BAND - CAM_MARGIN, room[1] / 2 - WALL_BAND - CAM_MARGIN


def build_layout(seed: int, room_size: tuple[float, float, float]) -> list[SceneObject]:
    """Places walls, floor, ceiling and all objects for ``seed``; deterministic. Room spans x, y centred at 0."""
    Lx, Ly, Lz = room_size
    ax, ay = _ellipse_radii(room_size)
    if ax < 0.9 or ay < 0.8 or Lz < 2.3:
        raise ValueError(
            f"room_size {room_size} is too small for the synthetic layout; need at least "
            f"{2 * (WALL_BAND + CAM_MARGIN + 0.9):.1f} x {2 * (WALL_BAND + CAM_MARGIN + 0.8):.1f} x 2.3 m"
        )
    rng = np.random.default_rng([seed, 7])
    hx, hy = Lx / 2, Ly / 2
    ang = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    path = np.stack([ax * np.cos(ang), ay * np.sin(ang)], 1)

    objs = [
        SceneObject("wall", CLASS_ID["wall"], (-hx, -hx, -hy, hy), [_quad((-hx, -hy, 0), (-hx, hy, 0), (-hx, hy, Lz), (-hx, -hy, Lz))]),
        SceneObject("wall", CLASS_ID["wall"], (hx, hx, -hy, hy), [_quad((hx, -hy, 0), (hx, -hy, Lz), (hx, hy, Lz), (hx, hy, 0))]),
        SceneObject("wall", CLASS_ID["wall"], (-hx, hx, -hy, -hy), [_quad((-hx, -hy, 0), (-hx, -hy, Lz), (hx, -hy, Lz), (hx, -hy, 0))]),
        SceneObject("wall", CLASS_ID["wall"], (-hx, hx, hy, hy), [_quad((-hx, hy, 0), (hx, hy, 0), (hx, hy, Lz), (-hx, hy, Lz))]),
        SceneObject("floor", CLASS_ID["floor"], (-hx, hx, -hy, hy), [_quad((-hx, -hy, 0), (hx, -hy, 0), (hx, hy, 0), (-hx, hy, 0))]),
        SceneObject("ceiling", CLASS_ID["ceiling"], (-hx, hx, -hy, hy), [_quad((-hx, -hy, Lz), (-hx, hy, Lz), (hx, hy, Lz), (hx, -hy, Lz))]),
    ]  # fmt: skip
    placed: list[tuple[float, float, float, float]] = []

    def place(name: str, fp: tuple, meshes: list[Mesh]) -> None:
        placed.append(fp)
        objs.append(SceneObject(name, CLASS_ID[name], fp, meshes))

    # Table (with monitor) and a free-standing chair inside the camera ellipse.
    for _ in range(2000):
        turns = int(rng.integers(0, 4))
        tw, td = 1.0, 0.6
        tx, ty = rng.uniform(-0.6 * ax, 0.6 * ax), rng.uniform(-0.5 * ay, 0.5 * ay)
        t_fp = _footprint(tx, ty, tw, td, turns)
        if _hits_path(t_fp, path, 0.25):
            continue
        cturns = int(rng.integers(0, 4))
        g = CHAIR_GRID
        cx = round(rng.uniform(-ax, ax) / g) * g
        cy = round(rng.uniform(-ay, ay) / g) * g
        c_fp = _footprint(cx, cy, 0.5, 0.5, cturns)
        if _hits_path(c_fp, path, 0.25) or _overlaps(t_fp, c_fp, 0.35):
            continue
        break
    else:  # pragma: no cover - the ranges above always admit a solution for rooms that pass the size check
        raise RuntimeError(f"could not place table and chair for seed {seed}")
    mx = float(rng.uniform(-0.25, 0.25))
    place("table", t_fp, _rotate_z(_table(tw, td), turns, (tx, ty, 0)))
    objs.append(SceneObject("monitor", CLASS_ID["monitor"], t_fp, _rotate_z(_monitor(mx, 0.12), turns, (tx, ty, 0))))
    place("chair", c_fp, _rotate_z(_chair(0.5, 0.5), cturns, (cx, cy, 0)))

    # Wall-standing objects: a random wall (by length), a random position along it, facing into the room.
    walls = [((0.0, 1.0), Lx), ((0.0, -1.0), Lx), ((1.0, 0.0), Ly), ((-1.0, 0.0), Ly)]  # inward normals
    wall_fps: list[tuple[float, float, float, float]] = []
    for spec in WALL_OBJECTS:
        for _ in range(2000):
            k = int(rng.choice(4, p=np.array([w[1] for w in walls]) / sum(w[1] for w in walls)))
            (nx, ny), length = walls[k]
            along = rng.uniform(-length / 2 + spec.w / 2 + 0.05, length / 2 - spec.w / 2 - 0.05)
            dist = spec.wall_gap + spec.d / 2
            if ny != 0:  # wall at y = -ny * hy, runs along x
                cx_, cy_ = along, -ny * hy + ny * dist
            else:
                cx_, cy_ = -nx * hx + nx * dist, along
            turns = {(0.0, 1.0): 2, (0.0, -1.0): 0, (1.0, 0.0): 1, (-1.0, 0.0): 3}[(nx, ny)]
            fp = _footprint(cx_, cy_, spec.w, spec.d, turns)
            if any(_overlaps(fp, q, 0.1) for q in placed + wall_fps) or _hits_path(fp, path, CAM_MARGIN):
                continue
            break
        else:
            raise RuntimeError(f"could not place '{spec.name}' in room {room_size} for seed {seed}")
        wall_fps.append(fp)
        place(spec.name, fp, _rotate_z(spec.build(spec.w, spec.d), turns, (cx_, cy_, 0)))

    # Rug: anywhere on the free floor (the camera may pass above it).
    for _ in range(4000):
        rw, rd = rng.uniform(1.4, 1.9), rng.uniform(0.9, 1.2)
        turns = int(rng.integers(0, 2))
        rx, ry = rng.uniform(-hx + 0.8, hx - 0.8), rng.uniform(-hy + 0.6, hy - 0.6)
        fp = _footprint(rx, ry, rw, rd, turns)
        if fp[0] < -hx + 0.05 or fp[1] > hx - 0.05 or fp[2] < -hy + 0.05 or fp[3] > hy - 0.05:
            continue
        if any(_overlaps(fp, q, 0.1) for q in placed):
            continue
        break
    else:
        raise RuntimeError(f"could not place the rug for seed {seed}")
    place("rug", fp, _rotate_z(_rug(rw, rd), turns, (rx, ry, 0)))
    return objs


def camera_trajectory(num_frames: int, room_size: tuple[float, float, float]) -> np.ndarray:
    """(N, 4, 4) float64 camera-to-world poses (OpenCV axes, z-up world) on a smooth ellipse around the room."""
    ax, ay = _ellipse_radii(room_size)
    t = 2 * np.pi * np.arange(num_frames) / max(num_frames, 1)
    eye = np.stack([ax * np.cos(t), ay * np.sin(t), 1.5 + 0.15 * np.sin(2 * t)], 1)
    # the gaze sweeps from the floor (0.3 m) to near the ceiling so that every surface class gets observed
    target = np.stack([0.15 * np.cos(2 * t + 0.5), 0.1 * np.sin(3 * t), 1.1 + 0.8 * np.cos(2 * t + 0.4)], 1)
    poses = np.zeros((num_frames, 4, 4))
    up = np.array([0.0, 0.0, 1.0])
    for i in range(num_frames):
        f = target[i] - eye[i]
        f /= np.linalg.norm(f)
        r = np.cross(f, up)
        r /= np.linalg.norm(r)
        d = np.cross(f, r)
        poses[i, :3, :3] = np.stack([r, d, f], 1)
        poses[i, :3, 3] = eye[i]
        poses[i, 3, 3] = 1.0
    return poses


def _hash01(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: int) -> np.ndarray:
    h = (ix.astype(np.int64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (
        iy.astype(np.int64).view(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    )
    h ^= iz.astype(np.int64).view(np.uint64) * np.uint64(0x165667B19E3779F9) + np.uint64(seed * 2654435761 + 1)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def value_noise(p: np.ndarray, scale: float, seed: int = 0) -> np.ndarray:
    """Smooth 3D value noise in [0, 1] at points ``p`` (N, 3), a deterministic function of position."""
    q = p / scale
    i = np.floor(q)
    f = q - i
    f = f * f * (3 - 2 * f)
    i = i.astype(np.int64)
    out = np.zeros(len(p))
    for dx in (0, 1):
        wx = f[:, 0] if dx else 1 - f[:, 0]
        for dy in (0, 1):
            wy = f[:, 1] if dy else 1 - f[:, 1]
            for dz in (0, 1):
                wz = f[:, 2] if dz else 1 - f[:, 2]
                out += wx * wy * wz * _hash01(i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz, seed)
    return out


@DATASETS.register("synthetic")
class SyntheticScene(PosedRGBDDataset):
    """A procedural indoor room (walls, floor, ceiling, 12 object classes) rendered by ray casting.

    World frame: z up, the room spans x in [-L_x/2, L_x/2], y in [-L_y/2, L_y/2], z in [0, L_z]. Class ids follow
    :data:`CLASS_NAMES`. Frames follow the :class:`PosedRGBDDataset` conventions (integer pixel centres: ray (u, v)
    goes through K^-1 [u, v, 1]; depth is the camera z of the hit). fx = fy = 0.65 W, cx = (W - 1) / 2,
    cy = (H - 1) / 2. Pixels that hit nothing (never, inside the closed room) get depth NaN and label 0.

    Args:
        preset: "demo" (72 frames at 240x320, 4000 GT points/m^2) or "test" (14 frames at 96x128,
            1500 GT points/m^2); explicit arguments below override the preset.
        seed: layout seed; the same seed gives identical frames and GT points.
        num_frames: frames on one loop of the camera ellipse.
        height: native image height (pixels).
        width: native image width (pixels).
        room_size: [L_x, L_y, L_z] in metres (at least about 4.6 x 4.4 x 2.3).
        gt_points_per_m2: density of :meth:`gt_points` surface samples.
        frame_skip: keep raw frames with index % (frame_skip + 1) == 0.
        rgb_resolution: output RGB [H, W] or None (native).
        depth_resolution: output depth [H, W] or None (native).
    """

    def __init__(
        self,
        preset: str = "demo",
        seed: int = 0,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        room_size: Any = None,
        gt_points_per_m2: float | None = None,
        frame_skip: int = 0,
        rgb_resolution: Any = None,
        depth_resolution: Any = None,
    ) -> None:
        super().__init__(frame_skip=frame_skip, rgb_resolution=rgb_resolution, depth_resolution=depth_resolution)
        if preset not in PRESETS:
            raise ValueError(f"unknown synthetic preset '{preset}'; available: {', '.join(PRESETS)}")
        p = PRESETS[preset]
        self.preset = preset
        self.seed = int(seed)
        self.num_frames = int(p["num_frames"] if num_frames is None else num_frames)
        self.height = int(p["height"] if height is None else height)
        self.width = int(p["width"] if width is None else width)
        rs = p["room_size"] if room_size is None else room_size
        self.room_size = tuple(float(x) for x in rs)
        if len(self.room_size) != 3:
            raise ValueError(f"room_size must be [L_x, L_y, L_z], got {rs!r}")
        self.gt_points_per_m2 = float(p["gt_points_per_m2"] if gt_points_per_m2 is None else gt_points_per_m2)
        if self.num_frames < 1 or self.height < 2 or self.width < 2 or self.gt_points_per_m2 <= 0:
            raise ValueError("num_frames must be >= 1, height/width >= 2 and gt_points_per_m2 > 0")
        self.class_names = list(CLASS_NAMES)
        self.scene_name = f"synthetic_seed{self.seed}"
        self.objects = build_layout(self.seed, self.room_size)  # cheap, pure numpy; validates room_size
        self._poses = camera_trajectory(self.num_frames, self.room_size)
        f = HFOV_FX_FACTOR * self.width
        self._K = np.array([[f, 0, (self.width - 1) / 2], [0, f, (self.height - 1) / 2], [0, 0, 1]], np.float64)
        self._scene = None
        self._geom_class: np.ndarray | None = None
        self._gt: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------------------------------------ info
    @property
    def has_labels(self) -> bool:
        return True

    @property
    def intrinsics(self) -> np.ndarray:
        """(3, 3) float64 K at the native resolution."""
        return self._K.copy()

    def poses(self) -> np.ndarray:
        """(N, 4, 4) float64 camera-to-world poses of all raw frames."""
        return self._poses.copy()

    def _extra_config(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "seed": self.seed,
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            "room_size": list(self.room_size),
            "gt_points_per_m2": self.gt_points_per_m2,
        }

    def __getstate__(self) -> dict[str, Any]:  # the open3d scene is not picklable; rebuilt lazily
        state = self.__dict__.copy()
        state["_scene"] = None
        return state

    # ---------------------------------------------------------------------------------------------- raw access
    def _num_raw_frames(self) -> int:
        return self.num_frames

    def _build_scene(self) -> None:
        import open3d as o3d  # lazy: `import ovmap.datasets` must not import open3d

        scene = o3d.t.geometry.RaycastingScene()
        geom_class = []
        for obj in self.objects:
            for v, t in obj.meshes:
                gid = scene.add_triangles(
                    o3d.core.Tensor(v.astype(np.float32)), o3d.core.Tensor(t.astype(np.uint32))
                )
                if gid != len(geom_class):  # pragma: no cover - open3d assigns consecutive ids
                    raise RuntimeError("unexpected open3d geometry id order")
                geom_class.append(obj.class_id)
        self._geom_class = np.array(geom_class + [0], dtype=np.int64)
        self._scene = scene
        H, W = self.height, self.width
        v, u = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
        K = self._K
        self._dirs_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)

    def _load_raw_frame(self, raw_index: int) -> dict[str, Any]:
        import open3d as o3d

        if self._scene is None:
            self._build_scene()
        pose = self._poses[raw_index]
        R, t = pose[:3, :3], pose[:3, 3]
        d = self._dirs_cam.reshape(-1, 3) @ R.T  # camera-frame z = 1, so t_hit is the z-depth
        rays = np.concatenate([np.broadcast_to(t, d.shape), d], 1).astype(np.float32)
        ans = self._scene.cast_rays(o3d.core.Tensor(rays))
        t_hit = ans["t_hit"].numpy().astype(np.float64)
        gid = ans["geometry_ids"].numpy().astype(np.int64)
        normals = ans["primitive_normals"].numpy().astype(np.float64)
        hit = np.isfinite(t_hit)
        gid = np.where(hit, gid, len(self._geom_class) - 1)
        labels = self._geom_class[gid]
        depth = np.where(hit, t_hit, np.nan)

        rgb = np.zeros((len(d), 3))
        pts = t + d[hit] * t_hit[hit, None]
        view = d[hit] / np.linalg.norm(d[hit], axis=1, keepdims=True)
        n = normals[hit]
        n = np.where((np.sum(n * view, 1) > 0)[:, None], -n, n)
        light = np.array([0.35, 0.55, 1.0]) / np.linalg.norm([0.35, 0.55, 1.0])
        shade = 0.35 + 0.45 * np.clip(n @ light, 0, None) + 0.25 * np.abs(np.sum(n * view, 1))
        tex = 0.55 * value_noise(pts, 0.07, self.seed) + 0.45 * value_noise(pts, 0.31, self.seed + 1)
        rgb[hit] = CLASS_COLORS[labels[hit]] * (shade * (0.7 + 0.6 * tex))[:, None]
        H, W = self.height, self.width
        return {
            "rgb": np.clip(rgb, 0, 1).reshape(H, W, 3).transpose(2, 0, 1).astype(np.float32),
            "depth": depth.reshape(1, H, W).astype(np.float32),
            "labels": labels.reshape(1, H, W),
            "pose": pose.astype(np.float32),
            "intrinsics": self._K.astype(np.float32),
        }

    # ------------------------------------------------------------------------------------------------ GT points
    def gt_points(self) -> tuple[np.ndarray, np.ndarray]:
        """Uniform samples on every observable surface: ((M, 3) float32 xyz, (M,) int64 class ids).

        Triangles are sampled area-weighted at ``gt_points_per_m2``; then samples that no point of the room's
        free space can see are dropped (floor under the rug, wall behind a door or a sofa, faces where parts
        touch): a real mesh ground truth has no such surfaces, and no camera could ever observe them. A sample
        is kept when it is visible from at least one of ``VISIBILITY_VIEWPOINTS`` seeded viewpoints spread
        through the free space (heights 0.2 m to ceiling - 0.2 m, outside every object's bounding box), so
        the filter does not depend on the camera trajectory. Deterministic for a seed; cached.
        """
        if self._gt is None:
            tris, cls = [], []
            for obj in self.objects:
                for v, t in obj.meshes:
                    tris.append(v[t])
                    cls.append(np.full(len(t), obj.class_id, np.int64))
            tri = np.concatenate(tris)
            tri_cls = np.concatenate(cls)
            area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
            rng = np.random.default_rng([self.seed, 11])
            m = int(round(area.sum() * self.gt_points_per_m2))
            idx = rng.choice(len(tri), size=m, p=area / area.sum())
            r1, r2 = rng.random(m), rng.random(m)
            s = np.sqrt(r1)
            a, b, c = tri[idx, 0], tri[idx, 1], tri[idx, 2]
            xyz = (1 - s)[:, None] * a + (s * (1 - r2))[:, None] * b + (s * r2)[:, None] * c
            visible = self._observable(xyz, np.random.default_rng([self.seed, 12]))
            self._gt = (xyz[visible].astype(np.float32), tri_cls[idx][visible])
        return self._gt[0].copy(), self._gt[1].copy()

    def _observable(self, xyz: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(M,) bool: the point is the first hit along the ray from at least one free-space viewpoint."""
        import open3d as o3d

        if self._scene is None:
            self._build_scene()
        lx, ly, lz = self.room_size
        boxes = []  # object bounding boxes (walls, floor and ceiling excluded), padded by 5 cm
        for obj in self.objects:
            if obj.name in ("wall", "floor", "ceiling") or not obj.meshes:
                continue
            verts = np.concatenate([v for v, _ in obj.meshes])
            boxes.append((verts.min(0) - 0.05, verts.max(0) + 0.05))
        views = []
        while len(views) < VISIBILITY_VIEWPOINTS:
            p = rng.uniform([-lx / 2 + 0.15, -ly / 2 + 0.15, 0.2], [lx / 2 - 0.15, ly / 2 - 0.15, lz - 0.2])
            if not any(np.all(p >= lo) and np.all(p <= hi) for lo, hi in boxes):
                views.append(p)
        visible = np.zeros(len(xyz), dtype=bool)
        views = np.asarray(views)
        start, group = 0, 1
        while start < len(views) and not visible.all():
            # most samples are seen from the first viewpoints; test the rest against many viewpoints per call
            todo = np.flatnonzero(~visible)
            batch = views[start : start + group]
            origin = np.repeat(batch, todo.size, axis=0)
            direction = np.tile(xyz[todo], (len(batch), 1)) - origin  # t = 1 at the sample
            rays = np.concatenate([origin, direction], 1).astype(np.float32)
            t_hit = self._scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
            dist = np.linalg.norm(direction, axis=1)
            seen = (t_hit * dist >= dist - 0.005).reshape(len(batch), todo.size).any(0)  # 5 mm tolerance
            visible[todo[seen]] = True
            start, group = start + len(batch), min(2 * group, 64)
        return visible
