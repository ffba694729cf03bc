"""`mlkit run`: the train pipeline through papermill into a real MLflow store, a foreign CSV, and every bad input."""
import json, sqlite3
from pathlib import Path
import numpy as np, pandas as pd
import pytest
from conftest import ROOT, run_mlkit

CI = ROOT / "params" / "ci.yaml"


def _runs(store_dir):
    "(run_id, status) of every run in the SQLite store in `store_dir`."
    db = Path(store_dir) / "mlflow.db"
    if not db.exists(): return []
    with sqlite3.connect(db) as con:
        return con.execute("select run_uuid, status from runs").fetchall()


@pytest.mark.slow
def test_train_demo_records_everything(trained_store):
    import mlflow
    from mlflow import MlflowClient
    mlflow.set_tracking_uri(trained_store["uri"])
    c = MlflowClient()
    out = trained_store["stdout"]
    assert "FINISHED" in out and "test_roc_auc" in out and "mlflow ui --backend-store-uri" in out
    run = c.get_run(trained_store["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.estimator"] == "hist_gradient_boosting" and run.data.params["data.n_rows"] == "1500"
    for m in ("test_roc_auc", "test_pr_auc", "test_accuracy", "cv_roc_auc_mean", "cv_roc_auc_std"):
        assert m in run.data.metrics, f"missing metric {m}: {sorted(run.data.metrics)}"
    assert 0.6 < run.data.metrics["test_roc_auc"] <= 1.0
    tags = run.data.tags
    for t in ("mlkit.git_commit", "mlkit.git_dirty", "mlkit.params_hash", "mlkit.data_fingerprint", "mlkit.version", "mlkit.seed", "mlkit.pipeline", "mlkit.packages"):
        assert tags.get(t), f"missing lineage tag {t}"
    assert tags["mlkit.pipeline"] == "train" and tags["mlkit.seed"] == "0"
    arts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"notebook", "plots", "data"} <= arts, arts
    plots = {Path(a.path).name for a in c.list_artifacts(run.info.run_id, "plots")}
    assert {"confusion_matrix.png", "roc_curve.png", "pr_curve.png", "calibration.png"} <= plots, plots
    assert [a.path for a in c.list_artifacts(run.info.run_id, "notebook")] == ["notebook/kernel.log", "notebook/train.ipynb"]
    assert tags["mlkit.engine"] == "inprocess"          # mlkit's own pipelines run in the runner's process by default
    assert "quality_report.json" in {Path(a.path).name for a in c.list_artifacts(run.info.run_id, "data")}
    mv = c.get_model_version("credit", "1")
    assert mv.run_id == run.info.run_id
    from mlkit.tracking import load_model_meta, load_sklearn_model
    meta = load_model_meta("models:/credit/1")
    assert meta["signature"] and meta["schema"]["target"] == "default" and meta["task"] == "binary" and meta["profile"]
    model = load_sklearn_model("models:/credit/1")
    assert hasattr(model, "predict_proba")


def _artifacts(c, run_id, path=None):
    "Every artifact path under `path` of a run, recursively."
    out = set()
    for a in c.list_artifacts(run_id, path):
        out |= _artifacts(c, run_id, a.path) if a.is_dir else {a.path}
    return out


