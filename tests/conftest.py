"""Shared fixtures: real MLflow stores in temporary folders, data made with fixed seeds, nothing downloaded."""
import os, shutil, sys
from pathlib import Path
import pytest

pytest_plugins = ["servers"]  # real PostgreSQL and mlflow server fixtures (tests/servers.py)

ROOT = Path(__file__).resolve().parents[1]
# The tests run servers beside their load generators and several workers at once on small machines: one native (OpenMP/BLAS)
# thread per process, here and in every `mlkit` subprocess, avoids the spin-wait contention that makes model fits 20x slower.
for _var in ("MLKIT_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
BIN = Path(sys.executable).parent


@pytest.fixture
def tmp_mlflow(tmp_path, monkeypatch):
    "A fresh SQLite MLflow store in tmp_path; the test runs with tmp_path as its working directory."
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run(): mlflow.end_run()


def mlkit_cmd(*args):
    "The installed `mlkit` console script with arguments (as a user would type it)."
    return [str(BIN / "mlkit"), *map(str, args)]


def run_mlkit(*args, cwd=None, env=None, timeout=600, check=False):
    "Run the `mlkit` console script; returns the CompletedProcess (text)."
    import subprocess
    full_env = {**os.environ, **(env or {})}
    r = subprocess.run(mlkit_cmd(*args), cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"mlkit {' '.join(map(str, args))} exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory):
    """A store holding a model trained by the real train pipeline (params/ci.yaml, registered as `credit`, version 1).
    Session-scoped and shared: tests must not move its aliases — use `trained_copy` for that."""
    d = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{d}/mlflow.db"
    r = run_mlkit("run", "train", "-p", ROOT / "params" / "ci.yaml", "--set", "model_name=credit", cwd=d,
                  env={"MLFLOW_TRACKING_URI": uri}, check=True)
    run_id = next(line.split()[1] for line in r.stdout.splitlines() if line.startswith("run "))
    return {"dir": d, "uri": uri, "name": "credit", "version": "1", "run_id": run_id, "model_uri": "models:/credit/1", "stdout": r.stdout}


@pytest.fixture
def trained_copy(trained_store, tmp_path, monkeypatch):
    "A private copy of `trained_store` (same artifacts) as the working directory and tracking store of one test."
    shutil.copy(trained_store["dir"] / "mlflow.db", tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow
    mlflow.set_tracking_uri(uri)
    return {**trained_store, "dir": tmp_path, "uri": uri}
