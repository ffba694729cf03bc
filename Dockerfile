# mlkit serving image: `docker build -t mlkit-serve .` then
#   docker run -p 8000:8000 -e MLFLOW_TRACKING_URI=http://mlflow:5000 -e MLKIT_MODEL_URI=models:/credit@champion \
#              -e MLKIT_SERVE_TOKEN=... mlkit-serve
# The model is pulled by URI at start-up (and followed when its alias moves); nothing is baked in.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
    MLKIT_MODEL_URI=models:/credit@champion MLKIT_WORKERS=1 MLKIT_PORT=8000

# libgomp: OpenMP runtime used by scikit-learn's HistGradientBoosting
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 mlkit

WORKDIR /opt/mlkit
COPY settings.ini setup.py README.md MANIFEST.in ./
COPY mlkit ./mlkit
COPY nbs/pipelines ./nbs/pipelines
RUN pip install . && rm -rf /opt/mlkit/*

USER mlkit
WORKDIR /home/mlkit
EXPOSE 8000
# 0.0.0.0 inside the container (the port is only reachable where `docker run -p` publishes it); set MLKIT_SERVE_TOKEN to require auth.
CMD ["sh", "-c", "exec mlkit serve --model \"$MLKIT_MODEL_URI\" --host 0.0.0.0 --port \"$MLKIT_PORT\" --workers \"$MLKIT_WORKERS\" --log-dir /home/mlkit/prediction_log"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"MLKIT_PORT\"]}/ready')"
