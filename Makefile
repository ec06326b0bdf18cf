# liverseg — the two commands a new machine needs: `make run` and `make test`. Both set up what they use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch that this machine has on disk; elsewhere set TORCH_SPEC (e.g. a CUDA build) or leave it.
TORCH_SPEC ?= torch==2.13.0
CASES ?= 16
PROFILE ?= default
APT_TOOLS := dcm2niix dicom3tools dcmtk plastimatch prometheus prometheus-pushgateway openssl orthanc orthanc-dicomweb
# helm for the chart tests: a pinned static build, fetched once into the ignored tool cache (charts/fetch_helm.py).
HELM := .liverseg/tools/helm

.PHONY: help venv lock tools helm render validate run test check lint bench bench-quality bench-dicom bench-scale \
  reliability-doc clean images test-images bench-msd bench-segment bench-train bench-gpu bench-synth viewer-tools \
  test-viewer

help:
	@echo "make run    - set up, start the embedded store, run the pipeline on $(CASES) synthetic cases, stop the store"
	@echo "make test   - set up, then the whole test suite (starts its own S3 server and tools)"
	@echo "make check  - ruff, mypy and the fast tests (about two minutes)"
	@echo "make test-viewer - the OHIF viewer in headless Chromium on a real Orthanc (installs both; ~3 min)"
	@echo "make lint   - ruff"
	@echo "make images - the five stage images localhost/liverseg-<stage>:<version> (buildah/podman; BASE_IMAGE=...)"
	@echo "make test-images - (re)build the images, then run the pipeline in them as the workflow pods would"
	@echo "make render - Argo WorkflowTemplates/CronWorkflow: the chart's copy, and build/workflows/<overlay>"
	@echo "make validate - workflows, kustomize overlays and the Helm chart against their schemas"
	@echo "make bench  - every benchmark below, one after another (about an hour on 2 cores)"
	@echo "make bench-quality - phantom generators (legacy vs anatomy) under the same CPU budget: phantom and real-CT"
	@echo "                    figures -> bench-results/quality.json (MODES='legacy anatomy seed ...' to choose)"
	@echo "make bench-synth - phantom generators' time and peak memory up to a 512x512x987 grid -> bench-results/synth.json"
	@echo "make bench-dicom - our DICOM<->NIfTI vs dcm2niix and plastimatch on the TCIA series -> bench-results/dicom.json"
	@echo "make bench-scale - convert/group/preprocess over 10, 50, 200 cases: s/case, peak RSS -> bench-results/scale.json"
	@echo "make bench-msd - every stage at Decathlon size vs its pod's memory limit -> bench-results/msd_scale.json"
	@echo "make bench-segment - liverseg segment vs a plain MONAI pipeline on the TCIA series"
	@echo "make bench-train - input pipeline vs train step, step vs a bare MONAI loop, 2 vs 1 processes -> bench-results/train.json"
	@echo "make bench-gpu - the gpu profile on a CUDA machine: step, pipeline, 1-2 GPUs, inference -> bench-results/gpu.json"
	@echo "make reliability-doc - fault and bad-input tests, then docs/RELIABILITY.md from their records"

# requirements.lock pins every dependency but torch (TORCH_SPEC picks that build): the versions the tests ran.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

# After a dependency change in pyproject.toml: install it, then record the venv's versions.
lock: venv
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) tests/lock.py

venv: $(VENV)/.installed

# Reference tools the tests compare against (dcm2niix, dciodvfy, plastimatch), the Pushgateway, and Orthanc with
# its DICOMweb plugin (the PACS of the DICOMweb tests).
tools:
	@missing=""; for t in dcm2niix dciodvfy plastimatch prometheus-pushgateway promtool openssl Orthanc; do \
	  command -v $$t >/dev/null || missing=1; done; \
	test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so || missing=1; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $(APT_TOOLS) >/dev/null; \
	  else echo "install as root: apt-get install $(APT_TOOLS)" >&2; exit 1; fi; fi

run: venv
	$(PY) -m liverseg store up
	status=0; $(PY) -m liverseg run --cases $(CASES) --profile $(PROFILE) || status=$$?; \
	  $(PY) -m liverseg store down; exit $$status

test: venv tools helm
	$(PY) -m ruff check services workflows tests docker charts
	$(PY) -m mypy
	$(PY) -m pytest -q -m "not images and not msd and not viewer"

# Lint, types and the fast tests: the loop while working (about two minutes on 2 cores).
check: venv
	$(PY) -m ruff check services workflows tests docker charts
	$(PY) -m mypy
	$(PY) -m pytest -q -x -m "not slow and not images and not msd and not viewer"

# Each mode (a phantom generator and a profile) on its own 36 fixed phantoms, the same training budget each
# (BUDGET_S seconds), then on the real CT in ../shared/data (~45 min for the two default modes on 2 cores).
BUDGET_S ?= 900
MODES ?= legacy anatomy
# Every benchmark, one after another (about an hour on 2 cores; run on an otherwise idle machine).
bench: bench-dicom bench-scale bench-train bench-quality bench-synth

bench-quality: venv
	$(PY) tests/bench/quality.py --budget-s $(BUDGET_S) --modes $(MODES)

# Phantom generation, each case in its own process: seconds and peak RSS from a make-run case to 512x512x987
# (~2 min on 2 cores) -> bench-results/synth.json.
bench-synth: venv
	$(PY) tests/bench/synth_size.py

$(HELM): charts/fetch_helm.py | venv
	$(PY) charts/fetch_helm.py $(HELM)

helm: $(HELM)

