"""The Airflow DAG (examples/airflow/mlkit_dag.py) run by Airflow's own `dag.test()`, calling the real `mlkit` on a temporary store.

Airflow is not one of mlkit's dependencies: the test builds a virtual environment with it once and keeps it under
~/.cache/mlkit-test/airflow-<version>-py<X.Y> ($MLKIT_TEST_CACHE moves it), with a migrated Airflow database to copy, so later
runs start in seconds. All scenarios run in one Airflow process, in order, on one MLflow store:
  bad_params  a typo in the train params: `validate` fails, nothing trains
  alert       validate → train (v1) → promote (champion) → monitor a shifted batch (exit 3) → retrain (v2) → promote_retrained,
              which the gate refuses (exit 1: the run goes on, the refusal shows as `retrained_champion_kept` and in the log)
  healthy     monitor an unshifted batch (exit 0) → healthy; nothing retrains (the training tasks are marked done, not run)
  bad_batch   monitor a batch that does not exist (exit 2): the run fails
"""
import fcntl, json, os, re, shutil, subprocess, sys, time
from pathlib import Path
import pytest
from conftest import BIN, ROOT, run_mlkit

# four DAG runs, two of them training: minutes, more than pytest.ini's 600 s on a busy machine (and the first build of the venv)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

AIRFLOW_VERSION = os.environ.get("MLKIT_TEST_AIRFLOW_VERSION", "3.3.2")
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
CACHE = Path(os.environ.get("MLKIT_TEST_CACHE", Path.home() / ".cache" / "mlkit-test")) / f"airflow-{AIRFLOW_VERSION}-py{PY}"
DAG_FILE = ROOT / "examples" / "airflow" / "mlkit_dag.py"


def _airflow_env(home:Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "VIRTUAL_ENV", "PYTHONPATH"))}
    return env | {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent),
                  "AIRFLOW__CORE__UNIT_TEST_MODE": "False", "PYTHONNOUSERSITE": "1"}


def _build_venv(dest:Path) -> dict:
    "Install Airflow into `dest`/venv and migrate an Airflow database in `dest`/home; `dest`/ready.json (written last) marks it done."
    shutil.rmtree(dest, ignore_errors=True)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", dest / "venv"], check=True)
    r = subprocess.run([dest / "venv" / "bin" / "pip", "install", "-q", f"apache-airflow=={AIRFLOW_VERSION}"], capture_output=True, text=True)
    if r.returncode: return {"error": f"pip install apache-airflow=={AIRFLOW_VERSION} failed:\n{r.stderr[-3000:]}"}
    t1 = time.monotonic()
    r = subprocess.run([dest / "venv" / "bin" / "airflow", "db", "migrate"], env=_airflow_env(dest / "home"), capture_output=True, text=True)
    if r.returncode: return {"error": f"airflow db migrate failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"}
    timings = {"install_s": round(t1 - t0, 1), "migrate_s": round(time.monotonic() - t1, 1)}
    (dest / "ready.json").write_text(json.dumps(timings))
    return timings


