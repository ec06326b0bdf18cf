"""liverseg: liver segmentation on CT, from NIfTI through DICOM and MONAI to masks, stages exchanging data via S3."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("liverseg")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