@pytest.mark.slow
def test_both_engines_keep_the_same_record(trained_store, tmp_path):
    "The in-process default and `--engine kernel` record the same params, metrics, tags, artifacts and registered version."
    from mlflow import MlflowClient
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = run_mlkit("run", "train", "-p", CI, "--set", "model_name=credit", "--engine", "kernel", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert r.returncode == 0, r.stderr
    a, b = MlflowClient(trained_store["uri"]), MlflowClient(uri)
    ra, rb = a.get_run(trained_store["run_id"]), b.search_runs(["1"])[0]
    assert (ra.info.status, rb.info.status) == ("FINISHED", "FINISHED")
    assert ra.data.params == rb.data.params and ra.data.metrics == rb.data.metrics
    assert set(ra.data.tags) == set(rb.data.tags)
    assert (ra.data.tags["mlkit.engine"], rb.data.tags["mlkit.engine"]) == ("inprocess", "kernel")
    same = ("mlkit.params_hash", "mlkit.data_fingerprint", "mlkit.eval_fingerprint", "mlkit.cache_key", "mlkit.registered_model")
    assert {k: ra.data.tags[k] for k in same} == {k: rb.data.tags[k] for k in same}
    assert _artifacts(a, ra.info.run_id) == _artifacts(b, rb.info.run_id)
    va, vb = a.get_model_version("credit", "1"), b.get_model_version("credit", "1")
    assert set(va.tags) == set(vb.tags) and va.tags["mlkit.params_hash"] == vb.tags["mlkit.params_hash"]


@pytest.mark.slow
def test_executed_notebook_holds_outputs(trained_store):
    import mlflow
    mlflow.set_tracking_uri(trained_store["uri"])
    path = mlflow.artifacts.download_artifacts(run_id=trained_store["run_id"], artifact_path="notebook/train.ipynb")
    nb = json.loads(Path(path).read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert injected and '"model_name": "credit"' in "".join(injected[0]["source"])
    contract = nb["cells"][0]
    assert contract["metadata"]["tags"] == ["injected-mlkit-run"] and trained_store["run_id"] in "".join(contract["source"])
    outputs = json.dumps([c.get("outputs", []) for c in nb["cells"] if c["cell_type"] == "code"])
    assert trained_store["run_id"] in outputs, "the executed notebook shows the run it logged to"


@pytest.mark.slow
def test_foreign_csv_trains_with_only_a_params_file(tmp_path):
    rng = np.random.default_rng(7)
    n = 600
    df = pd.DataFrame({"Sepal Width (cm)": rng.normal(3, 0.5, n), "colour": rng.choice(["red", "green", "blue", None], n),
                       "count": rng.integers(0, 50, n), "flag": rng.choice([True, False], n),
                       "when": pd.date_range("2020-01-01", periods=n, freq="D").astype(str)})
    df["Churned?"] = np.where(df["Sepal Width (cm)"] + (df.colour == "red") + rng.normal(0, 0.5, n) > 3.3, "yes", "no")
    df.loc[rng.choice(n, 30), "count"] = np.nan
    df.to_csv(tmp_path / "customers.csv", index=False)
    (tmp_path / "p.yaml").write_text("data:\n  source: customers.csv\n  target: Churned?\n  task: binary\n")
    r = run_mlkit("run", "train", "-p", "p.yaml", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert r.returncode == 0, r.stderr
    assert "FINISHED" in r.stdout and "test_roc_auc" in r.stdout
    assert [s for _, s in _runs(tmp_path)] == ["FINISHED"]


@pytest.mark.slow
def test_regression_csv_trains(tmp_path):
    "Issues 11.2-11.4 through `mlkit run`: a name unique per row is left out with a note, a column derived from the target is warned"
    "about, `--set model_name=null` registers nothing."
    import mlflow
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"owner": [f"Person {i}" for i in range(400)], "x1": rng.normal(size=400), "x2": rng.choice(list("abc"), 400)})
    df["price"] = 3 * df.x1 + (df.x2 == "a") + rng.normal(0, 0.1, 400)
    df["price_eur"] = 0.92 * df.price
    df.to_parquet(tmp_path / "houses.parquet")
    (tmp_path / "p.yaml").write_text("data: {source: houses.parquet, target: price, task: regression}\nmodel: {estimator: ridge}\n")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = run_mlkit("run", "train", "-p", "p.yaml", "--set", "model_name=null", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert r.returncode == 0, r.stderr
    assert "test_rmse" in r.stdout and "test_r2" in r.stdout and "registered" not in r.stdout
    assert "note: leaving column 'owner' out of the features: it looks like an identifier (text unique in 400 of 400 rows)" in r.stderr
    assert "warning: column 'price_eur' alone predicts the target 'price' almost perfectly" in r.stderr
    client = mlflow.MlflowClient(uri)
    assert client.search_registered_models() == []
    run = client.search_runs([client.get_experiment_by_name("mlkit").experiment_id])[0]
    schema = json.loads(Path(client.download_artifacts(run.info.run_id, "data/schema.json", str(tmp_path))).read_text())
    assert "owner" not in schema["columns"] and {"x1", "x2", "price_eur"} <= set(schema["columns"])


# --- bad input: a clear message, a non-zero exit, and no run left RUNNING ----------------------------------------------

def _frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.choice(["x", "y"], n), "y": rng.integers(0, 2, n)})


def _write(tmp_path, name, df=None, text=None):
    p = tmp_path / name
    if text is not None: p.write_text(text)
    else: df.to_csv(p, index=False)
    return name


