# The train image: `liverseg train` (3D U-Net, checkpoints, the best model). For a GPU build pass a base built from a CUDA
# runtime image: docker/build.py --gpu-base-image IMAGE (make images BASE_IMAGE_GPU=IMAGE) does that.
# Built on the `ml` target of docker/base.Dockerfile (read its header: shared layers, wheelhouse, build args);
# this file adds the liverseg wheel with its `train` extra and nothing else (requirements/train.txt pins the
# whole set; pip check verifies it). Build with docker/build.py (`make images`).
ARG LIVERSEG_BASE=localhost/liverseg-base:ml
FROM ${LIVERSEG_BASE}
USER 0
COPY requirements/train.txt /opt/liverseg/requirements/
RUN --mount=type=bind,target=/ctx \
    python /ctx/pip.whl/pip install --no-cache-dir --no-index --find-links /ctx/wheels \
      -r /opt/liverseg/requirements/train.txt \
 && python /ctx/pip.whl/pip check \
 && liverseg --help >/dev/null \
 && rm -rf /tmp/* /tmp/.[!.]*
# Run as uid 10001 (the pods' runAsUser) in /tmp, the only writable place once the root filesystem is read-only.
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["liverseg"]
CMD ["--help"]
# Last, so that a new commit re-uses every layer above: the version, and the commit every manifest records.
# The same facts are also copied as a file: buildah's layer cache does not see a changed build argument, a changed
# file it does (so the labels and the environment below are never those of an earlier build).
COPY build-info /opt/liverseg/build-info
ARG LIVERSEG_BASE
ARG VERSION=0.0.0
ARG REVISION=
LABEL org.opencontainers.image.title="liverseg-train" \
      org.opencontainers.image.description="liverseg train stage: 3D U-Net training on the preprocessed cases (GPU when present)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="liverseg" \
      org.opencontainers.image.base.name="${LIVERSEG_BASE}"
ENV LIVERSEG_CODE_VERSION=${REVISION}
