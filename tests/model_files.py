"""Model files for tests that need a mask with something in it on real CT, made the way the train stage makes them.

``soft_tissue_model`` is trained for a minute on synthetic phantoms at a coarse spacing: on the TCIA abdomen it
marks the liver with the soft tissue around it (about 14 l, one smooth component), which is what tests of SEG,
RTSTRUCT and the viewer need: a non-empty, organ-shaped mask, quickly. It is no liver model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from liverseg.config import load_profile
from liverseg.data.synth import GridSpec, make_phantom
from liverseg.imaging.geometry import Volume
from liverseg.ml.modelfile import to_bytes
from liverseg.ml.training import Sample, Trainer
from liverseg.ml.transforms import preprocess_pair

SOFT_TISSUE_OVERRIDES = ["preprocess.spacing=[4,4,4]", "train.epochs=8", "train.patch=[48,48,32]", "train.lr=0.01",
                         "train.val_interval=4"]


def soft_tissue_model(path: Path) -> Path:
    profile = load_profile("default", environ={}, overrides=SOFT_TISSUE_OVERRIDES)
    samples = []
    for seed in range(3):
        p = make_phantom(np.random.default_rng(seed), GridSpec((160, 160, 60), (2.0, 2.0, 4.0), (True, True, False)))
        image, label = preprocess_pair(Volume(p.image, p.affine), Volume(p.label, p.affine), profile.preprocess)
        samples.append(Sample(f"phantom_{seed}", torch.from_numpy(image), torch.from_numpy(label)))
    state = Trainer(profile.train, profile.infer, torch.device("cpu")).fit(samples[:2], samples[2:])
    path.write_bytes(to_bytes({"format": "liverseg.model/v1", "state_dict": state.best_model,
                               "profile": profile.model_dump(mode="json")}))
    return path
