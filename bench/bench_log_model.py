"""Logging the model to MLflow: mlkit's `tracking.log_model` against `mlflow.sklearn.log_model` with its defaults
(pip-requirement inference). Goal: mlkit under 0.5 s. Same model, same store, same run of this script."""
import os, statistics, sys, tempfile, time
from pathlib import Path

if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    d = tempfile.mkdtemp(prefix="bench-log-")
    os.chdir(d)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{d}/mlflow.db"
    import mlflow, skops.io as sio
    from mlkit import checks, data, models, tracking
    df = data.make_credit_data(5000, seed=0)
    schema = checks.infer_schema(df, target="default", id_column="id")
    X, y = df.drop(columns=["default", "id"]), df["default"]
    model = models.make_model(schema, task="binary", seed=0).fit(X, y)
    tracking.configure(); mlflow.set_experiment("bench")
    base, cand = [], []
    with mlflow.start_run():  # warm-up: store migrations and imports
        tracking.log_model(model, X_sample=X, schema=schema, task="binary", name="warmup")
    for i in range(n):
        with mlflow.start_run():
            t0 = time.perf_counter(); tracking.log_model(model, X_sample=X, schema=schema, task="binary"); cand.append(time.perf_counter() - t0)
        with mlflow.start_run():
            t0 = time.perf_counter()
            mlflow.sklearn.log_model(model, name="model", serialization_format="skops", input_example=X.head(5),
                                     skops_trusted_types=tracking.check_trusted(sio.get_untrusted_types(data=sio.dumps(model))))
            base.append(time.perf_counter() - t0)
    sys.path.insert(0, str(Path(__file__).parent))
    from _util import report
    _, c = report("log model", "mlflow.sklearn.log_model (defaults)", base, "mlkit tracking.log_model", cand, goal="< 0.5 s")
    print(f"  {'PASS' if c < 0.5 else 'FAIL'}: {c:.3f} s")
