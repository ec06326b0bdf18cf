"""convert stage: each case's NIfTI image and label → a DICOM CT series and a DICOM SEG referencing it."""
