"""What a written object says about the code that made it: the package version, plus the image's commit.

Manifests, DICOM UIDs and model cards record ``code_version()``. Kept apart from the store client and numpy so
that the DICOM commands, whose start-up time counts, can use it.
"""

from __future__ import annotations

import os

__all__ = ["ENV_CODE_VERSION", "code_version"]

ENV_CODE_VERSION = "LIVERSEG_CODE_VERSION"  # set in the images to the git commit they were built from


def code_version() -> str:
    """Package version, plus the commit an image was built from when the build recorded one."""
    from liverseg import __version__  # resolved on first use (importlib.metadata, ~40 ms)

    commit = os.environ.get(ENV_CODE_VERSION)
    return f"{__version__}+{commit}" if commit else __version__
