"""The plain MONAI pipeline ``make bench-segment`` times ``liverseg segment`` against: the MONAI tutorials' way.

    python tests/bench/monai_segment.py SERIES_DIR MODEL.pt OUT_DIR/

LoadImaged (PydicomReader, the DICOM series folder) → EnsureChannelFirstd → Orientationd RAS → Spacingd →
ScaleIntensityRanged → CropForegroundd → sliding-window inference with the same network, window, overlap and blend
→ Invertd back to the study → threshold → SaveImaged (NIfTI). It does less than ``liverseg segment`` (no largest
component, no DICOM SEG, no overlays, no report): a reference for time and memory, not a product.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from monai import transforms as T
from monai.data import DataLoader, Dataset, decollate_batch
from monai.inferers import sliding_window_inference

from liverseg.config import profile_from_dict
from liverseg.ml.model import build_unet
from liverseg.ml.modelfile import from_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("series", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path, help="output folder: <series folder name>_seg.nii.gz lands there")
    args = parser.parse_args()
    payload = from_bytes(args.model.read_bytes())
    profile = profile_from_dict(payload["profile"])
    cfg, infer = profile.preprocess, profile.infer
    net = build_unet()
    net.load_state_dict(payload["state_dict"])
    net.eval()
    pre = T.Compose([
        T.LoadImaged("image", reader="PydicomReader"),
        T.EnsureChannelFirstd("image"),
        T.Orientationd("image", axcodes="RAS"),
        T.Spacingd("image", pixdim=cfg.spacing, mode="bilinear"),
        T.ScaleIntensityRanged("image", a_min=cfg.window[0], a_max=cfg.window[1], b_min=0.0, b_max=1.0, clip=True),
        T.CropForegroundd("image", source_key="image", select_fn=lambda x: x > 0, margin=cfg.crop_margin,
                          allow_smaller=True),
    ])
    post = T.Compose([
        T.Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True, device="cpu"),
        T.AsDiscreted("pred", argmax=True),
        T.SaveImaged("pred", output_dir=str(args.out), output_postfix="seg", separate_folder=False,
                     resample=False),
    ])
    # As the MONAI tutorials run it: a Dataset and a DataLoader of batch 1, then decollate.
    loader = DataLoader(Dataset([{"image": str(args.series)}], transform=pre), batch_size=1, num_workers=0)
    with torch.no_grad():
        for batch in loader:
            batch["pred"] = sliding_window_inference(batch["image"], roi_size=profile.train.patch, sw_batch_size=1,
                                                     predictor=net, overlap=infer.overlap, mode=infer.blend)
            for item in decollate_batch(batch):
                post(item)


if __name__ == "__main__":
    main()
