# syntax=docker/dockerfile:1
# One image for every ectplan pod on Kubernetes (k8s/): the gRPC front runs its command
# (`ectplan serve`, configured by ECTPLAN_FRONT_* variables); the Ray head, the workers and the
# RayJob submitter run what KubeRay puts in its place (`bash -c "... ray start ..."`,
# `ray job submit`) with the same Python and the same Ray as the front's Ray Client needs.
#
#   docker build -t ectplan:0.1.0 .                                   # CPU
#   docker build --build-arg GPU=true -t ectplan-gpu:0.1.0 .          # + numba-cuda
#
# GPU: numba.cuda comes from the numba-cuda package (NUMBA_CUDA below). Its CUDA libraries
# (NVVM, NVRTC, the runtime) come as pip wheels through its cu13 extra and are found in
# site-packages; the driver (libcuda.so.1) is the node's, mounted into the container by the
# NVIDIA container toolkit when the pod asks for nvidia.com/gpu. cu13 needs a driver >= 580;
# build with NUMBA_CUDA="numba-cuda[cu12]==0.30.4" for older drivers (>= 525).

ARG PYTHON_VERSION=3.11
ARG DEBIAN_RELEASE=bookworm

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/ectplan
WORKDIR /src
COPY pyproject.toml README.md LICENSE NOTICE ./
COPY optimizer ./optimizer
COPY services ./services
# pyproject.toml pins every dependency (==): these are the image's versions, Ray's included,
# which must equal the RayCluster's rayVersion (tests/k8s check both).
RUN /opt/ectplan/bin/pip install . \
    && /opt/ectplan/bin/pip freeze --exclude ectplan > /opt/ectplan/constraints.txt

ARG GPU=false
ARG NUMBA_CUDA="numba-cuda[cu13]==0.30.4"
# Constrained to what is installed, so the GPU variant never moves numba or numpy.
RUN if [ "$GPU" = "true" ]; then \
        /opt/ectplan/bin/pip install --constraint /opt/ectplan/constraints.txt "$NUMBA_CUDA"; \
    fi

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE}
# A fixed numeric user: the pods' securityContext runs as 10001 (runAsNonRoot).
RUN groupadd --system --gid 10001 ectplan \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/ectplan --create-home \
        --shell /bin/bash ectplan
COPY --from=build /opt/ectplan /opt/ectplan
# The root file system is read-only in the pods: caches go to /tmp (an emptyDir there).
# NVIDIA_DRIVER_CAPABILITIES: the toolkit mounts the compute libraries (GPU variant).
ENV PATH=/opt/ectplan/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    RAY_USAGE_STATS_ENABLED=0 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /home/ectplan
# front gRPC and metrics; Ray GCS, dashboard, client server and metrics.
EXPOSE 50051 9090 6379 8265 10001 8080
CMD ["ectplan", "serve"]
