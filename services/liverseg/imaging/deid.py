"""DICOM de-identification: the PS3.15 Annex E Basic Application Level Confidentiality Profile, with the
Retain Longitudinal Temporal Information with Modified Dates option.

Everything is derived from a secret key with HMAC-SHA256, so it is consistent across files, series and runs that
use the same key, and irreversible without it:
- names and IDs that identify the patient become the same pseudonym (``ANON-`` + 12 hex digits of the HMAC of the
  original Patient ID) wherever they appear;
- every date (DA, and the date part of DT) moves by the same whole number of days per patient (1–3650 days back,
  from the HMAC of the Patient ID), so intervals between a patient's studies are kept;
- every UID is remapped to ``2.25.`` + 128 bits of its HMAC, so references between objects (a SEG's references
  to its CT slices, Frame of Reference) still resolve after de-identification; SOP Class and Transfer Syntax UIDs
  are standard and kept;
- other identifying attributes of the profile (institution, physicians, operators, accession number, free-text
  comments…) are emptied or removed (a device serial number becomes a keyed dummy: some IODs require one), and
  private tags are removed;
- Patient Identity Removed = YES, and De-identification Method (Code Sequence) names the profile and option.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import date, timedelta

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

# UIDs that name standards, not instances: never remapped.
_STANDARD_UID_KEYWORDS = {"SOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID", "ReferencedSOPClassUID",
                          "ImplementationClassUID", "CodingSchemeUID", "ReferencedSOPClassUIDInFile"}
# Identifying attributes replaced by the pseudonym.
_PSEUDONYM_KEYWORDS = {"PatientName", "PatientID"}
# Identifying attributes emptied (type 2 in common IODs: present, zero length).
_EMPTY_KEYWORDS = {"AccessionNumber", "ReferringPhysicianName", "StudyID", "InstitutionName",
                   "InstitutionAddress", "StationName", "PerformingPhysicianName", "OperatorsName",
                   "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "RequestingPhysician",
                   "PatientAddress", "PatientTelephoneNumbers", "OtherPatientIDs", "OtherPatientNames",
                   "PatientBirthName", "PatientMotherBirthName", "MilitaryRank", "EthnicGroup", "Occupation",
                   "AdditionalPatientHistory", "PatientComments", "ImageComments", "StudyComments",
                   "InstitutionalDepartmentName", "ContentCreatorName",
                   "IssuerOfPatientID", "PatientBirthTime", "RequestAttributesSequence"}
# Patient traits the profile removes unless an option keeps them (ours does not).
_REMOVE_KEYWORDS = {"PatientAge", "PatientSize", "PatientWeight", "MedicalRecordLocator",
                    "PatientInsurancePlanCodeSequence"}
METHOD = "PS3.15 Basic Application Confidentiality Profile, Retain Longitudinal Temporal Information Modified Dates"


class Deidentifier:
    """Applies the profile with one secret ``key`` (bytes, at least 16)."""

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ValueError("the de-identification key must be at least 16 bytes")
        self._key = key

    def _digest(self, *parts: str) -> bytes:
        return hmac.new(self._key, "|".join(parts).encode(), hashlib.sha256).digest()

    def pseudonym(self, patient_id: str) -> str:
        return "ANON-" + self._digest("patient", patient_id).hex()[:12].upper()

    def day_shift(self, patient_id: str) -> int:
        return 1 + int.from_bytes(self._digest("dates", patient_id)[:4], "big") % 3650

    def uid(self, original: str) -> str:
        return f"2.25.{int.from_bytes(self._digest('uid', original)[:16], 'big')}"

    def _date(self, value: str, shift: int) -> str:
        """``value`` (DA, or DT: its date part) moved ``shift`` days back; '' for what is not a calendar date or
        would move before year 1 (the profile allows removing a date: better than keeping it or failing)."""
        if len(value) < 8 or not value[:8].isdigit():
            return ""
        try:
            moved = date(int(value[:4]), int(value[4:6]), int(value[6:8])) - timedelta(days=shift)
        except (ValueError, OverflowError):  # '00000000', '20230230'; '00010102' shifted back
            return ""
        return moved.isoformat().replace("-", "") + value[8:]  # strftime's %Y drops the zeros of years < 1000

    def apply(self, ds: Dataset) -> Dataset:
        """De-identify ``ds`` in place (its file meta too) and return it."""
        patient_id = str(getattr(ds, "PatientID", "") or getattr(ds, "PatientName", "") or "unknown")
        pseudonym, shift = self.pseudonym(patient_id), self.day_shift(patient_id)
        ds.remove_private_tags()
        self._walk(ds, pseudonym, shift)
        if getattr(ds, "file_meta", None) is not None and "MediaStorageSOPInstanceUID" in ds.file_meta:
            ds.file_meta.MediaStorageSOPInstanceUID = self.uid(str(ds.file_meta.MediaStorageSOPInstanceUID))
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD[:64]
        ds.DeidentificationMethodCodeSequence = DicomSequence([
            _code("113100", "Basic Application Confidentiality Profile"),
            _code("113107", "Retain Longitudinal Temporal Information Modified Dates Option")])
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
        return ds

    def _walk(self, ds: Dataset, pseudonym: str, shift: int) -> None:
        for element in list(ds):
            keyword = element.keyword
            if element.VR == "SQ":
                if keyword in _REMOVE_KEYWORDS or keyword in _EMPTY_KEYWORDS:
                    element.value = DicomSequence([])
                    continue
                for item in element.value:
                    self._walk(item, pseudonym, shift)
            elif keyword in _REMOVE_KEYWORDS:
                del ds[element.tag]
            elif keyword in _PSEUDONYM_KEYWORDS:
                element.value = f"{pseudonym}^" if element.VR == "PN" else pseudonym  # PN: family name form
            elif keyword == "DeviceSerialNumber" and element.value:
                # Type 1 in some IODs (Enhanced General Equipment): a dummy that still tells devices apart.
                element.value = self._digest("device", str(element.value)).hex()[:16]
            elif keyword in _EMPTY_KEYWORDS:
                element.value = ""
            elif keyword == "PatientBirthDate":
                element.value = self._date(str(element.value), shift) if element.value else ""
            elif element.VR == "UI" and keyword not in _STANDARD_UID_KEYWORDS and element.value:
                values = element.value if element.VM > 1 else [element.value]
                mapped = [self.uid(str(v)) for v in values]
                element.value = mapped if element.VM > 1 else mapped[0]
            elif element.VR in ("DA", "DT") and element.value:
                values = element.value if element.VM > 1 else [element.value]
                moved = [self._date(str(v), shift) for v in values]
                element.value = moved if element.VM > 1 else moved[0]


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item
