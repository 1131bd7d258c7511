"""ovmap: online 3D open-vocabulary semantic mapping.

Posed RGB-D frames -> a 2D dense, language-aligned encoder -> a voxel map that averages per-voxel
features (or class probabilities) -> free-text queries.

Subpackages:
    datasets  posed RGB-D sources (built-in synthetic scene, the ovmap folder format, benchmark datasets)
    encoders  pluggable dense 2D encoders behind one interface (oracle, RADSeg, baselines)
    mapping   back-projection, voxel hashing, fusion, the VoxelMap, queries, persistence
    eval3d    3D semantic segmentation evaluation (kNN matching, mIoU, f-mIoU)
    eval2d    the 2D open-vocabulary segmentation benchmark (five datasets, three resolution budgets)
    configs   Hydra configuration groups used by the ``ovmap`` command line

Above them: ``pipeline`` (the mapping loop), ``online`` (the live mapper), ``map_cache``, ``scene_eval``, ``vis``
and ``commands`` (the ``ovmap`` CLI). Shared foundations: ``voxel_keys``, ``fileio``, ``naming``, ``registry``.

Conventions (see docs/conventions.md): poses are camera-to-world (``pose_c2w``), OpenCV camera axes
(x right, y down, z forward), z-depth in metres, intrinsics in pixels at depth resolution, integer pixel
centres.
"""

__version__ = "0.1.0"
