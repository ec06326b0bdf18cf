"""group stage: each case's DICOM series → groups of N slices → NIfTI image and label per group."""
