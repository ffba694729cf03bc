"""Shared fixtures: real MLflow stores in temporary folders, data made with fixed seeds, nothing downloaded."""
import os, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
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
