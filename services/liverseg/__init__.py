"""liverseg: liver segmentation on CT, from NIfTI through DICOM and MONAI to masks, stages exchanging data via S3."""


def __getattr__(name: str) -> str:
    # ``__version__`` is resolved on first use (PEP 562): importlib.metadata costs ~50 ms of start-up, which the
    # commands that never print or record the version (``liverseg dicom to-nifti``) should not pay.
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("liverseg")
    except PackageNotFoundError:  # running from a source tree that was not installed
        value = "0.0.0+source"
    globals()["__version__"] = value
    return value
