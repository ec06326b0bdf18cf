"""Cutting a slice stack into fixed-size groups (the method's 64-slice batches).

Policies (``GroupConfig``):
- remainder ``overlap`` (default): groups start every ``size`` slices; when slices are left over, one last group
  ends at the last slice and overlaps its neighbour, so every slice is in at least one group and every group
  has exactly ``size`` slices. The overlap is recorded on the group.
- remainder ``drop`` (the published method): the leftover slices after the last full group are discarded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from liverseg.errors import InputError


@dataclass(frozen=True)
class SliceGroup:
    """Slices ``start`` (inclusive) to ``stop`` (exclusive) of the stack; ``overlap`` slices shared with the
    previous group."""

    index: int
    start: int
    stop: int
    overlap: int = 0

    @property
    def name(self) -> str:
        return f"g{self.index:03d}"

    def as_dict(self) -> dict[str, int | str]:
        return {"name": self.name, **asdict(self)}


def plan_groups(n_slices: int, size: int, remainder: str = "overlap") -> list[SliceGroup]:
    if size < 1:
        raise ValueError("group size must be positive")
    if n_slices < size:
        raise InputError(f"series has {n_slices} slices, fewer than the group size {size}")
    full = n_slices // size
    groups = [SliceGroup(i, i * size, (i + 1) * size) for i in range(full)]
    leftover = n_slices - full * size
    if leftover and remainder == "overlap":
        groups.append(SliceGroup(full, n_slices - size, n_slices, overlap=size - leftover))
    elif remainder not in ("overlap", "drop"):
        raise ValueError(f"unknown remainder policy {remainder!r}")
    return groups


def dropped_slices(n_slices: int, groups: list[SliceGroup]) -> int:
    covered = set()
    for g in groups:
        covered.update(range(g.start, g.stop))
    return n_slices - len(covered)


def slab(volume, start: int, stop: int):
    """Slices ``start``..``stop`` of a volume as a volume of its own: the affine of its own first slice."""
    import numpy as np

    from liverseg.imaging.geometry import Volume

    affine = volume.affine.copy()
    affine[:3, 3] = (volume.affine @ np.array([0.0, 0.0, float(start), 1.0]))[:3]
    # A copy in the array's own memory order (Fortran for volumes read from DICOM/NIfTI: no reshuffle).
    return Volume(volume.array[:, :, start:stop].copy(order="K"), affine)
