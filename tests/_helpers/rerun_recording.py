"""Shared by the visualisation tests: the small scene's voxel size, reading a rerun recording (.rrd) and an
ovmap PLY back."""

from __future__ import annotations

import numpy as np

VOXEL = 0.1  # voxel size of the small mapped scene of tests/vis/conftest.py (metres)


def read_entities(path) -> dict[str, list]:
    """entity path -> list of (frame or None, {column: value}) rows, from the .rrd via rerun's reader."""
    import pyarrow as pa
    from rerun.chunk import RrdReader

    rows: dict[str, list] = {}
    for chunk in RrdReader(path).stream().to_chunks():
        batch = chunk.to_record_batch()
        columns = {
            name: batch.column(i).to_pylist()
            for i, name in enumerate(batch.schema.names)
            if not pa.types.is_timestamp(batch.schema.field(i).type)
        }
        frames = columns.get("frame", [None] * batch.num_rows)
        for r in range(batch.num_rows):
            rows.setdefault(str(chunk.entity_path), []).append(
                (frames[r], {k: v[r] for k, v in columns.items() if k not in ("frame", "log_time")})
            )
    return rows


def last_value(rows: list, column: str):
    """The value of ``column`` at the latest frame among the rows that have it."""
    have = [(f if f is not None else -1, row[column]) for f, row in rows if row.get(column) is not None]
    assert have, f"no rows with {column}"
    return max(have, key=lambda t: t[0])[1]


def read_ply(path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) float32 xyz and (N, 3) uint8 colours of a binary little-endian ovmap PLY."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii")
    assert "format binary_little_endian 1.0" in header
    dtype = np.dtype([("xyz", "<f4", 3), ("rgb", "u1", 3)])
    rows = np.frombuffer(data[end:], dtype=dtype)
    return rows["xyz"], rows["rgb"]
