"""Labels as DICOM Segmentation (SEG) objects that reference their CT series, via highdicom.

Why SEG rather than a second image series: a SEG is what viewers and PACS overlay on the source scan, and each
frame names the CT instance it belongs to, so the label stays voxel-aligned through any reordering or grouping
of the slices. One segment per label value: 1 = liver, 2 = liver tumour (MSD Task03 values); reading maps
segments back to those values.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime, timezone

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from liverseg import __version__
from liverseg.errors import InputError
from liverseg.imaging.dicom_write import derive_uid

NEOPLASM = Code("108369006", "SCT", "Neoplasm")
# label value -> (segment label, category, property type)
MSD_LIVER_SEGMENTS: dict[int, tuple[str, Code, Code]] = {
    1: ("Liver", codes.SCT.Organ, codes.SCT.Liver),
    2: ("Liver tumour", codes.SCT.MorphologicallyAbnormalStructure, NEOPLASM),
}


def _descriptions(values: Sequence[int], algorithm: hd.AlgorithmIdentificationSequence | None
                  ) -> list[hd.seg.SegmentDescription]:
    out = []
    for number, value in enumerate(values, start=1):
        label, category, prop = MSD_LIVER_SEGMENTS[value]
        out.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label, segmented_property_category=category,
            segmented_property_type=prop, anatomic_regions=[codes.SCT.Liver],
            algorithm_type=(hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if algorithm
                            else hd.seg.SegmentAlgorithmTypeValues.MANUAL),
            algorithm_identification=algorithm))
    return out


def label_to_seg(label: np.ndarray, source: Sequence[Dataset], uid_namespace: str, *,
                 algorithm: str | None = None, series_number: int = 2, created: datetime | None = None) -> Dataset:
    """A binary SEG of ``label`` (i, j, k), one frame group per source slice ``source[k]``.

    Every label value present becomes a segment (1 liver, 2 tumour); a label that is all background still gives
    a valid SEG with the liver segment and no frames. ``algorithm`` names the model for automatic
    segmentations; None means the label came from the data set (manual). ``created`` sets the SEG's creation
    date/time (default: now): a pipeline passes its run's plan time, so every attempt at a case, retried or
    concurrent, writes the very same bytes.
    """
    if label.ndim != 3 or label.shape[2] != len(source):
        raise InputError(f"label shape {label.shape} does not match {len(source)} source slices")
    values = sorted(int(v) for v in np.unique(label) if v != 0)
    unknown = [v for v in values if v not in MSD_LIVER_SEGMENTS]
    if unknown:
        raise InputError(f"label has values {unknown} outside {{0, 1, 2}}")
    values = values or [1]
    # highdicom wants (frames, rows, cols) with segment numbers as values.
    frames = np.zeros((label.shape[2], label.shape[1], label.shape[0]), dtype=np.uint8)
    ordered = np.transpose(label, (2, 1, 0))
    for number, value in enumerate(values, start=1):
        frames[ordered == value] = number
    identification = None
    if algorithm:
        identification = hd.AlgorithmIdentificationSequence(
            name=algorithm[:64], version=__version__, family=codes.cid7162.ArtificialIntelligence)
    seg = hd.seg.Segmentation(
        source_images=list(source), pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(values, identification),
        series_instance_uid=derive_uid(uid_namespace, "seg-series"), series_number=series_number,
        sop_instance_uid=derive_uid(uid_namespace, "seg-instance"), instance_number=1,
        manufacturer="liverseg", manufacturer_model_name="liverseg", software_versions=__version__,
        device_serial_number="0", series_description="liverseg liver segmentation",
        content_label="LIVER", content_creator_name="liverseg^",
    )
    # highdicom draws the Dimension Organization UID at random: derive it like every other UID, so the same input
    # gives the same SEG (with ``created`` given, byte for byte).
    dimension_uid = derive_uid(uid_namespace, "dimension-organization")
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = dimension_uid
    if created is not None:
        stamp = created.astimezone(timezone.utc)
        seg.InstanceCreationDate = seg.ContentDate = stamp.strftime("%Y%m%d")
        seg.InstanceCreationTime = seg.ContentTime = stamp.strftime("%H%M%S.%f")
        # highdicom stamps its own contribution with the clock: two pods converting one case at once must write
        # the same bytes, or one's manifest names a checksum the other overwrote.
        for item in getattr(seg, "ContributingEquipmentSequence", []):
            if "ContributionDateTime" in item:
                item.ContributionDateTime = stamp.strftime("%Y%m%d%H%M%S.%f")
    return seg


#: Attributes of a SEG that record when it was made; ``same_seg`` ignores them.
CREATION_TIME_KEYWORDS = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def same_seg(a: Dataset, b: Dataset) -> bool:
    """True when two SEGs are the same object made at different times (all else, UIDs included, equal)."""
    def normalised(ds: Dataset) -> Dataset:
        ds = copy.deepcopy(ds)
        for keyword in CREATION_TIME_KEYWORDS:
            if keyword in ds:
                setattr(ds, keyword, "")
        for item in getattr(ds, "ContributingEquipmentSequence", []):
            if "ContributionDateTime" in item:
                item.ContributionDateTime = ""
        return ds
    return normalised(a) == normalised(b)


def _sct_value(code) -> str:
    """A code's SNOMED CT value; older objects (dcmqi's, many PACS exports) use the retired SNOMED RT ("SRT")
    designator, e.g. T-62000 for Liver = SCT 10200004: translated with pydicom's SRT→SCT table."""
    if code.scheme_designator == "SRT":
        from pydicom.sr._snomed_dict import mapping

        return mapping["SRT"].get(code.value, code.value)
    return code.value


