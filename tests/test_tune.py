"""`mlkit tune`: parallel papermill workers on one Optuna study, every trial tracked, resumable, surviving a killed worker.

Real components only: the `mlkit` console script, papermill kernels, a journal file and a real PostgreSQL server as Optuna storages,
and a real SQLite MLflow store — one per module (creating it costs seconds), each test in its own experiment and working folder."""
import os, pwd, shutil, signal, socket, subprocess, sys, tempfile, time
from argparse import Namespace
from pathlib import Path

import pytest
import yaml

from conftest import mlkit_cmd

LR_SPACE = {"logistic_regression": {"C": {"type": "float", "low": 0.001, "high": 100, "log": True}, "max_iter": 500}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    "One SQLite MLflow store for the module, created once."
    import mlflow
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.MlflowClient(uri).search_experiments()  # creates the tables
    return root, uri


@pytest.fixture
def mlstore(store, tmp_path, monkeypatch, request):
    "(tracking URI, experiment name) for this test; runs in tmp_path."
    root, uri = store
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow
    mlflow.set_tracking_uri(uri)
    yield uri, request.node.name.split("[")[0][5:40]
    while mlflow.active_run(): mlflow.end_run()


def write_params(path, experiment, *, n_trials=6, space=LR_SPACE, n_rows=1000, refit=True, **search):
    "A small tune params file: credit data, 3 folds, no explanations; the study journal in the file's folder unless `storage` is given."
    search.setdefault("storage", f"journal:{Path(path).parent / 'optuna.journal'}")
    doc = {"experiment": experiment, "data": {"source": "mlkit:credit", "n_rows": n_rows, "id_column": "id",
                                               "drop_columns": ["application_date"]},
           "evaluate": {"cv_folds": 3, "plots": False, "explain": False},
           "search": {"n_trials": n_trials, "space": space, "refit": refit, "startup_trials": 3, **search}}
    Path(path).write_text(yaml.safe_dump(doc))
    return str(path)


def journal_study(folder, name):
    import optuna
    from optuna.storages.journal import JournalFileBackend
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(JournalFileBackend(str(Path(folder) / "optuna.journal"))))


def mlflow_runs(uri, experiment):
    import mlflow
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def states(study):
    from collections import Counter
    return Counter(t.state.name for t in study.trials)


