"""Hounsfield units of every tissue a phantom paints, per contrast phase, and the per-case palette drawn from them.

Ranges are published adult values (e.g. Kalra & Saini's and Bae's contrast-enhancement curves, the HU tables of
radiology references such as Radiopaedia): unenhanced liver 50–65 HU (below 40 in steatosis, one adult in four),
spleen 5–10 HU below the liver; at the late arterial phase (~35 s) the aorta at 250–400 HU, kidney cortex
150–250 HU against medulla 60–100, pancreas at its peak, liver barely enhanced; at the portal venous phase (~70 s)
liver 90–140 HU, spleen and portal vein above it, kidneys homogeneous; at the delayed phase (3–5 min) everything
near 70–130 HU and contrast in the urine. Muscle is 40–65 HU in every phase, so in every phase something that
is not liver looks like liver: HU alone never separates them.

``random`` mode (SynthSeg's idea for MRI, here for a share of the soft tissues of some cases) draws a
tissue's mean anywhere in the soft-tissue window instead, so the network must also find the liver by its shape
and its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PHASES", "PHASE_WEIGHTS", "RANDOM_RANGE", "SOFT_TISSUES", "TABLE", "Palette", "draw_palette"]

PHASES = ("native", "arterial", "portal", "delayed")
# How often each phase is drawn: portal venous dominates liver CT (and the MSD liver set), the others occur.
PHASE_WEIGHTS = (0.2, 0.25, 0.45, 0.1)

# name: {phase: (low, high) mean HU}; one range for all phases when the phase does not matter.
_ANY = "any"
TABLE: dict[str, dict[str, tuple[float, float]]] = {
    "air": {_ANY: (-1010, -990)},
    "gas": {_ANY: (-1000, -900)},             # bowel and stomach gas
    "lung": {_ANY: (-900, -780)},
    "fat": {_ANY: (-120, -85)},
    "visceral_fat": {_ANY: (-110, -70)},      # mesentery: fat with vessels and strands
    "skin": {_ANY: (-10, 40)},
    "muscle": {"native": (38, 58), "arterial": (42, 62), "portal": (48, 68), "delayed": (48, 66)},
    "liver": {"native": (48, 68), "arterial": (60, 90), "portal": (90, 140), "delayed": (70, 105)},
    "fatty_liver": {"native": (-10, 42), "arterial": (10, 60), "portal": (40, 95), "delayed": (30, 80)},
    "spleen": {"native": (40, 52), "arterial": (80, 140), "portal": (100, 135), "delayed": (70, 100)},
    "kidney_cortex": {"native": (28, 40), "arterial": (150, 250), "portal": (140, 210), "delayed": (100, 150)},
    "kidney_medulla": {"native": (26, 38), "arterial": (60, 100), "portal": (120, 190), "delayed": (110, 160)},
    "urine": {"native": (0, 15), "arterial": (0, 15), "portal": (5, 30), "delayed": (150, 800)},
    "bladder_urine": {"native": (0, 15), "arterial": (0, 15), "portal": (0, 20), "delayed": (20, 300)},
    "pancreas": {"native": (30, 50), "arterial": (90, 150), "portal": (80, 120), "delayed": (60, 90)},
    "artery": {"native": (32, 50), "arterial": (230, 420), "portal": (130, 210), "delayed": (90, 130)},
    "right_heart": {"native": (32, 50), "arterial": (150, 380), "portal": (120, 200), "delayed": (90, 130)},
    "portal_vein": {"native": (32, 50), "arterial": (100, 180), "portal": (150, 220), "delayed": (90, 130)},
    "ivc_upper": {"native": (32, 50), "arterial": (80, 170), "portal": (110, 170), "delayed": (90, 130)},
    "ivc_lower": {"native": (32, 50), "arterial": (40, 90), "portal": (100, 160), "delayed": (90, 130)},
    "hepatic_vein": {"native": (32, 50), "arterial": (45, 90), "portal": (140, 200), "delayed": (90, 130)},
    "myocardium": {"native": (40, 55), "arterial": (90, 140), "portal": (90, 130), "delayed": (70, 100)},
    "bowel_wall": {"native": (30, 48), "arterial": (70, 130), "portal": (70, 115), "delayed": (60, 90)},
    "bowel_fluid": {_ANY: (-5, 25)},
    "feces": {_ANY: (-40, 40)},
    "oral_contrast": {_ANY: (180, 700)},
    "stomach_food": {_ANY: (15, 70)},
    "bile": {_ANY: (0, 25)},
    "uterus": {"native": (35, 55), "arterial": (70, 130), "portal": (80, 130), "delayed": (70, 100)},
    "prostate": {"native": (30, 50), "arterial": (50, 90), "portal": (60, 100), "delayed": (55, 85)},
    "soft_tissue": {"native": (30, 50), "arterial": (50, 90), "portal": (60, 100), "delayed": (55, 85)},
    "csf": {_ANY: (5, 30)},
    "disc": {_ANY: (70, 110)},
    "cartilage": {_ANY: (90, 250)},
    "cancellous": {_ANY: (140, 320)},
    "cortical": {_ANY: (500, 1100)},
    "table": {_ANY: (150, 700)},
    "tumour_hypo": {"native": (-35, -5), "arterial": (-55, -10), "portal": (-75, -25), "delayed": (-55, -15)},
    "tumour_hyper": {"native": (-20, 0), "arterial": (25, 90), "portal": (-35, 5), "delayed": (-40, -10)},
    "cyst": {_ANY: (0, 20)},
}
# Relative to the liver, not absolute: a tumour is darker or brighter than the parenchyma around it.
RELATIVE_TO_LIVER = ("tumour_hypo", "tumour_hyper")
# What random mode may redraw: soft tissue only. Air, fat, bone and contrast keep their physics (the window
# saturates them anyway), and so does the relation of tumours to the liver.
SOFT_TISSUES = ("muscle", "liver", "spleen", "kidney_cortex", "kidney_medulla", "pancreas", "artery", "right_heart",
                "portal_vein", "ivc_upper", "ivc_lower", "hepatic_vein", "myocardium", "bowel_wall", "uterus",
                "prostate", "soft_tissue", "stomach_food", "bile", "urine", "bowel_fluid")
RANDOM_RANGE = (-20.0, 200.0)  # HU: the soft-tissue part of the network's −200..200 window


@dataclass(frozen=True)
class Palette:
    """One case's tissue means (HU) and contrast phase."""

    phase: str
    means: dict[str, float]
    randomised: tuple[str, ...]

    def __getitem__(self, name: str) -> float:
        return self.means[name]


