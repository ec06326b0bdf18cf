"""Which series of a study to segment: stated rules over the series' attributes, like MONAI Deploy's series selector.

A study in an archive rarely holds one series: a scanner sends the localizer (scout), the axial acquisition, its
coronal and sagittal reformats, thin and thick reconstructions, a dose report, and later viewers add SEG, RTSTRUCT
or presentation states. A series can be segmented when it is

1. Modality CT,
2. single-frame CT Image Storage (Enhanced CT is not read),
3. not a LOCALIZER (ImageType),
4. axial: its slice normal within ``AXIAL_MIN_COSINE`` of the patient's feet-head axis (coronal and sagittal
   reformats, and the rare coronal acquisition, are not);

of those, ImageType ORIGINAL\\PRIMARY series come first (an axial DERIVED series, such as a thick-slab
reconstruction or a NIfTI converted to DICOM, is chosen only when the study has no original one), and among them
the one with the most slices (ties: the lowest series number, then the UID, so the choice never depends on the
order the archive lists them in). The choice, its reason and every other series with the rule it failed go into
the report and the command's JSON.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from liverseg.errors import InputError

__all__ = ["AXIAL_MIN_COSINE", "SeriesCandidate", "SeriesChoice", "choose_series"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
# |normal · feet-head axis| at least this (about 25 degrees off axial) counts as axial: gantry tilt stays axial.
AXIAL_MIN_COSINE = 0.9


@dataclass(frozen=True)
class SeriesCandidate:
    """What the rules look at in one series (from QIDO-RS and the series' instance metadata)."""

    series_uid: str
    number: str
    description: str
    modality: str
    instances: int
    sop_classes: frozenset[str] = frozenset()
    image_type: tuple[str, ...] = ()     # the most common ImageType among its instances
    orientation: tuple[float, ...] | None = None  # ImageOrientationPatient of its first instance

    def plane(self) -> str:
        """axial, coronal, sagittal or oblique (from the slice normal), or "unknown" without an orientation."""
        if not self.orientation or len(self.orientation) != 6:
            return "unknown"
        r, c = self.orientation[:3], self.orientation[3:]
        normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
        length = math.sqrt(sum(v * v for v in normal)) or 1.0
        x, y, z = (abs(v) / length for v in normal)
        if z >= AXIAL_MIN_COSINE:
            return "axial"
        if y >= AXIAL_MIN_COSINE:
            return "coronal"
        if x >= AXIAL_MIN_COSINE:
            return "sagittal"
        return "oblique"

    @property
    def original(self) -> bool:
        """ImageType ORIGINAL\\PRIMARY: acquired, not reformatted or derived."""
        return [v.upper() for v in self.image_type[:2]] == ["ORIGINAL", "PRIMARY"]

    def rejection(self) -> str | None:
        """The first rule this series fails, as a phrase; None when it can be segmented."""
        if self.modality != "CT":
            return f"Modality {self.modality or 'missing'}, not CT"
        if ENHANCED_CT_STORAGE in self.sop_classes:
            return "Enhanced CT (multi-frame) is not supported"
        if self.sop_classes and CT_IMAGE_STORAGE not in self.sop_classes:
            return f"no CT Image Storage instances (SOP classes {', '.join(sorted(self.sop_classes))})"
        if "LOCALIZER" in (v.upper() for v in self.image_type):
            return "a localizer (ImageType LOCALIZER)"
        plane = self.plane()
        if plane != "axial":
            return f"{plane} slices, not axial" if plane != "unknown" else "no ImageOrientationPatient"
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"series_uid": self.series_uid, "number": self.number, "description": self.description,
                "modality": self.modality, "instances": self.instances, "image_type": "\\".join(self.image_type),
                "plane": self.plane()}


@dataclass
class SeriesChoice:
    """The series chosen, why, and every candidate with the rule it failed (``rejected``: None for qualifiers)."""

    series_uid: str
    reason: str
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"series_uid": self.series_uid, "reason": self.reason, "candidates": self.candidates}


def most_common(values: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    """The most frequent value (the first seen among equals); () for none."""
    return Counter(values).most_common(1)[0][0] if values else ()


def choose_series(candidates: Sequence[SeriesCandidate], study: str) -> SeriesChoice:
    """The series of ``study`` to segment (see the module docstring), or an ``InputError`` naming why none is."""
    if not candidates:
        raise InputError(f"study {study} holds no series")
    usable = [c for c in candidates if c.rejection() is None]
    if not usable:
        found = "; ".join(f"series {c.number or '?'} {c.description!r}: {c.rejection()}" for c in candidates[:4])
        more = f" and {len(candidates) - 4} more" if len(candidates) > 4 else ""
        raise InputError(f"study {study} has no axial CT series to segment ({found}{more})")
    originals = [c for c in usable if c.original]
    pool = originals or usable

    def number(c: SeriesCandidate) -> float:
        try:
            return float(c.number)
        except ValueError:
            return math.inf

    best = min(pool, key=lambda c: (-c.instances, number(c), c.series_uid))

    def verdict(c: SeriesCandidate) -> str | None:
        if c.rejection():
            return c.rejection()
        if c is best:
            return None
        if c not in pool:
            return "ImageType DERIVED or SECONDARY: an original series is preferred"
        return f"fewer slices than series {best.number or best.series_uid}" if c.instances < best.instances \
            else f"same number of slices as series {best.number or best.series_uid}, which comes first"

    kind = "ORIGINAL\\PRIMARY" if originals else "derived (the study has no original axial CT)"
    others = f", the most of {len(pool)}" if len(pool) > 1 else ""
    reason = f"series {best.number or '?'} {best.description!r}: CT, axial, {kind}, {best.instances} slices{others}"
    return SeriesChoice(best.series_uid, reason, [{**c.as_dict(), "rejected": verdict(c)} for c in candidates])
