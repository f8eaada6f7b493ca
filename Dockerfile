# Serving image: BentoML + onnxruntime + service/modelkit/monitoring code. Never torch.
# One file, two flavours (see deploy/README.md). No `# syntax=` line: BuildKit would fetch a frontend image.
#   GPU (default): BASE_IMAGE = NVIDIA CUDA/cuDNN runtime, ORT_FLAVOUR=gpu -> onnxruntime-gpu
#   CPU:           BASE_IMAGE = a Debian/Ubuntu image,      ORT_FLAVOUR=cpu -> onnxruntime
# Python packages come from deploy/requirements/serve-<flavour>.lock (generated from pyproject.toml).
# When deploy/wheelhouse/ holds wheels they are the only source (offline build), else PyPI.
ARG BASE_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu22.04

FROM ${BASE_IMAGE} AS python-base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Python 3.11, the project's only version: used as is when the base has it (Debian bookworm),
# else installed from the deadsnakes PPA (Ubuntu CUDA bases ship no Python).
# hadolint ignore=DL3008
RUN if ! python3.11 -c "import ensurepip, venv" >/dev/null 2>&1; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends software-properties-common gpg-agent \
      && add-apt-repository -y ppa:deadsnakes/ppa \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3.11 python3.11-venv \
      && apt-get purge -y software-properties-common gpg-agent && apt-get autoremove -y \
      && rm -rf /var/lib/apt/lists/*; \
    fi

FROM python-base AS builder
ARG ORT_FLAVOUR=gpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY deploy/requirements/ /build/requirements/
COPY deploy/wheelhouse/ /build/wheels/
# --no-deps: the lock already lists every package; pip check proves it is complete and consistent.
RUN python3.11 -m venv /opt/venv \
    && if compgen -G "/build/wheels/*.whl" >/dev/null; then src=(--no-index --find-links /build/wheels); else src=(); fi \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps "${src[@]}" -r "/build/requirements/serve-${ORT_FLAVOUR}.lock" \
    && /opt/venv/bin/pip check \
    && if /opt/venv/bin/pip show torch >/dev/null 2>&1; then echo "torch must not be in the serving image" >&2; exit 1; fi

FROM python-base AS runtime
ARG ORT_FLAVOUR=gpu
LABEL org.opencontainers.image.title="modelserve" \
      org.opencontainers.image.description="BentoML + onnxruntime model service (${ORT_FLAVOUR})"
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# Code and models stay root-owned and read-only for the service user.
COPY modelkit/ /app/modelkit/
COPY monitoring/ /app/monitoring/
COPY service/ /app/service/
# Bytecode compiled now: the root filesystem may be read-only at run time.
RUN /opt/venv/bin/python -m compileall -q /app
COPY exported/ /models/
# MODEL_REGISTRY: registry root the service reads; mount a newer registry and point this at it.
# BENTOML_HOST/BENTOML_PORT are read by `bentoml serve`; the health check follows BENTOML_PORT.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MODEL_REGISTRY=/models \
    BENTOML_HOME=/home/app/bentoml \
    BENTOML_HOST=0.0.0.0 \
    BENTOML_PORT=3000 \
    MODELSERVE_ORT_FLAVOUR=${ORT_FLAVOUR}
USER 10001:10001
EXPOSE 3000
HEALTHCHECK --interval=5s --timeout=4s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('BENTOML_PORT', '3000'), timeout=3)"]
CMD ["bentoml", "serve", "service.app:ModelService"]
