"""Labels beside their image: the checks a label passes before it becomes a DICOM SEG."""

from __future__ import annotations

import numpy as np

from liverseg.errors import InputError
from liverseg.imaging.geometry import Grid, Volume, reindex, same_grid

LABEL_VALUES = {0, 1, 2}


def check_label(label: Volume, image: Volume | Grid) -> np.ndarray:
    """The label as uint8 on the image's grid (a ``Volume``, or the ``Grid`` of an image never decoded), or an
    ``InputError`` saying why it cannot be.

    A label stored in another axis order or direction over the same voxels (e.g. LAS beside an RAS image) is laid
    onto the image grid exactly (flips/permutations, no interpolation); any other grid difference is refused.
    """
    if same_grid(label.affine, image.affine, label.shape, image.shape, tol_mm=1e-2):
        values = label.array
    else:
        values = reindex(label, image.affine, image.shape, tol_mm=1e-2)
        if values is None:
            raise InputError(f"label grid {label.shape} at {np.round(label.affine[:3, 3], 2).tolist()} "
                             f"differs from the image grid {image.shape} at "
                             f"{np.round(np.asarray(image.affine)[:3, 3], 2).tolist()}")
    if values.dtype.kind == "f" and np.any(np.mod(values, 1) != 0):
        raise InputError("label has non-integer values")
    present = {int(v) for v in np.unique(values)}
    if not present <= LABEL_VALUES:
        raise InputError(f"label values {sorted(present - LABEL_VALUES)} are outside {{0, 1, 2}}")
    if present == {0}:
        raise InputError("label is empty: no liver voxels")
    return values.astype(np.uint8)