@pytest.fixture(scope="session")
def airflow_venv():
    "The cached Airflow venv: {'python': ..., 'db': migrated airflow.db to copy, 'built': timings if built in this run}."
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with open(CACHE.parent / f"{CACHE.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)           # two test runs at once build it once
        built = None
        if not (CACHE / "ready.json").exists():    # absent after an interrupted or failed build: start again
            built = _build_venv(CACHE)
            if "error" in built:
                if os.environ.get("CI"): pytest.fail(built["error"])
                pytest.skip(f"Airflow could not be installed here: {built['error'][:500]}")
    print(f"\nAirflow {AIRFLOW_VERSION} venv: {CACHE}" + (f" (built now: {built})" if built else " (cached)"))
    return {"python": CACHE / "venv" / "bin" / "python", "db": CACHE / "home" / "airflow.db", "built": built}


RUNNER = r'''
import json, re, sys, time, importlib.util
spec = importlib.util.spec_from_file_location("mlkit_dag", sys.argv[1]); mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
out = {}
for sc in json.loads(open(sys.argv[2]).read()):
    t0 = time.monotonic()
    print(f"===== scenario {sc['name']} =====", flush=True)
    dr = mod.dag_object.test(run_conf=sc["conf"], mark_success_pattern=sc.get("mark_success"))
    out[sc["name"]] = {"state": str(dr.state), "seconds": round(time.monotonic() - t0, 1),
                       "tasks": {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}}
    print(f"===== end {sc['name']}: {out[sc['name']]['state']} =====", flush=True)
open(sys.argv[3], "w").write(json.dumps(out))
'''


@pytest.fixture(scope="module")
def dag_runs(airflow_venv, tmp_path_factory):
    "Run every scenario with `dag.test()`; returns (results by scenario, the Airflow output, the work folder)."
    work = tmp_path_factory.mktemp("airflow_work")
    home = work / "airflow"; home.mkdir()
    shutil.copy(airflow_venv["db"], home / "airflow.db")
    uri = f"sqlite:///{work}/mlflow.db"
    for args in (["shifted.csv", "--rows", 600, "--seed", 7, "--shift", "covariate"], ["fresh.csv", "--rows", 600, "--seed", 9],
                 ["labelled.csv", "--rows", 3000, "--seed", 8, "--shift", "covariate"]):
        run_mlkit("demo-data", *args, cwd=work, check=True)
    (work / "typo.yaml").write_text("data:\n  sorce: mlkit:credit\n")
    fast = ["evaluate.explain=false", "evaluate.plots=false"]           # the same pipeline, without the explanation plots
    base = {"workdir": str(work), "model_name": "credit", "train_params": str(ROOT / "params" / "ci.yaml"),
            "promote_params": str(ROOT / "params" / "promote.yaml"), "monitor_params": str(ROOT / "params" / "monitor.yaml"),
            "labels": "labelled.csv", "train_sets": fast, "monitor_sets": ["plots=false"]}
    skip_training = r"^(validate|train|promote|champion_\w+)$"        # marked successful without running: monitoring only
    scenarios = [
        {"name": "bad_params", "conf": base | {"train_params": "typo.yaml", "batch": "shifted.csv"}},
        # the first gate has no champion to beat: absolute thresholds only (the CI model's fairness gap is not the subject here);
        # the second one, after retraining, must beat the champion by a whole unit of ROC AUC: always refused
        {"name": "alert", "conf": base | {"batch": "shifted.csv", "promote_sets": ["fairness.max_gap={}", "min_delta=1.0"]}},
        {"name": "healthy", "conf": base | {"batch": "fresh.csv"}, "mark_success": skip_training},
        {"name": "bad_batch", "conf": base | {"batch": "no-such-batch.csv"}, "mark_success": skip_training},
    ]
    (work / "scenarios.json").write_text(json.dumps(scenarios))
    env = _airflow_env(home) | {"MLKIT_BIN": str(BIN / "mlkit"), "MLFLOW_TRACKING_URI": uri}
    t0 = time.monotonic()
    with open(work / "airflow.log", "w") as log:             # written as it goes: look at it when a run hangs
        r = subprocess.run([airflow_venv["python"], "-c", RUNNER, DAG_FILE, work / "scenarios.json", work / "results.json"],
                           cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, timeout=1500)
    out = (work / "airflow.log").read_text()
    assert r.returncode == 0, f"the Airflow runner failed (exit {r.returncode}):\n{out[-6000:]}"
    results = json.loads((work / "results.json").read_text())
    print(f"\nAirflow dag.test(): {time.monotonic() - t0:.0f} s for 4 runs: " + ", ".join(f"{k} {v['seconds']} s" for k, v in results.items()))
    return results, out, work, uri


def _section(log:str, name:str) -> str:
    return log[log.index(f"===== scenario {name} ====="):log.index(f"===== end {name}:")]


def _champion(uri:str) -> str:
    import mlflow
    return str(mlflow.MlflowClient(tracking_uri=uri).get_model_version_by_alias("credit", "champion").version)


def test_bad_params_stop_at_validate(dag_runs):
    res, log, _, _ = dag_runs
    r = res["bad_params"]
    assert r["state"] == "failed", r
    assert r["tasks"]["validate"] == "failed"
    assert r["tasks"]["train"] == "upstream_failed", r["tasks"]                 # nothing trained
    assert "sorce" in _section(log, "bad_params")                              # mlkit's own message, in the task log


def test_alert_retrains_and_the_gate_decides(dag_runs):
    res, log, _, uri = dag_runs
    r, t = res["alert"], res["alert"]["tasks"]
    assert r["state"] == "success", r                  # a drift alert and a refused promotion are outcomes, not failures
    ran = ("validate", "train", "promote", "champion_moved", "monitor", "retrain", "promote_retrained", "retrained_champion_kept")
    assert {k: t[k] for k in ran} == dict.fromkeys(ran, "success"), t
    assert t["champion_kept"] == t["healthy"] == t["retrained_champion_moved"] == "skipped", t
    section = _section(log, "alert")
    assert "PROMOTED: credit champion (none) → v1" in section and "verdict: ALERT" in section
    assert "data.source=labelled.csv" in section                                 # retrained on the labelled new data
    assert "WARNING: the gate refused credit v2; champion unchanged" in section  # the refusal, visible in the log
    assert _champion(uri) == "1"                                                 # ...and in the registry


def test_healthy_batch_takes_the_healthy_branch(dag_runs):
    res, log, _, uri = dag_runs
    r, t = res["healthy"], res["healthy"]["tasks"]
    assert r["state"] == "success", r
    assert t["monitor"] == "success" and t["healthy"] == "success", t
    assert t["retrain"] == t["promote_retrained"] == "skipped", t
    assert re.search(r"verdict: (HEALTHY|WARN)", _section(log, "healthy"))
    assert _champion(uri) == "1"


def test_bad_batch_fails_the_run(dag_runs):
    res, log, _, _ = dag_runs
    r, t = res["bad_batch"], res["bad_batch"]["tasks"]
    assert r["state"] == "failed", r
    assert t["monitor"] == "failed"
    assert t["healthy"] in ("upstream_failed", "skipped") and t["retrain"] in ("upstream_failed", "skipped"), t
    section = _section(log, "bad_batch")
    assert "exited 2" in section and "no-such-batch.csv" in section
