# The shared base of the five stage images (docker/<stage>.Dockerfile), in three targets built on each other:
#
#   core     OS + Python, the uid-10001 user, a venv at /opt/liverseg, an environment that writes only under /tmp,
#            the dependencies every stage has (store client, config, metrics)
#   imaging  + the imaging stack (nibabel, pydicom, highdicom, pylibjpeg)  -> base of the convert and group images
#   ml       + torch, MONAI, SciPy                                         -> base of the preprocess, train, infer images
#
# Each target adds one layer of packages, so all five images share the OS, core and imaging layers and the three ML
# images share one torch layer (a node pulls it once). A stage image then adds only the liverseg wheel with its
# stage's extra. Why not one self-contained Dockerfile per stage: each would install torch in its own layer, three
# copies of ~1 GB to build, push and pull.
#
# Build it with docker/build.py (`make images`), which prepares the context: wheels/ (a wheelhouse built on the
# host, so the build downloads nothing and works offline), pip.whl (pip runs from its wheel: no pip in the image)
# and requirements/<target>.txt (the exact pins of each target). The wheels are bind-mounted into each RUN, never
# copied, so they take no room in the image. Needs buildah/podman or Docker with BuildKit (RUN --mount).
#
# BASE_IMAGE: any Debian/Ubuntu image. python:3.11-slim by default; a CUDA runtime base (e.g.
# nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04) for the train and infer images; the debootstrap-built
# localhost/liverseg-os:bookworm where no registry can be reached. Python comes from apt when the base has none;
# its major.minor must match the wheelhouse's (checked below).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS core
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --gid 10001 liverseg \
 && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin liverseg \
 && python3 -m venv --without-pip /opt/liverseg
# Root filesystem read-only at run time, /tmp the only writable place: everything that wants a home, a cache or a
# config folder (torch, MONAI, matplotlib, XDG users) is pointed there. No .pyc is written at run time (pip compiled
# them at install).
ENV PATH=/opt/liverseg/bin:${PATH} \
    VIRTUAL_ENV=/opt/liverseg \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    TORCH_HOME=/tmp/.cache/torch \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    LIVERSEG_HOME=/tmp/liverseg \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY python-version requirements/core.txt /opt/liverseg/requirements/
RUN --mount=type=bind,target=/ctx \
    want="$(cat /opt/liverseg/requirements/python-version)" \
 && have="$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
 && if [ "${have}" != "${want}" ]; then \
      echo "base image has Python ${have}, the wheelhouse is for ${want}: set WHEEL_PYTHON to a python${have}" >&2; \
      exit 1; \
    fi \
 && python /ctx/pip.whl/pip install --no-cache-dir --no-index --find-links /ctx/wheels \
      -r /opt/liverseg/requirements/core.txt \
 && rm -rf /tmp/* /tmp/.[!.]*
USER 10001:10001
WORKDIR /tmp

FROM core AS imaging
USER 0
COPY requirements/imaging.txt /opt/liverseg/requirements/
RUN --mount=type=bind,target=/ctx \
    python /ctx/pip.whl/pip install --no-cache-dir --no-index --find-links /ctx/wheels \
      -r /opt/liverseg/requirements/imaging.txt \
 && rm -rf /tmp/* /tmp/.[!.]*
USER 10001:10001

FROM imaging AS ml
USER 0
COPY requirements/ml.txt /opt/liverseg/requirements/
# torch ships C++ test programs (~130 MB) and headers (~60 MB) that only C++ extension builds and torch.compile's
# C++ back end read; liverseg uses neither, so they go (torch_shm_manager, used by DataLoader workers, stays).
RUN --mount=type=bind,target=/ctx \
    python /ctx/pip.whl/pip install --no-cache-dir --no-index --find-links /ctx/wheels \
      -r /opt/liverseg/requirements/ml.txt \
 && site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && rm -rf "${site}/torch/test" "${site}/torch/include" \
 && find "${site}/torch/bin" -type f ! -name torch_shm_manager -delete \
 && rm -rf /tmp/* /tmp/.[!.]*
USER 10001:10001