# ---------------------------------------------------------------- budget, tracking, a killed worker, resume
def test_two_workers_finish_budget_despite_a_killed_worker_then_resume(mlstore, store, tmp_path):
    uri, exp = mlstore
    space = {"hist_gradient_boosting": {"learning_rate": {"type": "float", "low": 0.05, "high": 0.3, "log": True},
                                        "max_iter": 60, "early_stopping": False}}  # about a second a trial: long enough to be caught running
    p = write_params(tmp_path / "tune.yaml", exp, n_trials=8, space=space, n_rows=1500, pruner="none", storage=None)  # default storage
    proc = subprocess.Popen(mlkit_cmd("tune", "-p", p, "--workers", "2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim, complete_before, deadline = None, set(), time.time() + 180
    try:
        while victim is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
            if not (store[0] / "optuna.journal").exists(): continue
            try: trials = journal_study(store[0], f"{exp}-tune").get_trials(deepcopy=False)
            except KeyError: continue  # study not created yet
            done = {t.number for t in trials if t.state.name == "COMPLETE"}
            fresh = [t for t in trials if t.state.name == "RUNNING" and "mlkit:heartbeat" in t.system_attrs
                     and time.time() - t.datetime_start.timestamp() < 0.3]
            if done and fresh:  # kill a worker's kernel right after it claimed a trial
                victim, complete_before = fresh[0], done
                os.kill(victim.system_attrs["mlkit:heartbeat"]["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None: proc.kill()
    assert victim is not None, "no trial could be caught running"
    assert proc.returncode == 0, err[-3000:]
    assert "trials 8/8" in err and "best cv_roc_auc_mean" in out

    # the study: full budget, the killed trial failed with the reason, nothing completed lost, both workers worked
    study = journal_study(store[0], f"{exp}-tune")  # the default journal sits beside the MLflow store
    by_number = {t.number: t for t in study.trials}
    assert len(study.trials) == 8 and not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    assert by_number[victim.number].state.name == "FAIL" and "died" in by_number[victim.number].user_attrs["error"]
    assert all(by_number[n].state.name == "COMPLETE" for n in complete_before)
    assert states(study)["COMPLETE"] == 7
    assert len({t.system_attrs["mlkit:heartbeat"]["worker"] for t in study.trials}) == 2

    # MLflow: one parent run, a nested run per trial (the killed one too), best params, plots, the refitted model on the holdout
    runs = mlflow_runs(uri, exp)
    assert not [x for x in runs if x.info.status == "RUNNING"]
    parents = [x for x in runs if x.data.tags.get("mlkit.pipeline") == "tune"]
    trials = [x for x in runs if x.data.tags.get("mlkit.pipeline") == "tune.trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert len(trials) == 8 and {x.data.tags["mlflow.parentRunId"] for x in trials} == {parent.info.run_id}
    assert sorted(int(x.data.tags["mlkit.trial_number"]) for x in trials) == list(range(8))
    killed = [x for x in trials if x.data.tags["mlkit.trial_state"] == "failed"]
    assert len(killed) == 1 and killed[0].info.status == "FAILED" and "died" in killed[0].data.tags["mlkit.error"]
    assert all("duration_s" in x.data.metrics and "learning_rate" in x.data.params for x in trials)
    assert parent.data.metrics["best_cv_roc_auc"] == pytest.approx(study.best_value)
    assert float(parent.data.params["best.learning_rate"]) == pytest.approx(study.best_params["learning_rate"])
    assert 0.5 < parent.data.metrics["test_roc_auc"] <= 1
    import mlflow
    arts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(parent.info.run_id, "tune")}
    assert {"tune/optimization_history.png", "tune/slice.png", "tune/best.json"} <= arts

    # calling again continues the same study: 2 more trials, a second search run
    from mlkit.config import load_params
    from mlkit.tune import tune
    res = tune(load_params("tune", p, ["search.n_trials=2", "search.refit=false"]), in_process=True, progress=False)
    assert len(journal_study(store[0], f"{exp}-tune").trials) == 10 and res.counts["complete"] == 2
    assert len([x for x in mlflow_runs(uri, exp) if x.data.tags.get("mlkit.pipeline") == "tune"]) == 2


def test_failing_trials_are_recorded_and_search_goes_on(mlstore, tmp_path):
    uri, exp = mlstore
    from mlkit.config import load_params
    from mlkit.tune import tune
    space = {"logistic_regression": {"C": {"type": "float", "low": 0.01, "high": 10, "log": True},
                                     "solver": {"type": "categorical", "choices": ["lbfgs", "no_such_solver"]}}}
    params = load_params("tune", write_params(tmp_path / "t.yaml", exp, n_trials=6, space=space, n_rows=400, refit=False, sampler="random"))
    res = tune(params, in_process=True, progress=False)
    study = journal_study(tmp_path, f"{exp}-tune")
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(study.trials) == 6 and failed and states(study)["COMPLETE"] >= 1
    assert all("no_such_solver" in t.user_attrs["error"] for t in failed)
    assert res.counts["failed"] == len(failed) and study.best_params["solver"] == "lbfgs"
    runs = [x for x in mlflow_runs(uri, exp) if x.data.tags.get("mlkit.trial_state") == "failed"]
    assert len(runs) == len(failed) and all("no_such_solver" in x.data.tags["mlkit.error"] and x.info.status == "FAILED" for x in runs)


# ---------------------------------------------------------------- PostgreSQL (a real server on 127.0.0.1)
def _pg_bindir():
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def postgres():
    "A throwaway PostgreSQL server (Debian's package) on 127.0.0.1:<free port>; yields a URL of an empty database."
    bindir = _pg_bindir()
    if bindir is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], capture_output=True, timeout=900)
        bindir = _pg_bindir()
    if bindir is None:
        if os.environ.get("CI") == "true": pytest.fail("PostgreSQL binaries not found in /usr/lib/postgresql/*/bin; install Debian's postgresql")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="mlkit-pg-"))
    as_pg = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user, in a folder it owns
        pw = pwd.getpwnam("postgres"); os.chown(root, pw.pw_uid, pw.pw_gid); as_pg = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    run = lambda *a: subprocess.run([*as_pg, *map(str, a)], check=True, capture_output=True, timeout=120)
    run(bindir / "initdb", "-D", root / "data", "-U", "postgres", "--auth=trust", "-E", "UTF8")
    run(bindir / "pg_ctl", "-D", root / "data", "-l", root / "server.log", "-w", "-t", "60", "-o",
        f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off", "start")
    try:
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "optuna")
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_on_postgres_finish_budget(mlstore, tmp_path, postgres):
    uri, exp = mlstore
    import optuna
    from mlkit.config import load_params
    from mlkit.study import open_storage
    from mlkit.tune import tune
    params = load_params("tune", write_params(tmp_path / "t.yaml", exp, n_trials=4, n_rows=600, refit=False, storage=postgres,
                                              study_name="pg-study"))
    res = tune(params, workers=2, progress=False)
    study = optuna.load_study(study_name="pg-study", storage=open_storage(postgres))
    assert len(study.trials) == 4 and states(study)["COMPLETE"] + states(study)["PRUNED"] == 4
    assert res.counts["complete"] + res.counts["pruned"] == 4 and not res.worker_errors
    assert len({t.system_attrs["mlkit:heartbeat"]["worker"] for t in study.trials}) == 2
    assert not (tmp_path / "optuna.journal").exists()  # the journal default was not used
    runs = mlflow_runs(uri, exp)
    assert len([x for x in runs if x.data.tags.get("mlkit.pipeline") == "tune.trial"]) == 4
    assert "postgresql://postgres@127.0.0.1" in [x for x in runs if x.data.tags.get("mlkit.pipeline") == "tune"][0].data.tags["mlkit.storage"]


