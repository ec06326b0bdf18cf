"""The evaluate stage's summary: an empty prediction is reported as such, never a crash or a made-up distance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from liverseg import manifest as mf
from liverseg.imaging.geometry import Volume
from liverseg.stages.evaluate import case_figures, summarize
from liverseg.stages.infer import score


def test_a_case_with_no_liver_predicted_counts_in_dice_and_is_named_beside_hd95():
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    label = np.zeros((20, 20, 10), np.uint8)
    label[5:10, 5:10, 3:6] = 1
    details = score(np.zeros_like(label), Volume(label, affine), Volume(label.astype(np.int16), affine))
    # The infer manifest goes through JSON, which has no inf: the stored HD95 is null.
    record = mf.Manifest(stage="infer", run_id="r", case="empty", fingerprint="f", code_version="v",
                         details=details, **mf.Stopwatch().stamp())
    stored = mf.Manifest.model_validate(json.loads(json.dumps(record.model_dump(mode="json")))).details
    assert stored["hd95_mm"] is None

    per_case = {"empty": case_figures(stored), "good": case_figures({"dice": 0.9, "hd95_mm": 4.0, "liver_ml": 1.0})}
    assert per_case["empty"] == {"dice": 0.0, "hd95_undefined": "no liver predicted", "liver_ml": 0.0}
    summary = summarize(per_case)
    assert summary["mean_dice"] == pytest.approx(0.45) and summary["min_dice"] == 0.0
    assert summary["mean_hd95_mm"] == 4.0 and summary["hd95_cases"] == 1
    assert summary["hd95_undefined"] == {"empty": "no liver predicted"}
    json.dumps(summary, allow_nan=False)  # the summary is plain JSON: no inf or NaN anywhere
