"""ovmap.mapping: back-projection, voxel keys, feature lifting, fusion, the VoxelMap, queries, persistence.

This subpackage owns everything between a posed depth frame (+ a 2D feature or probability map) and a
queryable 3D voxel map:

* :mod:`~ovmap.mapping.geometry`: ``backproject``, ``world_points_to_depth_image`` (voxel indices and packed
  int64 keys come from :mod:`ovmap.voxel_keys` and are re-exported here);
* :mod:`~ovmap.mapping.fusion`: bilinear feature lifting without upsampling (``frame_voxel_sums``: sort-based
  grouping, per-voxel bags lifted by ``embedding_bag``) and the running-mean rule (reduced-precision and loaded maps);
* :mod:`~ovmap.mapping.storage`: append-only row chunks (growth never copies);
* :mod:`~ovmap.mapping.voxel_map`: :class:`VoxelMap` (incremental merge, cached language queries) and
  :class:`QueryResult`;
* :mod:`~ovmap.mapping.map_format`: the versioned ``.npz`` file of a map's state;
* :mod:`~ovmap.mapping.io`: ``save_map`` / ``load_map`` / ``write_ply``.

Conventions: ``pose_c2w`` camera-to-world with OpenCV axes (x right, y down, z forward), z-depth in metres
(valid iff finite, > 0 and within [min_depth, max_depth]), intrinsics in pixels at depth resolution, integer
pixel centres.

Typical usage example:

    from ovmap.mapping import VoxelMap
    vmap = VoxelMap(voxel_size=0.05, encoder=encoder)
    vmap.integrate(depth, pose_c2w, K, feats, rgb=rgb)
    res = vmap.query(["a chair", "a table"])
"""

from ovmap.mapping.fusion import (
    feature_table,
    frame_voxel_sums,
    group_points,
    lift_bags,
    merge_running_mean,
    permute_bags,
    point_colour_sums,
    points_touching,
    sample_weights,
    sampling_table,
    voxel_patch_bags,
)
from ovmap.mapping.geometry import backproject, valid_depth_mask, world_points_to_depth_image
from ovmap.mapping.io import FORMAT_VERSION, load_map, save_map, write_ply
from ovmap.mapping.storage import RowChunks
from ovmap.mapping.voxel_map import QueryResult, VoxelMap, check_state
from ovmap.voxel_keys import pack_indices, unpack_keys, voxel_indices, voxel_keys

__all__ = [
    "FORMAT_VERSION",
    "QueryResult",
    "RowChunks",
    "VoxelMap",
    "backproject",
    "check_state",
    "feature_table",
    "frame_voxel_sums",
    "group_points",
    "lift_bags",
    "load_map",
    "merge_running_mean",
    "permute_bags",
    "point_colour_sums",
    "points_touching",
    "pack_indices",
    "sample_weights",
    "sampling_table",
    "save_map",
    "unpack_keys",
    "valid_depth_mask",
    "voxel_indices",
    "voxel_keys",
    "voxel_patch_bags",
    "world_points_to_depth_image",
    "write_ply",
]
