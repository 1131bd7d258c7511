"""Posed RGB-D datasets: the dataset contract, the registry and the built-in sources.

This package owns:
    * :class:`PosedRGBDDataset` (``base.py``): the frame contract (conventions, frame selection, resizing,
      validation), the ``DATASETS`` registry, :func:`build_dataset` and :func:`available_datasets`;
    * :class:`SyntheticScene` (``synthetic.py``, registered as ``synthetic``): a seeded procedural room rendered by
      open3d ray casting, with per-pixel labels and dense GT surface points (open3d is imported lazily);
    * :class:`FolderDataset` and :func:`write_folder` (``folder.py``, registered as ``folder``): the ovmap folder
      format (docs/folder_format.md), read and written;
    * the benchmark loaders (docs/datasets.md): ``replica`` / ``replica_semnerf`` (``replica.py``), ``scannet``
      (``scannet.py``), ``scannetpp`` (``scannetpp.py``), the shipped label sets and GT readers (``labels_io.py``)
      and :func:`~ovmap.datasets.check.check_dataset` (``check.py``);
    * recordings of your own (docs/sources/): ``tum`` (``tum.py``), ``rosbag`` (``rosbag.py``, ROS 1/2 bags through
      the optional ``rosbags``), ``record3d`` (``record3d.py``, needs ``lzfse``), raw ScanNet ``.sens``
      (``scannet_sens.py``, through ``dataset=scannet dataset.sens=``), each with a writer for tests, and the
      timestamp helpers they share (``stamped.py``: association, slerp interpolation, quaternions).

Typical usage example:

    >>> from ovmap.datasets import build_dataset, available_datasets
    >>> "synthetic" in available_datasets()
    True
    >>> ds = build_dataset("synthetic", preset="test", frame_skip=1)  # doctest: +SKIP
    >>> frame = ds[0]  # dict: rgb, depth, pose, intrinsics, index, labels  # doctest: +SKIP
"""

from ovmap.datasets.base import DATASETS, PosedRGBDDataset, available_datasets, build_dataset
from ovmap.datasets.folder import FolderDataset, write_folder
from ovmap.datasets.labels_io import load_label_set, read_external_gt
from ovmap.datasets.record3d import Record3DDataset
from ovmap.datasets.replica import ReplicaDataset, ReplicaSemanticNerfDataset
from ovmap.datasets.rosbag import RosbagDataset
from ovmap.datasets.scannet import ScanNetDataset
from ovmap.datasets.scannetpp import ScanNetPPDataset
from ovmap.datasets.synthetic import SyntheticScene
from ovmap.datasets.tum import TUMDataset

__all__ = [
    "DATASETS",
    "PosedRGBDDataset",
    "available_datasets",
    "build_dataset",
    "SyntheticScene",
    "FolderDataset",
    "write_folder",
    "ReplicaDataset",
    "ReplicaSemanticNerfDataset",
    "ScanNetDataset",
    "ScanNetPPDataset",
    "TUMDataset",
    "RosbagDataset",
    "Record3DDataset",
    "load_label_set",
    "read_external_gt",
]
