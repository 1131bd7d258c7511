"""The online semantic voxel map: incremental fusion, cached language queries, persistence.

Conventions: ``pose_c2w`` is a 4x4 camera-to-world transform with OpenCV camera axes (x right, y down, z
forward), metres; depth is z-depth in metres (valid iff finite, > 0 and within ``[min_depth, max_depth]``);
intrinsics are 3x3 in pixels at depth resolution; integer pixel centres (no +0.5). Voxel ``ijk = round(p / s)``,
centre ``ijk * s``.

Storage layout (rows never move once written; see ``README.md`` in this folder for costs):

* feature rows (N, C) in fixed-size chunks (:class:`RowChunks`), so growing the map never copies it (no stall,
  no 2x peak). A float32 map built by fusion stores each voxel's **feature sum** ``S_v`` (the mean ``S_v / W_v``
  is computed when read), so merging a frame is one ``index_add_`` of its per-voxel sums; float16 / bfloat16 maps
  and maps loaded from a state (:meth:`VoxelMap.from_state_dict`) store the **running mean** and merge with
  ``(W f + S) / (W + n)`` (a loaded map reads back exactly the means it was given);
* small per-row arrays (capacity doubling, 29 bytes per row in all): ``_row_keys`` int64 packed keys, ``_hits``
  float32 pixel counts, ``_rgb`` (N, 3) float32 running-mean colour, ``_rgb_hits`` float32, ``_dirty`` bool;
* a key -> row index over 4 x 4 x 4-voxel blocks (:class:`~ovmap.mapping.key_index.BlockKeyIndex`);
* an optional query cache: the L2-normalised language projection of every row, chunked, in the storage dtype,
  allocated on the first feature-mode query (``cache_language``).

Merging a frame costs O(V * C) for features (V = voxels in the frame), done block by block in row order, plus
O(V log B) for the key lookup (B = occupied blocks); the map is never re-voxelised.

Typical usage example:

    vmap = VoxelMap(voxel_size=0.05, encoder=encoder)
    for frame in dataset:
        vmap.integrate(frame.depth, frame.pose_c2w, frame.intrinsics, features, rgb=frame.rgb)
    result = vmap.query(["chair", "table"])
    chair_voxels = result.mask("chair", 0.5)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int64
from torch import Tensor

from ovmap.mapping.fusion import (
    SAMPLING_MODES,
    feature_table,
    group_voxel_indices,
    lift_bags,
    merge_running_mean,
    permute_bags,
    point_colour_sums,
    points_touching,
    voxel_patch_bags,
)
from ovmap.mapping.geometry import backproject
from ovmap.mapping.key_index import BlockKeyIndex
from ovmap.mapping.map_format import OPTIONAL_COUNTERS, encoder_config_json, read_map_file, write_map_file
from ovmap.mapping.ply import write_ply
from ovmap.mapping.storage import DEFAULT_CHUNK_ROWS, RowChunks, tune_cpu_allocator
from ovmap.voxel_keys import pack_indices, unpack_keys, voxel_indices

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_MODES = ("feature", "probability")
_QUERY_CHUNK = 65536


_STATE_KEYS = (
    "voxel_size", "mode", "feature_dim", "class_names", "feature_dtype", "feature_sampling", "min_depth",
    "max_depth", "frames_integrated", "frames_skipped", "keys", "features", "hits", "rgb", "rgb_hits",
)


def _wide_rows(t: Tensor) -> Tensor:
    """A (M, C) tensor's rows as 16-byte elements (a ``complex128`` view of the same bytes) when the row size
    allows, else ``t``. Row copies (``index_copy_``) move the same bits in fewer, wider elements: about 30 % faster
    on CPU than copying float32 elements one by one."""
    if t.shape[-1] * t.element_size() % 16 or t.stride(-1) != 1 or t.storage_offset() * t.element_size() % 16:
        return t
    return t.view(torch.complex128)


def _first_bad(mask: Tensor) -> int:
    return int(torch.nonzero(mask.reshape(mask.shape[0], -1).any(dim=1))[0, 0])


def check_state(state: dict[str, Any]) -> None:
    """Validate a map state (see :meth:`VoxelMap.state_dict`); raise ValueError naming the first problem.

    Checks: every entry present; ``keys`` (N, 3) integer; ``features`` (N, C) floating with C = ``feature_dim``;
    ``hits`` (N,), ``rgb`` (N, 3), ``rgb_hits`` (N,); all values finite; ``hits`` > 0; ``rgb_hits`` >= 0; no
    voxel key twice. Scalar options are checked by the :class:`VoxelMap` constructor.
    """
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise ValueError(f"missing entries {missing}")
    arrays = {}
    for name in ("keys", "features", "hits", "rgb", "rgb_hits"):
        try:
            arrays[name] = torch.as_tensor(state[name])
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"'{name}' is not an array ({type(err).__name__})") from None
    keys = arrays["keys"]
    if keys.ndim != 2 or keys.shape[1] != 3 or keys.is_floating_point() or keys.dtype == torch.bool:
        raise ValueError(f"'keys' must be an (N, 3) integer array, got shape {tuple(keys.shape)} {keys.dtype}")
    n = keys.shape[0]
    C = state["feature_dim"] or 0
    expect = {"features": (n, C), "hits": (n,), "rgb": (n, 3), "rgb_hits": (n,)}
    for name, shape in expect.items():
        a = arrays[name]
        if name == "features" and C == 0 and a.numel() == 0:
            continue
        if tuple(a.shape) != shape:
            raise ValueError(f"'{name}' has shape {tuple(a.shape)} but {n} voxels need {shape}")
        if not a.is_floating_point():
            raise ValueError(f"'{name}' must be floating point, got {a.dtype}")
        bad = ~torch.isfinite(a)
        if bool(bad.any()):
            rows = int(bad.reshape(n, -1).any(dim=1).sum())
            raise ValueError(f"'{name}' has non-finite values in {rows} rows (first at row {_first_bad(bad)})")
    for name, bad, what in (
        ("hits", arrays["hits"] <= 0, "non-positive hit counts"),
        ("rgb_hits", arrays["rgb_hits"] < 0, "negative colour counts"),
    ):
        if bool(bad.any()):
            raise ValueError(f"'{name}' has {int(bad.sum())} {what} (first at row {_first_bad(bad)})")
    if n:
        packed = pack_indices(keys.long())  # raises on an out-of-range index
        srt = torch.sort(packed).values
        dup = srt[1:] == srt[:-1]
        if bool(dup.any()):
            first = unpack_keys(srt[1:][dup][:1])[0].tolist()
            raise ValueError(f"duplicate voxel keys: {int(dup.sum())} rows repeat a voxel (first {tuple(first)})")


@dataclass
class QueryResult:
    """Result of :meth:`VoxelMap.query`.

    Attributes:
        texts: the Q query strings.
        centers: (N, 3) float32 voxel centres in metres, in the map's row order.
        similarity: (Q, N) float32 cosine similarity of each query with each voxel.
        probabilities: (Q, N) float32 ``softmax(similarity / temperature)`` across the Q queries (dim 0), so a
            voxel's probability depends on the other queries in the set.
    """

    texts: list[str]
    centers: Float[Tensor, "N 3"]
    similarity: Float[Tensor, "Q N"]
    probabilities: Float[Tensor, "Q N"]

    def _row(self, i_or_text: int | str) -> int:
        if isinstance(i_or_text, str):
            if i_or_text not in self.texts:
                raise ValueError(f"query {i_or_text!r} not in {self.texts}")
            return self.texts.index(i_or_text)
        return int(i_or_text)

    def _values(self, i_or_text: int | str, by: str) -> Tensor:
        if by == "similarity":
            return self.similarity[self._row(i_or_text)]
        if by == "probabilities":
            return self.probabilities[self._row(i_or_text)]
        raise ValueError(f"by must be 'similarity' or 'probabilities', got {by!r}")

    def top(self, i_or_text: int | str, k: int, by: str = "similarity") -> Int64[Tensor, " k"]:
        """Row indices of the k voxels scoring highest for one query, best first.

        Args:
            i_or_text: query index or query text.
            k: number of voxels (clipped to N).
            by: "similarity" (default) or "probabilities".
        """
        vals = self._values(i_or_text, by)
        return torch.topk(vals, min(int(k), vals.shape[0])).indices

    def mask(self, i_or_text: int | str, threshold: float, by: str = "probabilities") -> Bool[Tensor, " N"]:
        """Boolean (N,) mask of voxels whose score for one query is >= threshold.

        Args:
            i_or_text: query index or query text.
            threshold: inclusive threshold.
            by: "probabilities" (default) or "similarity".
        """
        return self._values(i_or_text, by) >= threshold


class VoxelMap:
    """Sparse voxel map holding the exact mean of per-pixel features (or class probabilities) per voxel.

    Each integrated frame is back-projected, voxelised and reduced to per-voxel sums immediately (nothing is
    buffered), then merged. The map's features are ``f_v = (sum of every pixel feature fused into v) / W_v`` with
    ``W_v`` the pixel count (``hits``): float32 maps keep the sums and divide when read (one rounding; one-hot
    probabilities stay exactly one-hot), float16 / bfloat16 maps and loaded maps keep the mean and update it with
    ``f_v <- (W_v f_v + S_v) / (W_v + n_v)``. Colour keeps a running mean.

    Args:
        voxel_size: voxel edge length in metres.
        mode: "feature" (encoder features; queries go through ``encoder.align_to_language``) or "probability"
            ((K+1)-channel class probabilities, channel 0 = ignore; queries are class names).
        feature_dim: channels C; inferred from the first integrated feature map if None.
        encoder: optional encoder used by :meth:`query` in feature mode (needs ``align_to_language(x (N, C))
            -> (N, D)`` and ``encode_text(list[str]) -> (Q, D)``).
        class_names: probability mode: the K+1 class names, index 0 = ignore; ``len == feature_dim``.
        device: torch device of all map tensors.
        feature_dtype: storage dtype of the feature rows: "float32" (sums), "float16" or "bfloat16" (running
            means; updates are computed in float32 and rounded once).
        min_depth: smallest accepted depth (inclusive), metres.
        max_depth: largest accepted depth (inclusive), metres.
        feature_sampling: "bilinear" (like ``F.interpolate(align_corners=False)``) or "nearest" (nearest-exact).
        cache_language: keep the language projection of every row (``encoder.align_to_language``, L2-normalised)
            between queries, in the storage dtype: N x D x itemsize bytes (e.g. 1 M voxels x 1152 x 2 B = 2.1 GiB
            in float16), allocated on the first feature-mode query only. False re-projects all rows at every
            query instead (no extra memory).
        chunk_rows: rows per storage chunk (a power of two). Feature rows (and the language cache) live in
            fixed-size chunks, so growing the map never copies it.
    """

    merge_block_bytes: int = 4 << 20
    """CPU merge block: float32 bytes of per-voxel sums computed at once (the frame's (V, C) sums never exist)."""

    def __init__(
        self,
        voxel_size: float = 0.05,
        mode: str = "feature",
        feature_dim: int | None = None,
        encoder: Any = None,
        class_names: list[str] | None = None,
        device: str | torch.device = "cpu",
        feature_dtype: str = "float32",
        min_depth: float = 0.0,
        max_depth: float = float("inf"),
        feature_sampling: str = "bilinear",
        cache_language: bool = True,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> None:
        if not (voxel_size > 0 and np.isfinite(voxel_size)):
            raise ValueError(f"voxel_size must be finite and > 0 (metres), got {voxel_size}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if feature_dtype not in _DTYPES:
            raise ValueError(f"feature_dtype must be one of {sorted(_DTYPES)}, got {feature_dtype!r}")
        if feature_sampling not in SAMPLING_MODES:
            raise ValueError(f"feature_sampling must be one of {SAMPLING_MODES}, got {feature_sampling!r}")
        if min_depth < 0 or max_depth <= min_depth:
            raise ValueError(
                f"need 0 <= min_depth < max_depth, got min_depth={min_depth}, max_depth={max_depth}"
            )
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if feature_dim is None:
                feature_dim = len(class_names)
            elif len(class_names) != feature_dim:
                raise ValueError(
                    f"len(class_names) = {len(class_names)} must equal feature_dim = {feature_dim} "
                    "(index 0 = ignore)"
                )
        if chunk_rows <= 0 or chunk_rows & (chunk_rows - 1):
            raise ValueError(f"chunk_rows must be a positive power of two, got {chunk_rows}")
        if feature_dim is not None and feature_dim <= 0:
            raise ValueError(f"feature_dim must be positive, got {feature_dim}")
        self.voxel_size = float(voxel_size)
        self.mode = mode
        self.feature_dim = feature_dim
        self.encoder = encoder
        self.class_names = class_names
        self.device = torch.device(device)
        self.feature_dtype = feature_dtype
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.feature_sampling = feature_sampling
        self.frames_integrated = 0
        self.frames_skipped = 0
        self.points_dropped_nonfinite = 0
        # frames the data source refused before they reached the map (docs/validation.md), set by the pipeline
        self.frames_invalid_pose = 0
        self.frames_no_valid_depth = 0
        self.frames_implausible_depth = 0
        self.rgb_points_dropped_nonfinite = 0

        if self.device.type == "cpu":
            tune_cpu_allocator()
        self.cache_language = bool(cache_language)
        self.chunk_rows = int(chunk_rows)

        self._n = 0
        self._cap = 0  # capacity of the small per-row arrays (capacity doubling; 29 bytes per row in all)
        self._row_keys = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._feat: RowChunks | None = None
        if feature_dim is not None:
            self._feat = RowChunks((feature_dim,), _DTYPES[feature_dtype], self.device, self.chunk_rows,
                prefault=True)
        self._hits = torch.zeros(0, dtype=torch.float32, device=self.device)
        self._rgb = torch.zeros(0, 3, dtype=torch.float32, device=self.device)
        self._rgb_hits = torch.zeros(0, dtype=torch.float32, device=self.device)
        self._index = BlockKeyIndex(self.device)
        self._lang: RowChunks | None = None
        self._dirty = torch.zeros(0, dtype=torch.bool, device=self.device)
        # float32 rows hold feature sums (one fused index_add_ per frame, no gather / write-back of the rows a frame
        # hits); reduced precision cannot hold sums, and from_state_dict keeps the means it is given
        self._rows_hold_sums = feature_dtype == "float32"

    # ------------------------------------------------------------------ properties
    @property
    def encoder(self) -> Any:
        """Encoder used by :meth:`query`; assigning a new one invalidates the language cache."""
        return self._encoder

    @encoder.setter
    def encoder(self, encoder: Any) -> None:
        self._encoder = encoder
        self._lang = None
        if hasattr(self, "_dirty"):
            self._dirty[: self._n] = True

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return (
            f"VoxelMap(voxels={self._n}, voxel_size={self.voxel_size}, mode={self.mode!r}, "
            f"feature_dim={self.feature_dim}, feature_dtype={self.feature_dtype!r}, device={self.device}, "
            f"frames_integrated={self.frames_integrated}, frames_skipped={self.frames_skipped})"
        )

    @property
    def stats(self) -> dict[str, int]:
        """Counters saved with the map: frames fused / skipped (non-finite pose) and points dropped because a
        value was not finite (``points_dropped_nonfinite``: NaN/inf encoder output or world position;
        ``rgb_points_dropped_nonfinite``: NaN/inf colour, fused without colour), and the frames the data source
        refused before fusion (``frames_invalid_pose``, ``frames_no_valid_depth``, ``frames_implausible_depth``)."""
        return {key: getattr(self, key) for key in ("frames_integrated", "frames_skipped", *OPTIONAL_COUNTERS)}

    def is_empty(self) -> bool:
        """True when the map holds no voxel."""
        return self._n == 0

    @property
    def packed_keys(self) -> Int64[Tensor, " N"]:
        """(N,) int64 packed voxel keys in row order."""
        return self._row_keys[: self._n]

    @property
    def keys(self) -> Int64[Tensor, "N 3"]:
        """(N, 3) int64 voxel indices in row order."""
        return unpack_keys(self._row_keys[: self._n])

    @property
    def centers(self) -> Float[Tensor, "N 3"]:
        """(N, 3) float32 voxel centres ``keys * voxel_size`` in metres, row order."""
        return self.keys.float() * self.voxel_size

    @property
    def features(self) -> Float[Tensor, "N C"]:
        """(N, C) mean features (or probabilities) in the storage dtype, row order.

        A new tensor (N x C x itemsize bytes); for a mean-storing map that fits in one storage chunk, a view.
        """
        if self._feat is None:
            return torch.zeros(self._n, 0, dtype=_DTYPES[self.feature_dtype], device=self.device)
        if not self._rows_hold_sums:
            return self._feat.read(self._n)
        out = torch.empty(self._n, self.feature_dim, dtype=self._feat.dtype, device=self.device)
        for lo, view in self._feat.views(self._n):
            torch.div(view, self._hits[lo : lo + view.shape[0]].unsqueeze(1), out=out[lo : lo + view.shape[0]])
        return out

    def feature_blocks(self) -> Iterator[tuple[int, Float[Tensor, "M C"]]]:
        """``(first_row, (M, C) mean features)`` covering the rows in order, one storage chunk at a time (views of the
        storage for a mean-storing map), without a copy of the whole map."""
        if self._feat is None:
            return
        for lo, view in self._feat.views(self._n):
            yield lo, self._means(view, self._hits[lo : lo + view.shape[0]])

    def _means(self, rows: Float[Tensor, "M C"], hits: Float[Tensor, " M"]) -> Float[Tensor, "M C"]:
        """Stored feature rows -> their means (a new tensor for a sum-storing map, else ``rows`` itself)."""
        return rows / hits.unsqueeze(1) if self._rows_hold_sums else rows

    def nbytes(self) -> dict[str, int]:
        """Bytes held by the map's tensors: ``features`` (allocated chunks), ``language_cache``, ``rows`` (keys, hits,
        colour; capacity included) and ``key_index``. On CPU the untouched tail of the last chunk is not resident."""
        small = [self._row_keys, self._hits, self._rgb, self._rgb_hits, self._dirty]
        return {
            "features": self._feat.nbytes_allocated() if self._feat is not None else 0,
            "language_cache": self._lang.nbytes_allocated() if self._lang is not None else 0,
            "rows": sum(t.numel() * t.element_size() for t in small),
            "key_index": self._index.nbytes(),
        }

    @property
    def hits(self) -> Float[Tensor, " N"]:
        """(N,) float32 number of pixels fused into each voxel, row order."""
        return self._hits[: self._n]

    @property
    def rgb(self) -> Float[Tensor, "N 3"]:
        """(N, 3) float32 running-mean colour in [0, 1] (0 for voxels never seen with RGB), row order."""
        return self._rgb[: self._n]

    @property
    def rgb_hits(self) -> Float[Tensor, " N"]:
        """(N,) float32 number of coloured pixels fused into each voxel, row order."""
        return self._rgb_hits[: self._n]

    # ------------------------------------------------------------------ storage
    def _ensure_capacity(self, needed: int) -> None:
        if self._feat is not None:
            self._feat.reserve(needed)
        if self._lang is not None:
            self._lang.reserve(needed)
        if needed <= self._cap:
            return
        new_cap = max(needed, 2 * self._cap, 1024)

        def grow(t: Tensor) -> Tensor:  # small per-row arrays only (29 bytes per row); new rows are zero
            out = torch.zeros((new_cap, *t.shape[1:]), dtype=t.dtype, device=self.device)
            out[: self._n] = t[: self._n]
            return out

        self._row_keys = grow(self._row_keys)
        self._hits = grow(self._hits)
        self._rgb = grow(self._rgb)
        self._rgb_hits = grow(self._rgb_hits)
        self._dirty = grow(self._dirty)
        self._cap = new_cap

    def _set_feature_dim(self, C: int) -> None:
        if self.feature_dim is None:
            self.feature_dim = C
        elif C != self.feature_dim:
            raise ValueError(f"feature map has {C} channels but the map's feature_dim is {self.feature_dim}")
        if self._feat is None:
            self._feat = RowChunks((C,), _DTYPES[self.feature_dtype], self.device, self.chunk_rows,
                prefault=True)
            self._feat.reserve(self._cap)

    def _block_rows(self) -> int:
        """Voxels merged per block: on CPU about 4 MiB of float32 sums (cache-sized), so every temporary stays small and is
        recycled by the allocator (no page faults per frame, see tune_cpu_allocator); on CUDA the whole frame in one block (no syncs)."""
        if self.device.type != "cpu":
            return 1 << 62
        return max(1, self.merge_block_bytes // (4 * max(1, self.feature_dim or 1)))

    def _workspace(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """Reusable (k, C) buffers: one in the storage dtype, one float32 (the same one for float32 storage)."""
        assert self._feat is not None
        C = self.feature_dim
        ws = getattr(self, "_ws", None)
        if ws is None or ws[0].shape[0] < k:
            g = torch.empty(k, C, dtype=self._feat.dtype, device=self.device)
            f = g if g.dtype == torch.float32 else torch.empty(k, C, dtype=torch.float32, device=self.device)
            self._ws = ws = (g, f)
        return ws[0][:k], ws[1][:k], None  # type: ignore[return-value]

    def _merge_hits(self, rows: Tensor, w: Tensor, cnt: Tensor, sums: Tensor) -> None:
        """Running-mean update of rows already in the map, ``rows`` ascending; chunk by chunk with reusable
        buffers: gather, :func:`merge_running_mean` in float32, scatter back."""
        assert self._feat is not None
        R = self._feat.chunk_rows
        chunk_ids = range(int(rows[0]) // R, int(rows[-1]) // R + 1)
        bounds = torch.searchsorted(rows, torch.tensor([c * R for c in chunk_ids] + [1 << 62], device=rows.device))
        bounds = bounds.tolist()
        for c, a, b in zip(chunk_ids, bounds[:-1], bounds[1:]):
            if b <= a:
                continue
            chunk = self._feat.chunks[c]
            local = rows[a:b] - c * R
            if self._rows_hold_sums:  # one fused read-add-write per row
                chunk.index_add_(0, local, sums[a:b])
                continue
            k = b - a
            g, f, _ = self._workspace(k)
            torch.index_select(chunk, 0, local, out=g)
            if g.dtype != torch.float32:  # reduced precision: compute the new mean in float32, round once
                f.copy_(g)
            # float32: f and g are the same buffer, updated in place (no copy); the new mean is written back with
            # index_copy_ through 16-byte elements (exact, and cheaper on CPU than index_add_ of an increment)
            mean, _ = merge_running_mean(f, w[a:b], sums[a:b], cnt[a:b], inplace=True)
            if mean.data_ptr() != g.data_ptr():
                g.copy_(mean)
            _wide_rows(chunk).index_copy_(0, local, _wide_rows(g))

    def _merge(
        self,
        uniq: Int64[Tensor, " V"],
        counts: Float[Tensor, " V"],
        sums: Tensor | tuple[Tensor, Tensor, Tensor, Tensor],
        rgb_sums: Float[Tensor, "V 3"] | None = None,
        rgb_counts: Float[Tensor, " V"] | None = None,
    ) -> int:
        """Merge one frame's sorted per-voxel sums into the map; returns the number of new voxels.

        Args:
            uniq: (V,) sorted unique packed keys of the frame.
            counts: (V,) float32 pixels per voxel.
            sums: the frame's feature sums, either a dense (V, C) float32 tensor or the bags
                ``(patch, weight, bag_start, table)`` of :func:`~ovmap.mapping.fusion.voxel_patch_bags`, from which
                the sums are computed block by block in merge order (the (V, C) sums never exist at once).
            rgb_sums: (V, 3) colour sums or None.
            rgb_counts: (V,) pixels with a finite colour (default ``counts``).

        The frame's voxels are merged in row order: voxels already in the map first (rows ascending, chunk by
        chunk), then the new voxels, whose rows are consecutive (written as slices).
        """
        assert self._feat is not None
        n = self._n
        V = uniq.shape[0]
        # new voxels get the next rows, in key order
        rows, new, num_new = self._index.lookup_or_append(uniq, n)
        n_hit = V - num_new
        self._ensure_capacity(n + num_new)
        w_old = self._hits.index_select(0, rows)  # 0 for new rows

        # Features: merge in row order (hits by row, then the new rows, already ascending), block by block.
        hit_pos = torch.nonzero(~new).squeeze(1)
        by_row = torch.sort(rows.index_select(0, hit_pos).to(torch.int32)).indices
        perm = torch.cat([hit_pos.index_select(0, by_row), torch.nonzero(new).squeeze(1)])
        rows_p = rows.index_select(0, perm)
        w_p, cnt_p = w_old.index_select(0, perm), counts.index_select(0, perm)
        if isinstance(sums, Tensor):
            dense = sums.index_select(0, perm).float()

            def block(v0: int, v1: int) -> Tensor:
                return dense[v0:v1]
        else:
            patch, weight, bag_start = permute_bags(sums[0], sums[1], sums[2], perm)
            table = sums[3]

            def block(v0: int, v1: int) -> Tensor:
                return lift_bags(patch, weight, bag_start, table, v0, v1)

        step = self._block_rows()
        for lo, hi, in_map in ((0, n_hit, True), (n_hit, V, False)):
            for v0 in range(lo, hi, step):
                v1 = min(hi, v0 + step)
                s_blk = block(v0, v1)
                if in_map:
                    self._merge_hits(rows_p[v0:v1], w_p[v0:v1], cnt_p[v0:v1], s_blk)
                elif self._rows_hold_sums:  # new rows are consecutive slices: the sums as they are
                    self._feat.write(n + v0 - n_hit, s_blk)
                elif self._feat.dtype == torch.float32:  # new rows are consecutive: S / n straight into storage
                    for off, dst in self._feat.slices(n + v0 - n_hit, v1 - v0):
                        k = dst.shape[0]
                        merge_running_mean(None, None, s_blk[off : off + k], cnt_p[v0 + off : v0 + off + k], out=dst)
                else:
                    mean, _ = merge_running_mean(None, None, s_blk, cnt_p[v0:v1], inplace=True)
                    self._feat.write(n + v0 - n_hit, mean)
                del s_blk
        self._hits.index_copy_(0, rows, w_old + counts)
        if rgb_sums is not None:
            col, rw = merge_running_mean(
                self._rgb.index_select(0, rows), self._rgb_hits.index_select(0, rows), rgb_sums,
                counts if rgb_counts is None else rgb_counts, inplace=True,
            )
            self._rgb.index_copy_(0, rows, col)
            self._rgb_hits.index_copy_(0, rows, rw)
        self._dirty.index_fill_(0, rows, True)

        if num_new > 0:
            self._row_keys[n : n + num_new] = uniq[new]
            self._n = n + num_new
        return num_new

    def _drop_nonfinite(
        self, xyz: Tensor, pix_idx: Tensor, features: Tensor, H: int, W: int
    ) -> tuple[Tensor, Tensor, int, int]:
        """Drop points with a non-finite world position or whose sampled feature touches a NaN/inf cell.

        Returns the kept ``xyz``, ``pix_idx`` and the numbers of points dropped for features and positions.
        """
        # a NaN/inf value makes its cell's channel sum non-finite (a finite sum that overflows only sends the
        # frame through the exact per-value check)
        any_bad_cell = not bool(torch.isfinite(features.sum(dim=0)).all())
        if any_bad_cell:
            bad_cells = ~torch.isfinite(features).all(dim=0)  # (h, w)
            any_bad_cell = bool(bad_cells.any())
        # the common case, no mask: a non-finite coordinate makes the total non-finite (an overflowing total only
        # sends finite points through the exact check below)
        if not any_bad_cell and bool(torch.isfinite(xyz.sum())):
            return xyz, pix_idx, 0, 0
        finite_pts = torch.isfinite(xyz).all(dim=1)
        keep = finite_pts
        n_feat_bad = 0
        if any_bad_cell:
            touched = points_touching(bad_cells, pix_idx, H, W, self.feature_sampling)
            n_feat_bad = int((touched & finite_pts).sum())
            keep = finite_pts & ~touched
        n_pts_bad = int((~finite_pts).sum())
        if n_feat_bad or n_pts_bad:
            xyz, pix_idx = xyz[keep], pix_idx[keep]
        return xyz, pix_idx, n_feat_bad, n_pts_bad

    # ------------------------------------------------------------------ integration
    def integrate(
        self,
        depth: Float[Tensor, "1 H W"] | Float[Tensor, "H W"],
        pose_c2w: Float[Tensor, "4 4"],
        intrinsics: Float[Tensor, "3 3"],
        features: Float[Tensor, "C h w"],
        rgb: Float[Tensor, "3 Hr Wr"] | None = None,
    ) -> dict[str, Any]:
        """Fuse one posed depth frame with its feature (or probability) map into the map.

        Args:
            depth: z-depth in metres, (1, H, W) or (H, W); NaN / non-positive / out-of-range pixels are ignored.
            pose_c2w: camera-to-world pose (4, 4), OpenCV camera axes. A non-finite pose skips the frame.
            intrinsics: K (3, 3) in pixels at depth resolution.
            features: (C, h, w) at any resolution (encoder features), or (K+1, H, W) probabilities in
                probability mode. Sampled bilinearly at the depth pixel centres.
            rgb: optional (3, Hr, Wr) float colour in [0, 1], any resolution (sampled bilinearly).

        Returns:
            Info dict: ``num_points`` (valid pixels fused), ``num_voxels_in_frame``, ``num_new_voxels``,
            ``skipped`` (bool) and ``reason`` (str or None). A frame without any valid depth pixel counts as
            integrated (``reason="no valid depth"``); only non-finite poses are skipped.

        Raises:
            ValueError: on malformed shapes or a channel count different from the map's.
        """
        depth = torch.as_tensor(depth, device=self.device)
        pose_c2w = torch.as_tensor(pose_c2w, device=self.device)
        intrinsics = torch.as_tensor(intrinsics, device=self.device)
        features = torch.as_tensor(features, device=self.device)
        if depth.ndim == 2:
            depth = depth.unsqueeze(0)
        if depth.ndim != 3 or depth.shape[0] != 1:
            raise ValueError(f"depth must have shape (1, H, W) or (H, W), got {tuple(depth.shape)}")
        H, W = depth.shape[1:]
        if pose_c2w.shape != (4, 4):
            raise ValueError(f"pose_c2w must have shape (4, 4), got {tuple(pose_c2w.shape)}")
        if intrinsics.shape != (3, 3):
            raise ValueError(f"intrinsics must have shape (3, 3), got {tuple(intrinsics.shape)}")
        if features.ndim == 4 and features.shape[0] == 1:
            features = features[0]
        if features.ndim != 3:
            raise ValueError(f"features must have shape (C, h, w), got {tuple(features.shape)}")
        if not features.is_floating_point():
            features = features.float()
        C = features.shape[0]
        if self.feature_dim is not None and C != self.feature_dim:
            raise ValueError(f"feature map has {C} channels but the map's feature_dim is {self.feature_dim}")
        if self.mode == "probability" and tuple(features.shape[1:]) != (H, W):
            logger.debug(
                "probability map %s resampled to depth resolution %s", tuple(features.shape[1:]), (H, W)
            )
        if rgb is not None:
            rgb = torch.as_tensor(rgb, device=self.device)
            if rgb.ndim == 4 and rgb.shape[0] == 1:
                rgb = rgb[0]
            if rgb.ndim != 3 or rgb.shape[0] != 3:
                raise ValueError(f"rgb must have shape (3, Hr, Wr), got {tuple(rgb.shape)}")

        info: dict[str, Any] = {
            "num_points": 0,
            "num_voxels_in_frame": 0,
            "num_new_voxels": 0,
            "skipped": False,
            "reason": None,
            "num_dropped_nonfinite": 0,
        }
        frame_no = self.frames_integrated + self.frames_skipped
        if not bool(torch.isfinite(pose_c2w).all()):
            self.frames_skipped += 1
            logger.warning(
                "skipping frame %d: pose_c2w is not finite (%d frames skipped so far)",
                frame_no,
                self.frames_skipped,
            )
            info.update(skipped=True, reason="non-finite pose")
            return info
        self._set_feature_dim(C)

        xyz, pix_idx = backproject(
            depth.unsqueeze(0), intrinsics, pose_c2w.unsqueeze(0), self.min_depth, self.max_depth
        )
        self.frames_integrated += 1
        if xyz.shape[0] == 0:
            info["reason"] = "no valid depth"
            logger.debug("frame %d has no valid depth pixel", frame_no)
            return info
        xyz, pix_idx, n_feat_bad, n_pts_bad = self._drop_nonfinite(xyz, pix_idx, features, H, W)
        if n_feat_bad or n_pts_bad:
            self.points_dropped_nonfinite += n_feat_bad + n_pts_bad
            logger.warning(
                "frame %d: dropped %d of %d points whose values are not finite (%d touch a NaN/inf encoder "
                "feature or probability, %d have a non-finite world position); %d such points so far",
                frame_no,
                n_feat_bad + n_pts_bad,
                xyz.shape[0] + n_feat_bad + n_pts_bad,
                n_feat_bad,
                n_pts_bad,
                self.points_dropped_nonfinite,
            )
            info["num_dropped_nonfinite"] = n_feat_bad + n_pts_bad
            if xyz.shape[0] == 0:
                info["reason"] = "no finite point"
                return info
        order, uniq, counts, voxel_of = group_voxel_indices(voxel_indices(xyz, self.voxel_size))
        pix_sorted = pix_idx.index_select(0, order)
        V = uniq.shape[0]
        patch, weight, bag_start = voxel_patch_bags(
            voxel_of, pix_sorted, V, H, W, features.shape[1], features.shape[2], self.feature_sampling
        )
        table = feature_table(features)
        if n_feat_bad:  # dropped points gave these cells weight > 0; others may touch them with weight exactly 0
            table = torch.nan_to_num(table, nan=0.0, posinf=0.0, neginf=0.0)
        rgb_sums = rgb_counts = None
        if rgb is not None:
            rgb_sums, rgb_counts, n_rgb_bad = point_colour_sums(voxel_of, V, pix_sorted, H, W, rgb)
            if n_rgb_bad:
                self.rgb_points_dropped_nonfinite += n_rgb_bad
                logger.warning(
                    "frame %d: %d points have a NaN/inf colour; fused without colour (%d such points so far)",
                    frame_no,
                    n_rgb_bad,
                    self.rgb_points_dropped_nonfinite,
                )
        num_new = self._merge(uniq, counts, (patch, weight, bag_start, table), rgb_sums, rgb_counts)
        info.update(num_points=int(xyz.shape[0]), num_voxels_in_frame=int(V), num_new_voxels=num_new)
        return info

    # ------------------------------------------------------------------ queries
    def language_features(self) -> Float[Tensor, "N D"]:
        """(N, D) float32 L2-normalised ``encoder.align_to_language(features)`` in row order (a new tensor).

        With ``cache_language`` only rows changed since the last call are re-projected. Needs an encoder.
        """
        if self.mode != "feature":
            raise ValueError("language_features() needs a feature-mode map (a probability map has no language space)")
        if self.encoder is None:
            raise ValueError("language_features() needs an encoder: pass encoder=... to VoxelMap(...) or load(...)")
        return torch.cat([block.float() for _, block in self._language_blocks()])

    def _project(self, feats: Tensor) -> Tensor:
        """L2-normalised ``encoder.align_to_language`` of (M, C) rows, float32 on the map's device."""
        with torch.no_grad():
            enc_device = getattr(self.encoder, "device", self.device)
            lang = self.encoder.align_to_language(feats.float().to(enc_device))
        lang = torch.as_tensor(lang, device=self.device).float()
        if lang.ndim != 2 or lang.shape[0] != feats.shape[0]:
            raise ValueError(f"encoder.align_to_language returned shape {tuple(lang.shape)} for {feats.shape[0]} rows")
        bad = ~torch.isfinite(lang).all(dim=1)
        if bool(bad.any()):
            logger.warning(
                "encoder.align_to_language returned NaN/inf for %d voxel rows; they score 0 in queries", int(bad.sum())
            )
            lang = torch.where(bad.unsqueeze(1), torch.zeros((), device=lang.device), lang)
        return torch.nn.functional.normalize(lang, dim=1)

    def _language_blocks(self) -> list[tuple[int, Tensor]]:
        """``(first_row, (M, D) normalised language rows)`` covering rows 0 .. N in order.

        With the cache: refresh the dirty rows, then return views of the cache chunks (storage dtype). Without:
        project every row, chunk by chunk.
        """
        assert self._feat is not None
        n = self._n
        if not self.cache_language:
            out = []
            for lo, view in self._feat.views(n):
                for a in range(0, view.shape[0], _QUERY_CHUNK):
                    rows = view[a : a + _QUERY_CHUNK]
                    hits = self._hits[lo + a : lo + a + rows.shape[0]]
                    out.append((lo + a, self._project(self._means(rows, hits))))
            return out
        while True:
            dirty_rows = torch.nonzero(self._dirty[:n]).squeeze(1)[:_QUERY_CHUNK]
            if dirty_rows.shape[0] == 0:
                break
            lang = self._project(self._means(self._feat.gather(dirty_rows), self._hits.index_select(0, dirty_rows)))
            if self._lang is None or self._lang.row_shape != (lang.shape[1],):
                self._lang = RowChunks((lang.shape[1],), self._feat.dtype, self.device, self.chunk_rows)
                self._lang.reserve(self._cap)
                if dirty_rows.shape[0] < n:
                    self._dirty[:n] = True  # a fresh cache: every row has to be computed
                    continue
            self._lang.scatter(dirty_rows, lang)
            self._dirty[dirty_rows] = False
        assert self._lang is not None
        return self._lang.views(n)

    def query(self, texts: list[str], softmax_temperature: float = 0.01) -> QueryResult:
        """Score every voxel against free-text queries (feature mode) or class names (probability mode).

        Feature mode: ``sim = normalize(encode_text(texts)) @ normalize(align_to_language(features)).T``; the
        language projection is cached per row and recomputed only for rows changed since the last query.
        Probability mode: each text must be a class name; its vector is one-hot, so ``sim`` is the cosine of the
        one-hot vector with each voxel's probability vector. In both modes
        ``probabilities = softmax(sim / softmax_temperature, dim=0)`` across the queries.

        Args:
            texts: Q query strings.
            softmax_temperature: softmax temperature (0.01 equals the reference's x100 scale).

        Returns:
            A :class:`QueryResult` with (Q, N) similarity and probabilities in the map's row order.

        Raises:
            ValueError: if the map is empty, no encoder is set (feature mode), a text is not a class name
                (probability mode) or the text and language dimensions differ.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("query needs at least one text")
        if self._n == 0:
            raise ValueError("cannot query an empty map: integrate frames first")
        if not softmax_temperature > 0:
            raise ValueError(f"softmax_temperature must be > 0, got {softmax_temperature}")
        if self.mode == "probability":
            names = self.class_names or []
            missing = [t for t in texts if t not in names]
            if missing:
                raise ValueError(f"unknown class name(s) {missing}; this probability map knows {names}")
            idx = torch.tensor([names.index(t) for t in texts], device=self.device)
            feat = self.features.float()
            norm = feat.norm(dim=1).clamp(min=1e-12)
            sim = (feat[:, idx] / norm.unsqueeze(1)).t().contiguous()
        else:
            if self.encoder is None:
                raise ValueError(
                    "query() in feature mode needs an encoder: pass encoder=... to VoxelMap(...) or VoxelMap.load(...)"
                )
            with torch.no_grad():
                text = torch.as_tensor(self.encoder.encode_text(texts), device=self.device).float()
            if text.ndim != 2 or text.shape[0] != len(texts):
                raise ValueError(
                    f"encoder.encode_text returned shape {tuple(text.shape)} for {len(texts)} texts"
                )
            text = torch.nn.functional.normalize(text, dim=1)
            sim = torch.empty(len(texts), self._n, dtype=torch.float32, device=self.device)
            for lo, lang in self._language_blocks():
                if text.shape[1] != lang.shape[1]:
                    raise ValueError(
                        f"text embedding dimension {text.shape[1]} does not match the map's language dimension "
                        f"{lang.shape[1]}"
                    )
                torch.matmul(text, lang.float().t(), out=sim[:, lo : lo + lang.shape[0]])
        probs = torch.softmax(sim / softmax_temperature, dim=0)
        return QueryResult(texts=texts, centers=self.centers, similarity=sim, probabilities=probs)

    # ------------------------------------------------------------------ state and persistence
    def state_dict(self) -> dict[str, Any]:
        """The map's complete state, rows in lexicographic (i, j, k) order (tensors on the map's device).

        Entries: ``voxel_size``, ``mode``, ``feature_dim``, ``class_names``, ``encoder`` (JSON of the encoder's
        config), ``feature_dtype``, ``feature_sampling``, ``min_depth``, ``max_depth``, ``frames_integrated``,
        ``frames_skipped``, ``points_dropped_nonfinite``, ``rgb_points_dropped_nonfinite``, ``keys`` (N, 3) int64 voxel indices, ``features`` (N, C) running mean in the storage
        dtype, ``hits`` (N,) float32, ``rgb`` (N, 3) float32 running-mean colour, ``rgb_hits`` (N,) float32.
        :meth:`from_state_dict` restores a map that keeps integrating exactly.
        """
        n = self._n
        rows = torch.argsort(self._row_keys[:n])
        if self._feat is not None:
            feats = self._means(self._feat.gather(rows), self._hits.index_select(0, rows)) if n else self.features
        else:
            feats = torch.zeros(n, 0, dtype=_DTYPES[self.feature_dtype], device=self.device)
        return {
            "voxel_size": self.voxel_size,
            "mode": self.mode,
            "feature_dim": self.feature_dim,
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "encoder": encoder_config_json(self.encoder),
            "feature_dtype": self.feature_dtype,
            "feature_sampling": self.feature_sampling,
            "min_depth": self.min_depth,
            "max_depth": self.max_depth,
            **self.stats,
            "keys": unpack_keys(self._row_keys[rows]),
            "features": feats,
            "hits": self._hits[rows],
            "rgb": self._rgb[rows],
            "rgb_hits": self._rgb_hits[rows],
        }

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], encoder: Any = None, device: str | torch.device = "cpu"
    ) -> VoxelMap:
        """Build a map from :meth:`state_dict` output (rows in any order).

        Args:
            state: the state entries listed in :meth:`state_dict` (the ``encoder`` entry is informational).
            encoder: encoder to attach for queries.
            device: device of the new map.

        Raises:
            ValueError: one line naming the first problem: a missing entry, a shape mismatch, non-finite values,
                duplicate voxel keys, non-positive hit counts, negative colour counts, a key out of range.
        """
        check_state(state)
        vmap = cls(
            voxel_size=state["voxel_size"],
            mode=state["mode"],
            feature_dim=state["feature_dim"],
            encoder=encoder,
            class_names=state["class_names"],
            device=device,
            feature_dtype=state["feature_dtype"],
            min_depth=state["min_depth"],
            max_depth=state["max_depth"],
            feature_sampling=state["feature_sampling"],
        )
        dev = vmap.device
        vmap._rows_hold_sums = False  # keep the given means bit for bit (see the module doc)
        packed = pack_indices(torch.as_tensor(state["keys"], device=dev).long())
        n = packed.shape[0]
        if n > 1 and not bool((packed[1:] > packed[:-1]).all()):
            order = torch.argsort(packed)
        else:
            order = torch.arange(n, device=dev)
        packed = packed[order]
        vmap._index.lookup_or_append(packed, 0)  # rows 0 .. n-1 in key order (and the 2**31 row limit)
        vmap._ensure_capacity(n)
        vmap._n = n
        vmap._row_keys[:n] = packed
        if vmap.feature_dim is not None:
            vmap._set_feature_dim(vmap.feature_dim)
            assert vmap._feat is not None
            vmap._feat.reserve(n)
            vmap._feat.write(0, torch.as_tensor(state["features"], device=dev)[order])
        vmap._hits[:n] = torch.as_tensor(state["hits"], device=dev).float()[order]
        vmap._rgb[:n] = torch.as_tensor(state["rgb"], device=dev).float()[order]
        vmap._rgb_hits[:n] = torch.as_tensor(state["rgb_hits"], device=dev).float()[order]
        vmap._dirty[:n] = True
        vmap.frames_integrated = int(state["frames_integrated"])
        vmap.frames_skipped = int(state["frames_skipped"])
        for key in OPTIONAL_COUNTERS:  # absent from states written before the counter existed
            setattr(vmap, key, int(state.get(key, 0)))
        return vmap

    def save(self, path: str | os.PathLike) -> None:
        """Write the map to one ``.npz`` file atomically (format: :mod:`ovmap.mapping.map_format`)."""
        write_map_file(path, self.state_dict())
        logger.info("saved %d voxels to %s", len(self), path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, encoder: Any = None, device: str | torch.device = "cpu"
    ) -> VoxelMap:
        """Restore a map saved by :meth:`save` (features read back bit for bit; further frames merge into the saved
        means with the running-mean update, which agrees with an uninterrupted float32 map to float32 rounding)."""
        state = read_map_file(path)
        try:
            vmap = cls.from_state_dict(state, encoder=encoder, device=device)
        except ValueError as err:
            raise ValueError(f"{path}: invalid map: {err}; re-create it (e.g. with `ovmap map`)") from None
        logger.info("loaded %d voxels from %s", len(vmap), path)
        return vmap

    def export_ply(self, path: str | os.PathLike, colors: Tensor | np.ndarray | None = None) -> None:
        """Write voxel centres as a binary little-endian PLY (x y z float, red green blue uchar), atomically.

        Args:
            path: output file.
            colors: optional (N, 3) colours in row order, float in [0, 1] or uint8; default: the map's RGB.
        """
        if colors is None:
            colors = self.rgb
        write_ply(path, self.centers, colors)