def _frames_sit_on_their_sources(seg_ds: Dataset, positions: dict[str, np.ndarray], tol_mm: float = 1e-2) -> bool:
    """True when every SEG frame that references one of ``positions``' slices lies at that slice's position."""
    checked = 0
    for frame in getattr(seg_ds, "PerFrameFunctionalGroupsSequence", []):
        try:
            uid = str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            where = np.array([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
        except (AttributeError, IndexError, ValueError):
            return False
        if uid in positions:
            if np.linalg.norm(where - positions[uid]) > tol_mm:
                return False
            checked += 1
    return checked > 0


def seg_to_label(seg_ds: Dataset, source_uids: Sequence[str],
                 source_positions: Sequence[Sequence[float]] | None = None) -> np.ndarray:
    """The label map (i, j, k) of a SEG on the source slices ``source_uids`` (k order), MSD values restored.

    Frames are matched to slices by the SOP Instance UIDs they reference. A SEG that does not state that spatial
    locations are preserved (dcmqi's, for one) is accepted when ``source_positions`` (ImagePositionPatient of
    each source slice) show every referencing frame lies on its slice; otherwise it is refused.
    """
    try:
        seg = hd.seg.Segmentation.from_dataset(seg_ds, copy=False)
    except Exception as exc:  # highdicom raises several types for non-SEG or malformed input
        raise InputError(f"not a readable DICOM SEG: {type(exc).__name__}: {exc}") from None
    numbers = list(seg.get_segment_numbers())
    value_of = {}
    for number in numbers:
        prop = seg.get_segment_description(number).segmented_property_type
        value = _sct_value(prop)
        match = [v for v, (_, _, p) in MSD_LIVER_SEGMENTS.items() if p.value == value]
        if not match:
            raise InputError(f"SEG segment {number} has an unknown property type {prop.meaning!r}")
        value_of[number] = match[0]
    referenced = set(seg.get_source_image_uids()[i][2] for i in range(len(seg.get_source_image_uids())))
    missing = [u for u in source_uids if u not in referenced]
    if len(missing) == len(source_uids):
        raise InputError("SEG does not reference any slice of this series")
    if missing:
        # Unreferenced slices have no label, not an empty one: refused rather than guessed as background.
        raise InputError(f"SEG covers {len(source_uids) - len(missing)} of the series' {len(source_uids)} slices "
                         f"({len(missing)} missing, the first SOP Instance UID {missing[0]})")
    kwargs = dict(source_sop_instance_uids=list(source_uids), segment_numbers=numbers, combine_segments=True,
                  skip_overlap_checks=True, dtype=np.uint8)
    try:
        frames = seg.get_pixels_by_source_instance(**kwargs)
    except RuntimeError as exc:
        if "spatial locations" not in str(exc):
            raise
        positions = dict(zip(source_uids, source_positions or [], strict=False))
        if not positions or not _frames_sit_on_their_sources(seg_ds, positions):
            raise InputError("SEG does not say its frames keep their source slices' positions, and they could "
                             "not be checked against the slices") from None
        frames = seg.get_pixels_by_source_instance(**kwargs, ignore_spatial_locations=True)
    label = np.zeros(frames.shape, dtype=np.uint8)
    for number, value in value_of.items():
        label[frames == number] = value
    return np.ascontiguousarray(np.transpose(label, (2, 1, 0)))
