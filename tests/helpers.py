"""Test helpers: compare volumes in world space (same voxels at the same places, whatever the axis order)."""

from __future__ import annotations

import numpy as np

from liverseg.imaging.geometry import Volume


def index_map(source: Volume, target: Volume) -> np.ndarray:
    """The 4x4 map from ``source`` voxel indices to ``target`` voxel indices; must be an integer signed
    permutation (the grids hold the same voxel centres)."""
    m = np.linalg.inv(target.affine) @ source.affine
    assert np.allclose(m, np.round(m), atol=1e-3), f"grids do not share voxel centres:\n{m}"
    return np.round(m).astype(int)


def in_grid_of(source: Volume, target: Volume) -> np.ndarray:
    """``source``'s array rearranged onto ``target``'s voxel grid (flips/permutations only)."""
    m = index_map(source, target)
    src_axis_for = [int(np.flatnonzero(m[r, :3])[0]) for r in range(3)]
    arr = np.transpose(source.array, src_axis_for)
    for r in range(3):
        if m[r, src_axis_for[r]] < 0:
            arr = np.flip(arr, axis=r)
    assert arr.shape == target.array.shape, (arr.shape, target.array.shape)
    return arr


def assert_same_volume(a: Volume, b: Volume) -> None:
    np.testing.assert_array_equal(in_grid_of(a, b), b.array)


def snapshot(store, prefix: str) -> dict[str, tuple[str, object]]:
    """Every object under ``prefix`` with its ETag and last-modified time: equal snapshots mean nothing was
    written, not even the same bytes again."""
    return {o.object_name: (o.etag, o.last_modified) for o in
            store.client.list_objects(store.bucket, prefix=prefix, recursive=True)}
