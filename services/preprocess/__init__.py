"""preprocess stage: MONAI transforms from NIfTI groups/volumes to network-ready arrays."""