EMPTY_CSV = "a,b,y\n"
BAD = {
    # name: (setup(tmp) -> extra args, expected message fragment, pre_kernel)
    "missing params file": (lambda t: ["-p", "nope.yaml"], "params file 'nope.yaml' not found", True),
    "yaml syntax error": (lambda t: ["-p", _write(t, "bad.yaml", text="data:\n  source: [oops\n")], "not valid YAML at line", True),
    "unknown key": (lambda t: ["--set", "data.sorce=x.csv"], "unknown key 'data.sorce' — did you mean 'source'?", True),
    "wrong type": (lambda t: ["--set", "evaluate.cv_folds=three"], "'evaluate.cv_folds': Input should be a valid integer", True),
    "unknown estimator": (lambda t: ["--set", "model.estimator=xgboosted"], "unknown estimator 'xgboosted'", True),
    "unknown hyperparameter": (lambda t: ["--set", "model.estimator=random_forest", "--set", "model.hyperparams.max_iter=5"], "max_iter", True),
    "data file missing": (lambda t: ["--set", "data.source=missing.csv", "--set", "data.target=y"], "missing.csv", True),
    "target column missing": (lambda t: ["--set", f"data.source={_write(t, 'd.csv', _frame())}", "--set", "data.target=label"], "label", True),
    "single class": (lambda t: ["--set", f"data.source={_write(t, 'd.csv', _frame().assign(y=1))}", "--set", "data.target=y"], "single class", False),
    "empty data": (lambda t: ["--set", "data.source=" + _write(t, "d.csv", text=EMPTY_CSV), "--set", "data.target=y"], "empty", True),
    "text in numeric column": (lambda t: ["--set", f"data.source={_write(t, 'd.csv', _frame().astype({'a': object}).assign(a=lambda d: d.a.where(d.index != 5, 'abc')))}",
                                          "--set", "data.target=y"], "'a'", False),
    "all-NaN column": (lambda t: ["--set", f"data.source={_write(t, 'd.csv', _frame().assign(c=np.nan))}", "--set", "data.target=y"], "'c'", False),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case, tmp_path):
    setup, fragment, pre_kernel = BAD[case]
    args = setup(tmp_path)
    r = run_mlkit("run", "train", *args, "--set", "data.n_rows=300", cwd=tmp_path,
                  env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}) if "-p" not in args else \
        run_mlkit("run", "train", *args, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert r.returncode != 0
    assert fragment in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    err_lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(err_lines) == 1, r.stderr
    runs = _runs(tmp_path)
    if pre_kernel: assert runs == [], "no run may be created for a params mistake"
    else: assert [s for _, s in runs] == ["FAILED"], runs


@pytest.mark.slow
def test_failed_run_keeps_partial_notebook(tmp_path):
    import mlflow
    src = _write(tmp_path, "d.csv", _frame().assign(y=1))   # a single class: found only once the data is loaded, in the notebook
    r = run_mlkit("run", "train", "--set", f"data.source={src}", "--set", "data.target=y", cwd=tmp_path,
                  env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert r.returncode == 1, r.stderr
    [(run_id, status)] = _runs(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    run = mlflow.MlflowClient().get_run(run_id)
    assert status == "FAILED" and "DataError" in run.data.tags["mlkit.error"]
    nb = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="notebook/train.ipynb")).read_text())
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "DataError"


def _notebook(cells, tagged=True):
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "mlkit", "display_name": "mlkit", "language": "python"}
    for i, src in enumerate(cells):
        c = nbformat.v4.new_code_cell(src)
        if i == 0 and tagged: c.metadata["tags"] = ["parameters"]
        nb.cells.append(c)
    return nbformat.writes(nb)


