"""The DICOM objects derived from a mask of a DICOM series: ``seg.dcm`` (SEG) and ``rtstruct.dcm`` (RT Structure Set).

Both reference the series' slices by their UIDs, so a series that lacks them (real scanner exports with empty
Study, Series or SOP Instance UIDs exist) cannot have either: ``write_derived`` then writes neither and says why, in
one line, and the mask, overlays and report stand on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from pydicom.dataset import Dataset

__all__ = ["DERIVED_FILES", "REQUIRED_UIDS", "DerivedObjects", "missing_uids", "write_derived"]

SEG_FILE, RTSTRUCT_FILE = "seg.dcm", "rtstruct.dcm"
DERIVED_FILES = (SEG_FILE, RTSTRUCT_FILE)
# What a derived object names of its source slices (SOP Class and Instance), series, study and frame of reference.
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID")


@dataclass
class DerivedObjects:
    """What ``write_derived`` wrote (file names) and what it did not, with the reason (file name -> reason)."""

    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def missing_uids(source: Sequence[Dataset]) -> str | None:
    """None when every slice has the UIDs a derived object references; else the reason, in one line."""
    empty = {keyword: sum(1 for ds in source if not str(ds.get(keyword, "") or "").strip())
             for keyword in REQUIRED_UIDS}
    named = [f"{keyword} (empty in {count} of {len(source)} slices)" for keyword, count in empty.items() if count]
    if not named:
        return None
    return f"the series has no {', '.join(named)}: a derived object cannot reference instances that have no UIDs"


def write_derived(label: np.ndarray, source: Sequence[Dataset], uid_namespace: str, out: Path, *,
                  algorithm: str | None = None, created: datetime | None = None) -> DerivedObjects:
    """``seg.dcm`` and ``rtstruct.dcm`` of ``label`` (i, j, k) on ``source[k]`` into ``out``, UIDs derived from
    ``uid_namespace`` (the same namespace gives the same objects); neither, with the reason, when the slices lack
    the UIDs they would reference. Each file is written aside and renamed: a reader never sees half of one."""
    reason = missing_uids(source)
    if reason is not None:
        return DerivedObjects(skipped=dict.fromkeys(DERIVED_FILES, reason))
    from liverseg.imaging import rtstruct, seg  # highdicom, contourpy: only where a DICOM series is segmented

    objects = {SEG_FILE: seg.label_to_seg(label, source, uid_namespace, algorithm=algorithm, created=created),
               RTSTRUCT_FILE: rtstruct.label_to_rtstruct(label, source, uid_namespace, algorithm=algorithm,
                                                         created=created)}
    for name, ds in objects.items():
        partial = out / f".{name}.partial"
        ds.save_as(partial, enforce_file_format=True)
        partial.replace(out / name)
    return DerivedObjects(written=list(objects))
