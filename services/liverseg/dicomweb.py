"""The archive edge: a PACS or research archive (Orthanc, dcm4chee, a cloud DICOM store) over DICOMweb.

QIDO-RS finds studies and their series, WADO-RS retrieves the chosen series (and the metadata the choice needs),
STOW-RS stores results back; all through ``dicomweb-client``. ``liverseg segment URL --send-to ROOT``, the infer
stage's study mode and ``liverseg watch`` use this module, and only they touch HTTP.

    https://pacs.example/dicom-web/studies/1.2.840.113619.2.55.3        a study URL: the root, then studies/<UID>

Credentials and TLS come from the environment (in the cluster: the Secret ``liverseg-dicomweb`` and the optional
ConfigMap ``liverseg-dicomweb-ca``), never from a URL or a flag, and are registered with the log scrubber:

    LIVERSEG_DICOMWEB_USERNAME, LIVERSEG_DICOMWEB_PASSWORD     HTTP basic
    LIVERSEG_DICOMWEB_TOKEN                                     or a bearer token
    LIVERSEG_DICOMWEB_CA_BUNDLE                                 PEM file of a private CA that signs the archive's TLS
    LIVERSEG_DICOMWEB_RETRY_ATTEMPTS                            tries per request (default 5, backing off 1-16 s)

Failures: the archive unreachable, answering with server errors or refusing the credentials is an
``ArchiveError`` (exit 1, retried); a study or series it does not have, a study with nothing to segment, or a series
whose slices are split across studies is an ``InputError`` about that study (it is set aside, the others go on).
"""

from __future__ import annotations

import base64
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from liverseg.errors import ArchiveError, InputError, SettingsError, UsageError
from liverseg.imaging.series_choice import SeriesCandidate, SeriesChoice, choose_series, most_common
from liverseg.logs import register_secret
from liverseg.settings import ENV_DICOMWEB_PASSWORD, ENV_DICOMWEB_TOKEN

if TYPE_CHECKING:
    from dicomweb_client import DICOMwebClient
    from pydicom.dataset import Dataset