@pytest.mark.slow
def test_notebook_without_parameters_cell(tmp_path):
    (tmp_path / "mine.ipynb").write_text(_notebook(["x = 1", "print(x)"], tagged=False))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    r = run_mlkit("run", "mine.ipynb", "--set", "x=2", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "has no cell tagged 'parameters'" in r.stderr, r.stderr
    assert _runs(tmp_path) == []
    r = run_mlkit("run", "mine.ipynb", "--engine", "inprocess", cwd=tmp_path, env=env)   # nothing to inject: it simply runs, tracked
    assert r.returncode == 0 and [s for _, s in _runs(tmp_path)] == ["FINISHED"], r.stderr


@pytest.mark.slow
def test_notebook_cell_that_raises(tmp_path):
    (tmp_path / "mine.ipynb").write_text(_notebook(["n = 2", "print('ok', n)", "raise ValueError(f'boom {n}')", "print('never')"]))
    r = run_mlkit("run", "mine.ipynb", "--set", "n=5", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert r.returncode == 1
    assert "cell 3 (raise ValueError(f'boom {n}')) raised ValueError: boom 5" in r.stderr, r.stderr
    assert [s for _, s in _runs(tmp_path)] == ["FAILED"]


@pytest.mark.slow
def test_generic_notebook_parameter_checks(tmp_path):
    (tmp_path / "mine.ipynb").write_text(_notebook(["n = 2", "print(n)"]))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    r = run_mlkit("run", "mine.ipynb", "--set", "m=5", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "unknown parameter 'm'" in r.stderr
    r = run_mlkit("run", "mine.ipynb", "--set", "n=five", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "parameter 'n' expects int" in r.stderr
    r = run_mlkit("run", "mine.ipynb", "--set", "n=7", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "FINISHED" in r.stdout, r.stderr


def test_help_answers_without_heavy_imports():
    "`mlkit --help` and a subcommand's --help parse and exit 0 (bench/bench_cli.py measures how fast)."
    import subprocess
    from conftest import mlkit_cmd
    for sub in ([], ["run"], ["serve"], ["tune"]):
        r = subprocess.run(mlkit_cmd(*sub, "--help"), capture_output=True, text=True)
        assert r.returncode == 0 and "usage: mlkit" in r.stdout, r.stderr
    assert "--n-trials" in subprocess.run(mlkit_cmd("tune", "--help"), capture_output=True, text=True).stdout   # generated from the schema


THREADS_SPY = r'''
import json, sys
from threadpoolctl import threadpool_info
import mlkit.evaluate as mev
from mlkit.cli import main
omp = lambda: [i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"]
seen, real = [], mev.cross_validate_model
def spy(*a, **k): seen.append(omp()); return real(*a, **k)
mev.cross_validate_model = spy   # what train_model calls, with the threads it was given
code = main(["run", "train", "-p", sys.argv[1], "--set", "model_name=null", "--force"])
print(json.dumps({"code": code, "during": seen, "after": omp()}))
'''


@pytest.mark.slow
@pytest.mark.skipif((__import__("os").cpu_count() or 1) < 2, reason="one core: one OpenMP thread either way")
def test_training_a_small_table_uses_one_openmp_thread_unless_the_user_chose(tmp_path):
    import os, subprocess, sys
    free = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MLKIT_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    def run(env):
        r = subprocess.run([sys.executable, "-c", THREADS_SPY, str(ROOT / "params" / "ci.yaml")], cwd=tmp_path, capture_output=True,
                           text=True, env={**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1])
    small = run(free)
    assert small["code"] == 0 and small["during"] == [[1]] and small["after"] == [os.cpu_count()], small   # 2,000 rows: one thread
    chosen = run({**free, "OMP_NUM_THREADS": "2"})
    assert chosen["during"] == [[2]], chosen                                                                   # the user's choice stands


@pytest.mark.slow
def test_a_notebook_kernel_gets_the_users_openmp_wait_policy_not_mlkits(tmp_path):
    "mlkit's own process waits passively; your notebook's kernel keeps the policy you left (none, or yours), even after `import mlkit`."
    import os, subprocess
    from conftest import mlkit_cmd
    cells = ["out = 'policy.json'", "import json, os\nbefore = os.environ.get('OMP_WAIT_POLICY')\nimport mlkit, mlkit.record\n"
             "json.dump([before, os.environ.get('OMP_WAIT_POLICY')], open(out, 'w'))"]
    (tmp_path / "mine.ipynb").write_text(_notebook(cells))
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "MLKIT_SET_OMP_WAIT_POLICY")}
    base["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    def seen(env, out):
        r = subprocess.run(mlkit_cmd("run", "mine.ipynb", "--set", f"out={out}"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads((tmp_path / out).read_text())
    assert seen(base, "unset.json") == [None, None]                                         # as in JupyterLab
    assert seen({**base, "OMP_WAIT_POLICY": "PASSIVE"}, "chosen.json") == ["PASSIVE", "PASSIVE"]   # the user's choice stands
