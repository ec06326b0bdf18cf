"""The loop's end in a real browser: the TCIA CT in Orthanc (authentication on), segmented from its study URL with the
results sent back, then opened in the OHIF viewer (its prebuilt app, with the deployed app-config.js, behind the same
one-origin forwarding as the cluster's nginx) in headless Chromium: the study opens, its SEG loads and the
segmentation panel lists the segment "Liver". The screenshot goes to docs/viewer/ (``make test-viewer``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from dicom_helpers import tcia_files
from model_files import soft_tissue_model
from viewer_server import ViewerServer

pytestmark = pytest.mark.viewer
REPO_ROOT = Path(__file__).resolve().parents[1]
OHIF_DIST = Path(os.environ.get("LIVERSEG_OHIF_DIST", REPO_ROOT / ".liverseg" / "viewer" / "package" / "dist"))
CHROMIUM = Path(os.environ.get("LIVERSEG_CHROMIUM", "/usr/bin/chromium"))
APP_CONFIG = REPO_ROOT / "k8s" / "components" / "viewer" / "app-config.js"
SCREENSHOT = REPO_ROOT / "docs" / "viewer" / "ohif-liver-segmentation.png"
SEG_DESCRIPTION = "liverseg liver segmentation"  # the SEG's SeriesDescription (imaging.seg)
SLICES_DOWN = 55  # the TCIA series' image 56 of 134 passes through the liver
# Headless Chromium without a GPU: WebGL2 on SwiftShader, which OHIF's renderer needs.
# True once the viewport's canvas shows the CT: enough pixels that are not black (thumbnails are other canvases).
LIT_VIEWPORT = """() => {
  const c = document.querySelector('[data-cy="viewport-pane"] canvas.cornerstone-canvas');
  if (!c || !c.width) return false;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let lit = 0;
  for (let i = 0; i < d.length; i += 4 * 97) if (d[i] + d[i + 1] + d[i + 2] > 30) lit++;
  return lit > 200;
}"""
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--use-angle=swiftshader",
                  "--enable-unsafe-swiftshader"]


def required(path: Path, what: str) -> Path:
    if path.exists():
        return path
    reason = f"{what} is not at {path} (make test-viewer installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} under CI=true")
    pytest.skip(reason)


def test_the_segmentation_opens_in_ohif_and_is_listed_as_liver(orthanc, tmp_path):
    dist = required(OHIF_DIST / "index.html", "OHIF's prebuilt app").parent
    chromium = required(CHROMIUM, "Chromium")
    from playwright.sync_api import TimeoutError as NotThere
    from playwright.sync_api import expect, sync_playwright

    files = tcia_files()
    orthanc.upload(files)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    model = soft_tissue_model(tmp_path / "model.pt")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LIVERSEG")} | orthanc.env()
    done = subprocess.run([sys.executable, "-m", "liverseg", "segment", orthanc.study_url(study), "--out",
                           tmp_path / "out", "--model", model, "--send-to", orthanc.dicomweb_root],
                          capture_output=True, text=True, env=environ, check=False, timeout=900)
    assert done.returncode == 0, done.stderr
    seg_series = next(s["series_instance_uid"] for s in json.loads(done.stdout)["sent"] if s["modality"] == "SEG")

    console: list[str] = []
    with ViewerServer(dist, APP_CONFIG, orthanc.url) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_FLAGS)
        # The archive asks for its login (basic authentication through the forwarding): the browser answers.
        context = browser.new_context(viewport={"width": 1400, "height": 900},
                                      http_credentials={"username": orthanc.username, "password": orthanc.password})
        page = context.new_page()
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.goto(f"{server.url}/viewer?StudyInstanceUIDs={study}", wait_until="domcontentloaded")
        skip = page.get_by_text("Skip all")  # the first-run tour covers the viewport
        with contextlib.suppress(NotThere):  # no tour this time
            skip.click(timeout=20_000)
        viewport = page.locator('[data-cy="viewport-pane"] canvas.cornerstone-canvas').first
        expect(viewport).to_be_visible(timeout=90_000)
        page.wait_for_function(LIT_VIEWPORT, timeout=90_000)  # the CT drawn, not a black canvas
        # The SEG series (a thumbnail without an image; the RTSTRUCT beside it is one too): open it.
        seg_thumbnail = page.locator('[data-cy="study-browser-thumbnail-no-image"]').filter(
            has_text=SEG_DESCRIPTION).first
        expect(seg_thumbnail).to_be_visible(timeout=60_000)
        seg_thumbnail.dblclick()
        with contextlib.suppress(NotThere):  # an OHIF version that opens it without asking
            page.get_by_role("button", name="Yes").click(timeout=20_000)
        panel = page.get_by_role("region", name="Segmentations")
        if not panel.count():  # a collapsed side panel: open it
            page.locator('[data-cy="panelSegmentation-btn"]').first.click()
        expect(panel).to_contain_text(SEG_DESCRIPTION, timeout=90_000)  # the SEG, not the RTSTRUCT
        expect(panel.get_by_text("Liver", exact=True)).to_be_visible(timeout=30_000)
        # Down to the upper abdomen (the first image is the top of the chest): one slice per wheel step.
        box = viewport.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        for _ in range(SLICES_DOWN):
            page.mouse.wheel(0, 120)
            page.wait_for_timeout(40)
        expect(page.get_by_text(f"I:{SLICES_DOWN + 1} ({SLICES_DOWN + 1}/134)")).to_be_visible(timeout=30_000)
        page.wait_for_timeout(3000)  # the overlay's render on that slice
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(tmp_path / "viewer.png"))
        shutil.copy(tmp_path / "viewer.png", SCREENSHOT)
        browser.close()
    assert seg_series, "the SEG was sent"
    errors = [line for line in console if line.startswith("error") and orthanc.password in line]
    assert not errors, "the archive's password reached the browser console"
