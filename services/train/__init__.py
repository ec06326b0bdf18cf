"""train stage: MONAI 3D U-Net training with checkpoints, resume and model selection on validation cases."""