# The chart ships the default rendering (commit it; a test fails while it is stale); each kustomize overlay's
# rendering goes to build/workflows/<overlay> for `kubectl apply -f`.
render: venv
	$(PY) -m liverseg workflows render --out charts/liverseg/files/rendered
	for o in dev hospital; do \
	  $(PY) -m liverseg workflows render --values k8s/overlays/$$o/workflows.yaml --out build/workflows/$$o; done

validate: venv tools helm
	$(PY) -m pytest -q tests/test_workflows.py tests/test_k8s_manifests.py tests/test_chart.py

# convert -> group -> preprocess over 10, 50 and 200 phantoms: s/case and peak RSS -> bench-results/scale.json.
bench-scale: venv
	$(PY) tests/bench/scale.py --sizes 10 50 200 --workers 2

# Every stage on Decathlon-size phantoms (120..987 slices): peak RSS and s/slice against each pod's memory limit
# (fails above 75 %), infer scaling -> bench-results/msd_scale.json; then the faults at that size (store restart,
# a stage killed while it writes a 987-slice case).
bench-msd: venv
	$(PY) tests/bench/msd.py
	$(PY) -m pytest -q -m msd tests/test_msd_faults.py

# liverseg segment on the TCIA series against a plain MONAI pipeline (time, peak memory, where the time goes).
# MODEL=path/model.pt for another model than the newest run's.
bench-segment: venv
	$(PY) tests/bench/segment.py --series $(DICOM_SERIES) $(if $(MODEL),--model $(MODEL))
# The training input pipeline's patches/s (0, 1, 2 workers) against what the step consumes, our step against a bare
# MONAI loop, 2 gloo processes against 1, workers a GPU node needs (~10 min on 2 cores) -> bench-results/train.json.
bench-train: venv
	$(PY) tests/bench/train.py --out bench-results/train.json

# On a CUDA machine (TORCH_SPEC with a CUDA build): the gpu profile's step (fp32, AMP), its pipeline with workers,
# 1 and 2 GPUs, inference on a 512x512x400 study -> bench-results/gpu.json. Runs on a CPU too, slowly.
bench-gpu: venv
	$(PY) tests/bench/gpu.py --out bench-results/gpu.json

# DICOM -> NIfTI vs dcm2niix and NIfTI -> DICOM vs plastimatch on the 134-slice TCIA series in ../shared/data
# (DICOM_SERIES=dir for another), whole processes, median of interleaved runs -> bench-results/dicom.json.
DICOM_SERIES ?= ../shared/data/tcia_pancreas_ct_cb001_dicom/dicom
bench-dicom: venv tools
	$(PY) tests/bench/dicom.py --series $(DICOM_SERIES) --out bench-results/dicom.json

# docs/RELIABILITY.md from the fault-injection and bad-input tests' own records (and bench-results/scale.json).
# The Decathlon-size rows (*-msd-*) come from make bench-msd and are kept; the others are measured again.
reliability-doc: venv tools
	mkdir -p .liverseg/reliability && find .liverseg/reliability -name '*.json' ! -name '*-msd-*' -delete
	$(PY) -m pytest -q tests/test_reliability.py tests/test_bad_input_corpus.py
	$(PY) tests/bench/reliability_doc.py

lint: venv
	$(PY) -m ruff check services workflows tests docker charts

clean:
	-$(PY) -m liverseg store down
	rm -rf .liverseg bench-results

# Stage images (docker/). BASE_IMAGE=local builds a Debian bookworm base with debootstrap (no registry needed);
# elsewhere e.g. `make images BASE_IMAGE=python:3.11-slim`, and BASE_IMAGE_GPU=<CUDA runtime image> for the train
# and infer images. The wheelhouse and build context are cached under .liverseg/images (see docker/build.py).
BASE_IMAGE ?= local
IMAGE_ENV = BASE_IMAGE='$(BASE_IMAGE)' BASE_IMAGE_GPU='$(BASE_IMAGE_GPU)' TORCH_SPEC='$(TORCH_SPEC)' \
  TORCH_SPEC_GPU='$(TORCH_SPEC_GPU)' IMAGE_TAG='$(IMAGE_TAG)'
images: venv
	$(IMAGE_ENV) $(PY) docker/build.py

# The browser test: OHIF's prebuilt app (npm, pinned; its dist/ is all that is served), Debian's Chromium driven
# by Playwright (pip, in the dev extra; never `playwright install`), Orthanc from `tools`. ~3 min on 2 cores; it
# refreshes the screenshot in docs/viewer/.
OHIF_VERSION ?= 3.12.10
OHIF_DIST := .liverseg/viewer/package/dist
$(OHIF_DIST)/index.html:
	@command -v npm >/dev/null || { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null; \
	  else echo "install npm (apt-get install npm)" >&2; exit 1; fi; }
	rm -rf .liverseg/viewer && mkdir -p .liverseg/viewer
	cd .liverseg/viewer && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null && \
	  tar xzf ohif-app-$(OHIF_VERSION).tgz && rm ohif-app-$(OHIF_VERSION).tgz
	test -f $@

viewer-tools:
	@command -v chromium >/dev/null || { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "install as root: apt-get install chromium" >&2; exit 1; fi; }

test-viewer: venv tools viewer-tools $(OHIF_DIST)/index.html
	$(PY) -m pytest -q -m viewer tests/test_viewer.py

# The image tests build (or re-use) the images themselves; under CI=true they install podman/buildah if missing.
test-images: venv
	$(IMAGE_ENV) $(PY) -m pytest -q -m images tests/test_images.py