__all__ = [
    "ENV_CA_BUNDLE", "ENV_PASSWORD", "ENV_TOKEN", "ENV_USERNAME", "SERIES_KEY_PREFIX", "Archive", "ArchiveCredentials",
    "Archives", "StudyURL", "check_root", "is_study_url",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

ENV_USERNAME = "LIVERSEG_DICOMWEB_USERNAME"
ENV_PASSWORD = ENV_DICOMWEB_PASSWORD
ENV_TOKEN = ENV_DICOMWEB_TOKEN
ENV_CA_BUNDLE = "LIVERSEG_DICOMWEB_CA_BUNDLE"
ENV_RETRY_ATTEMPTS = "LIVERSEG_DICOMWEB_RETRY_ATTEMPTS"
DEFAULT_RETRY_ATTEMPTS = 5  # dicomweb-client's: about 30 s of an archive restarting or unreachable
_STUDY_URL = re.compile(r"^(?P<root>https?://[^/?#]+(?:/[^?#]*?)?)/studies/(?P<uid>[0-9.]+)/?$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# Attribute tags as QIDO-RS/WADO-RS JSON names them.
STUDY_UID, SERIES_UID, SOP_CLASS, SOP_INSTANCE = "0020000D", "0020000E", "00080016", "00080018"
MODALITY, SERIES_NUMBER, SERIES_DESCRIPTION, INSTANCES = "00080060", "00200011", "0008103E", "00201209"
IMAGE_TYPE, ORIENTATION, STUDY_DATE, STUDY_TIME = "00080008", "00200037", "00080020", "00080030"
FAILED_SOP_SEQUENCE = "FailedSOPSequence"
# How a stage's manifest names a series in an archive it read (an input that is no store object).
SERIES_KEY_PREFIX = "dicomweb:"


def is_study_url(text: str) -> bool:
    """True for what looks like a DICOMweb study URL (``http(s)://…/studies/<UID>``)."""
    return bool(_STUDY_URL.match(str(text)))


def check_root(url: str) -> str:
    """``url`` as a DICOMweb root (no trailing slash), or a ``UsageError``/``SettingsError`` (never echoing a
    password the URL carries)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"not a DICOMweb root URL: {parts.scheme or 'no scheme'}://{parts.hostname or '?'}… "
                         "(want http(s)://HOST[:PORT]/PATH)")
    if parts.username or parts.password:
        # The URL would carry the password into logs, manifests and `ps`: refuse it without repeating it.
        raise SettingsError(f"the archive URL for {parts.hostname} carries credentials: put them in {ENV_USERNAME}/"
                            f"{ENV_PASSWORD} or {ENV_TOKEN} instead")
    return url.rstrip("/")


@dataclass(frozen=True)
class StudyURL:
    """A study in an archive: the DICOMweb root and the StudyInstanceUID."""

    root: str
    study_uid: str

    @classmethod
    def parse(cls, url: str) -> StudyURL:
        match = _STUDY_URL.match(str(url))
        if not match:
            raise UsageError(f"{url!r} is not a DICOMweb study URL (http(s)://HOST[:PORT]/PATH/studies/<UID>)")
        return cls(check_root(match["root"]), match["uid"])

    def __str__(self) -> str:
        return f"{self.root}/studies/{self.study_uid}"


@dataclass(frozen=True)
class ArchiveCredentials:
    """Basic or bearer credentials and a CA bundle; the secrets stay out of ``repr``."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ArchiveCredentials:
        env = os.environ if environ is None else environ
        username, password = env.get(ENV_USERNAME) or None, env.get(ENV_PASSWORD) or None
        token, ca_bundle = env.get(ENV_TOKEN) or None, env.get(ENV_CA_BUNDLE) or None
        register_secret(password)
        register_secret(token)
        if bool(username) != bool(password):
            raise SettingsError(f"set both {ENV_USERNAME} and {ENV_PASSWORD} for basic authentication, or neither")
        if token and username:
            raise SettingsError(f"set either {ENV_USERNAME}/{ENV_PASSWORD} or {ENV_TOKEN}, not both")
        if ca_bundle and not Path(ca_bundle).is_file():
            raise SettingsError(f"{ENV_CA_BUNDLE} names {ca_bundle}, which is not a file")
        return cls(username, password, token, ca_bundle)


def _retry_attempts() -> int:
    value = os.environ.get(ENV_RETRY_ATTEMPTS, "")
    if not value:
        return DEFAULT_RETRY_ATTEMPTS
    if not value.isdigit() or int(value) < 1:
        raise SettingsError(f"{ENV_RETRY_ATTEMPTS} must be a whole number of at least 1 (got {value!r})")
    return int(value)


def _first(item: dict[str, Any], tag: str, default: Any = "") -> Any:
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else default


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    return list((item.get(tag) or {}).get("Value") or [])


def _archive_session(ca_bundle: str | None):
    import requests

    class ArchiveSession(requests.Session):
        """A session that verifies the archive against ``ca_bundle`` when one is given. Plain requests would let
        REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE in the environment win over ``Session.verify``."""

        def merge_environment_settings(self, url, proxies, stream, verify, cert):
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if ca_bundle:
                settings["verify"] = ca_bundle
            return settings

    return ArchiveSession()


class Archive:
    """One DICOMweb root, with the environment's credentials."""

    def __init__(self, root: str, credentials: ArchiveCredentials | None = None):
        from dicomweb_client import DICOMwebClient

        self.root = check_root(root)
        credentials = credentials or ArchiveCredentials.from_env()
        session = _archive_session(credentials.ca_bundle)
        headers = {}
        if credentials.username:
            session.auth = (credentials.username, credentials.password)
            # As it travels in the Authorization header: kept out of logs too.
            register_secret(base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode())
        elif credentials.token:
            headers["Authorization"] = f"Bearer {credentials.token}"
        self.client: DICOMwebClient = DICOMwebClient(self.root, session=session, headers=headers or None,
                                                     timeout=(10, 300))
        # The client retries connection failures and 429/503/504 answers itself, backing off exponentially.
        self.client.set_http_retry_params(max_attempts=_retry_attempts())
        self._metadata: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def _call(self, what: str, fn: Callable[[], T], missing: str | None = None) -> T:
        """``fn()`` with the archive's failures as liverseg errors: 404 → ``InputError(missing)`` when given."""
        import requests

        try:
            return fn()
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status == 404 and missing:
                raise InputError(missing) from None
            if status in (401, 403):
                raise ArchiveError(f"the archive at {self.root} refused the credentials ({status}) to {what}: check "
                                   f"{ENV_USERNAME}/{ENV_PASSWORD} or {ENV_TOKEN}") from None
            raise ArchiveError(f"the archive at {self.root} answered {status} to {what}") from None
        except requests.exceptions.SSLError:
            raise ArchiveError(f"TLS to the archive at {self.root} failed: is its CA in {ENV_CA_BUNDLE}?") from None
        except requests.RequestException as exc:
            raise ArchiveError(f"cannot reach the archive at {self.root} to {what}: {type(exc).__name__}") from None

    # -- QIDO-RS / WADO-RS ---------------------------------------------------------------------------------------
    def ct_studies(self, since: str | None = None, limit: int = 1000) -> list[dict[str, str]]:
        """Studies holding CT, with a StudyDate on or after ``since`` (YYYYMMDD; None: all), oldest first."""
        filters: dict[str, str] = {"ModalitiesInStudy": "CT"}
        if since:
            filters["StudyDate"] = f"{since}-"
        found = self._call("list CT studies", lambda: self.client.search_for_studies(
            search_filters=filters, fields=["StudyDate", "StudyTime"], limit=limit))
        studies = [{"study_uid": str(_first(s, STUDY_UID)), "date": str(_first(s, STUDY_DATE)),
                    "time": str(_first(s, STUDY_TIME))} for s in found if _first(s, STUDY_UID)]
        return sorted(studies, key=lambda s: (s["date"], s["time"], s["study_uid"]))

    def series_candidates(self, study_uid: str) -> list[SeriesCandidate]:
        """Every series of the study, with what the series rules need (CT series: from their instance metadata)."""
        found = self._call(f"list the series of study {study_uid}",
                           lambda: self.client.search_for_series(study_uid), missing=f"study {study_uid} is not in "
                           f"the archive {self.root}")
        if not found:
            raise InputError(f"study {study_uid} is not in the archive {self.root}")
        candidates = []
        for item in found:
            series_uid, modality = str(_first(item, SERIES_UID)), str(_first(item, MODALITY))
            try:
                metadata = self.series_metadata(study_uid, series_uid) if modality == "CT" else []
            except InputError:
                # Orthanc, for one, lists a series filed under two studies but will not read it back.
                self._refuse_split(study_uid, series_uid)
                raise
            orientations = [tuple(float(v) for v in _values(m, ORIENTATION)) for m in metadata]
            candidates.append(SeriesCandidate(
                series_uid=series_uid, number=str(_first(item, SERIES_NUMBER)),
                description=str(_first(item, SERIES_DESCRIPTION)), modality=modality,
                instances=len(metadata) or int(_first(item, INSTANCES, 0) or 0),
                sop_classes=frozenset(str(_first(m, SOP_CLASS)) for m in metadata),
                image_type=most_common([tuple(str(v) for v in _values(m, IMAGE_TYPE)) for m in metadata]),
                orientation=next((o for o in orientations if o), None)))
        return candidates

    def series_metadata(self, study_uid: str, series_uid: str) -> list[dict[str, Any]]:
        """Every instance's metadata (WADO-RS), read once per series for this object's life."""
        if (study_uid, series_uid) not in self._metadata:
            self._metadata[study_uid, series_uid] = self._call(
                f"read the metadata of series {series_uid}",
                lambda: self.client.retrieve_series_metadata(study_uid, series_uid),
                missing=f"series {series_uid} of study {study_uid} is not in the archive")
        return self._metadata[study_uid, series_uid]

    def choose(self, study_uid: str) -> SeriesChoice:
        """The series of the study to segment (``series_choice``), checked to lie wholly in this study."""
        choice = choose_series(self.series_candidates(study_uid), study_uid)
        self._refuse_split(study_uid, choice.series_uid)
        return choice

    def _refuse_split(self, study_uid: str, series_uid: str) -> None:
        """An ``InputError`` when the series also has slices filed under another study (a bad StudyInstanceUID on
        some of them): segmenting the part in this study would silently miss the rest."""
        elsewhere = self._call(f"look for series {series_uid} in other studies",
                               lambda: self.client.search_for_series(search_filters={"SeriesInstanceUID": series_uid}))
        others = sorted({str(_first(s, STUDY_UID)) for s in elsewhere} - {study_uid})
        if others:
            raise InputError(f"series {series_uid} is split across studies {study_uid} and {', '.join(others)} "
                             "(slices with another StudyInstanceUID): fix the UIDs in the archive")

    def instance_uids(self, study_uid: str, series_uid: str) -> list[str]:
        """The SOP Instance UIDs of a series, sorted: what identifies its content (DICOM UIDs name content)."""
        return sorted(str(_first(m, SOP_INSTANCE)) for m in self.series_metadata(study_uid, series_uid))

    def retrieve_series(self, study_uid: str, series_uid: str, folder: Path) -> list[Path]:
        """The series' instances as files ``folder/<SOPInstanceUID>.dcm`` (in their stored transfer syntax)."""
        folder.mkdir(parents=True, exist_ok=True)

        def fetch() -> list[Path]:
            paths = []
            for ds in self.client.iter_series(study_uid, series_uid, media_types=(("application/dicom", "*"),)):
                uid = str(getattr(ds, "SOPInstanceUID", "") or f"instance-{len(paths):05d}")
                path = folder / (f"{uid}.dcm" if _UID.match(uid) else f"instance-{len(paths):05d}.dcm")
                ds.save_as(path, enforce_file_format=True)
                paths.append(path)
            return paths
        paths = self._call(f"retrieve series {series_uid}", fetch,
                           missing=f"series {series_uid} of study {study_uid} is not in the archive")
        if not paths:
            raise InputError(f"series {series_uid} of study {study_uid} has no instances in the archive")
        return paths

    # -- STOW-RS -------------------------------------------------------------------------------------------------
    def store(self, datasets: Sequence[Dataset], study_uid: str) -> list[dict[str, str]]:
        """Store ``datasets`` in the study; the stored instances (SOP Class, Instance UID). An archive that already
        holds an instance keeps it: re-sending the same result (same UIDs) adds nothing."""
        response = self._call(f"store {len(datasets)} instances in study {study_uid}",
                              lambda: self.client.store_instances(list(datasets), study_uid))
        failed = response.get(FAILED_SOP_SEQUENCE) or []
        if failed:
            reasons = ", ".join(f"{item.get('ReferencedSOPInstanceUID', '?')} (reason {item.get('FailureReason', '?')})"
                                for item in failed)
            raise ArchiveError(f"the archive at {self.root} refused to store {reasons} in study {study_uid}")
        return [{"sop_class_uid": str(ds.SOPClassUID), "sop_instance_uid": str(ds.SOPInstanceUID),
                 "series_instance_uid": str(ds.SeriesInstanceUID), "modality": str(ds.Modality)} for ds in datasets]

    def store_files(self, paths: Sequence[Path]) -> list[dict[str, str]]:
        """``store`` of DICOM files (results of one study: it is the first file's)."""
        import pydicom

        datasets = [pydicom.dcmread(p) for p in paths]
        return self.store(datasets, str(datasets[0].StudyInstanceUID)) if datasets else []



class Archives:
    """What a stage needs of study URLs: one ``Archive`` per root, each study's series as a manifest input
    (``series_input``: its content named by its SOP Instance UIDs, which DICOM never reuses for other content),
    and its retrieval (``retrieve``)."""

    def __init__(self, credentials: ArchiveCredentials | None = None):
        self._credentials = credentials or ArchiveCredentials.from_env()  # bad settings: an error now, not later
        self._archives: dict[str, Archive] = {}
        self.choices: dict[str, SeriesChoice] = {}  # study URL -> the series chosen

    def at(self, root: str) -> Archive:
        root = check_root(root)
        if root not in self._archives:
            self._archives[root] = Archive(root, self._credentials)
        return self._archives[root]

    def series_input(self, study_url: str) -> tuple[str, str, int]:
        """The chosen series of the study as (key, content id, instances) for the stage's manifest."""
        import hashlib

        url = StudyURL.parse(study_url)
        archive = self.at(url.root)
        choice = archive.choose(url.study_uid)
        self.choices[str(url)] = choice
        uids = archive.instance_uids(url.study_uid, choice.series_uid)
        content = hashlib.sha256("\n".join(uids).encode()).hexdigest()
        return f"{SERIES_KEY_PREFIX}{url}/series/{choice.series_uid}", content, len(uids)

    def retrieve(self, key: str, folder: Path) -> Path:
        """The series named by a ``series_input`` key, as files in ``folder``."""
        study, _, series_uid = key.removeprefix(SERIES_KEY_PREFIX).rpartition("/series/")
        url = StudyURL.parse(study)
        self.at(url.root).retrieve_series(url.study_uid, series_uid, folder)
        return folder