def draw_palette(rng: np.random.Generator, randomise: float = 0.0, steatosis: float = 0.25) -> Palette:
    """Draw the case's phase and a mean HU for every tissue.

    Args:
        rng: the case's generator.
        randomise: probability that the case is drawn in random mode; in a random case each soft tissue is
            redrawn, with probability one half, uniformly in ``RANDOM_RANGE``.
        steatosis: probability of a fatty liver (the liver takes ``fatty_liver``'s range).
    """
    phase = str(rng.choice(PHASES, p=PHASE_WEIGHTS))
    means = {}
    for name, ranges in TABLE.items():
        low, high = ranges.get(phase, ranges.get(_ANY))
        means[name] = float(rng.uniform(low, high))
    if rng.random() < steatosis:
        means["liver"] = means["fatty_liver"]
    # Randomisation draws from its own generator, so a case's anatomy is the same whatever ``randomise`` is.
    own = np.random.default_rng(rng.integers(2**63))
    randomised: list[str] = []
    if own.random() < randomise:
        for name in SOFT_TISSUES:
            if own.random() < 0.5:
                means[name] = float(own.uniform(*RANDOM_RANGE))
                randomised.append(name)
    for name in RELATIVE_TO_LIVER:
        means[name] += means["liver"]
    return Palette(phase=phase, means=means, randomised=tuple(randomised))