# ---------------------------------------------------------------- bad input: clear message, non-zero exit, nothing left behind
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


BAD = [
    ({"space": {"logistic_regression": {"Cc": {"type": "float", "low": 0.1, "high": 1}}}}, [], "has no parameter 'Cc' — did you mean 'C'?"),
    ({"space": {"logistic_regression": {"C": {"type": "float", "low": 10, "high": 1}}}}, [], r"low \(10.0\) is greater than high \(1.0\)"),
    ({"space": {"logistic_regression": {"solver": {"type": "categorical", "choices": []}}}}, [], "categorical choices are empty"),
    ({"n_trials": 0}, [], "n_trials must be a positive number of trials, got 0"),
    ({}, ["--n-trials", "-3"], "n_trials must be a positive number of trials, got -3"),
    ({}, ["--workers", "0"], "--workers must be at least 1, got 0"),
    ({}, ["--storage", "postgresql://nobody@127.0.0.1:{port}/optuna"], "cannot reach storage 'postgresql://nobody@127.0.0.1:[0-9]+/optuna': .*Connection refused"),
    ({"storage": "journal:/no/such/folder/x.journal"}, [], "does not exist or is not writable"),
]


@pytest.mark.parametrize("search,flags,message", BAD, ids=["unknown-param", "low>high", "empty-choices", "n_trials-0",
                                                           "n-trials-flag", "workers-0", "unreachable-storage", "journal-folder"])
def test_bad_input(tmp_mlflow, tmp_path, capsys, search, flags, message):
    import re
    from mlkit.cli import main
    doc = {"experiment": "tune-test", "data": {"n_rows": 300}, "search": {"space": LR_SPACE, **search}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    code = main(["tune", "-p", str(tmp_path / "bad.yaml"), *[f.format(port=_free_port()) for f in flags]])
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err), err
    assert not (tmp_path / "optuna.journal").exists()  # no study was created
    assert not (tmp_path / "mlflow.db").exists()       # MLflow untouched: no run, so nothing left RUNNING


def test_bad_input_exit_code_from_console_script(tmp_path):
    r = subprocess.run(mlkit_cmd("tune", "--workers", "0", "--set", "data.n_rows=300"), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "error: --workers must be at least 1, got 0" in r.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.journal").exists()
