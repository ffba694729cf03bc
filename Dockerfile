# mlkit serving image. Build:  docker build -t mlkit-serve .     (or: podman build -t mlkit-serve .)
# Run:    docker run -p 8000:8000 -e MLFLOW_TRACKING_URI=http://mlflow:5000 -e MLKIT_MODEL_URI=models:/credit@champion \
#                    -e MLKIT_SERVE_TOKEN="$(openssl rand -hex 32)" mlkit-serve
# The container listens on all of its interfaces, so it refuses to start without MLKIT_SERVE_TOKEN (clients send
# `Authorization: Bearer <token>`; /health and /ready stay open for probes). MLKIT_SERVE_ALLOW_UNAUTHENTICATED=true is the
# explicit opt-out, for a network that authenticates by other means. The model is pulled by URI at start-up (and followed when
# its alias moves); nothing is baked in. Other mlkit commands run in the same image: `docker run ... mlkit-serve mlkit monitor ...`.
# BASE_IMAGE: any Debian-based image with Python 3.11 and its venv module (python:3.11-slim by default).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
    PATH=/opt/venv/bin:$PATH \
    MLKIT_MODEL_URI=models:/credit@champion MLKIT_HOST=0.0.0.0 MLKIT_PORT=8000 MLKIT_WORKERS=1 \
    MLKIT_LOG_DIR=/home/mlkit/prediction_log

# libgomp1: the OpenMP runtime of scikit-learn's HistGradientBoosting; the service runs as an unprivileged user
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 mlkit

WORKDIR /opt/mlkit
COPY settings.ini setup.py README.md MANIFEST.in ./
COPY mlkit ./mlkit
COPY nbs/pipelines ./nbs/pipelines
# the Jupyter kernel of the pipelines (`mlkit monitor`, `mlkit run`) is registered now, so they also run on a read-only root
RUN python3 -m venv /opt/venv && pip install . && mlkit kernel && rm -rf /opt/mlkit/*
COPY deploy/docker/entrypoint.sh /usr/local/bin/mlkit-entrypoint

USER 10001
WORKDIR /home/mlkit
EXPOSE 8000
ENTRYPOINT ["sh", "/usr/local/bin/mlkit-entrypoint"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"MLKIT_PORT\"]}/ready', timeout=2)"
