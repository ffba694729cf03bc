"""`mlkit tune`: parallel papermill workers on one Optuna study, every trial tracked, resumable, surviving a killed worker,
stopped cleanly by a signal, and never storing the storage's password.

Real components only: the `mlkit` console script, papermill kernels, a journal file and a real PostgreSQL server as Optuna storages,
and a real SQLite MLflow store — one per module (creating it costs seconds), each test in its own experiment and working folder.
Quick tier (`-m "not slow"`): the study and search logic in this process; slow: kernels, subprocesses, PostgreSQL."""
import json, os, pwd, re, shutil, signal, socket, subprocess, sys, tempfile, threading, time, uuid
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
    yield uri, re.sub(r"[^\w-]+", "-", request.node.name[5:])[:60].strip("-")  # parametrized tests too: one experiment each
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


def wait_for(condition, *, proc=None, timeout=180, what="the condition"):
    "Poll `condition()` until it is truthy (returned); fail at the deadline or when `proc` exits first."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value: return value
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"mlkit exited ({proc.returncode}) before {what}:\n{err[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def marked_processes(mark):
    "Live (non-zombie) processes whose environment holds MLKIT_TEST_MARK=`mark`: the command and all it started."
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit(): continue
        try:
            if f"MLKIT_TEST_MARK={mark}".encode() not in (d / "environ").read_bytes(): continue
            if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z": continue
            found.append((int(d.name), (d / "cmdline").read_bytes().replace(b"\0", b" ")[:200].decode(errors="replace")))
        except OSError: continue
    return found


def study_trials(folder, name):
    "The trials of study `name` in `folder`/optuna.journal, [] while it does not exist yet."
    try: return journal_study(folder, name).get_trials(deepcopy=False)
    except (KeyError, FileNotFoundError): return []


def fresh_claim(folder, name, *, within=0.5):
    """(a trial of study `name` in `folder` claimed less than `within` s ago by a worker that already finished one — so its
    previous trial's run may be being written —, the numbers of the COMPLETE trials then), or None while there is none."""
    trials = study_trials(folder, name)
    done = {t.number for t in trials if t.state.name == "COMPLETE"}
    worked = {t.system_attrs.get("mlkit:heartbeat", {}).get("worker") for t in trials if t.number in done}
    fresh = [t for t in trials if t.state.name == "RUNNING" and t.system_attrs.get("mlkit:heartbeat", {}).get("worker") in worked
             and time.time() - t.datetime_start.timestamp() < within]
    return (fresh[0], done) if fresh else None


HGB_SPACE = {"hist_gradient_boosting": {"learning_rate": {"type": "float", "low": 0.05, "high": 0.3, "log": True},
                                        "max_iter": 60, "early_stopping": False}}  # about a second a trial: long enough to catch


# ---------------------------------------------------------------- quick: claiming, closing trial runs, stopping in process
def test_claims_are_exclusive_across_workers(tmp_path):
    import optuna
    from mlkit.study import claim_trial, open_storage, prepare_study
    url = f"journal:{tmp_path}/optuna.journal"
    prepare_study(storage=open_storage(url), study_name="s", direction="maximize", metric="roc_auc", n_trials=40)
    got = [[] for _ in range(4)]
    def work(i):
        study = optuna.load_study(study_name="s", storage=open_storage(url))
        while (t := claim_trial(study)) is not None: got[i].append(t.number)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads: t.start()
    for t in threads: t.join()
    assert sorted(n for g in got for n in g) == list(range(40))  # each queued trial claimed once, none created


def test_a_trial_run_a_killed_worker_left_running_is_completed(mlstore, tmp_path):
    """The race behind a RUNNING nested run after a killed worker: a worker writes a trial's run after telling the study, in
    three calls from its logging thread (create, batch, end). Killed after the first — likeliest right after it claimed its next
    trial — it leaves the run RUNNING, which the search then took for a logged trial and never ended."""
    uri, exp = mlstore
    import mlflow
    from mlkit.study import claim_trial, open_storage, prepare_study
    from mlkit.workers import _close_trial_runs
    study, _, _ = prepare_study(storage=open_storage(f"journal:{tmp_path}/optuna.journal"), study_name="s",
                                direction="maximize", metric="roc_auc", n_trials=2)
    for value in (0.7, 0.8):
        t = claim_trial(study); t.suggest_float("C", 0.01, 10, log=True); t.report(value, 0); study.tell(t, value)
    client = mlflow.MlflowClient(uri)
    eid = client.create_experiment(exp)
    parent = client.create_run(eid, tags={"mlkit.pipeline": "tune"}).info.run_id
    left = client.create_run(eid, tags={"mlflow.parentRunId": parent, "mlkit.pipeline": "tune.trial",
                                        "mlkit.trial_number": "1"}).info.run_id   # trial 1: only its create_run happened
    close = lambda: _close_trial_runs(client, run_id=parent, experiment_id=eid, study=study, study_name="s", metric="roc_auc",
                                      mine=lambda n: True)
    assert close() == 2  # trial 0 (never logged) written, trial 1 completed
    kids = client.search_runs([eid], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted((r.data.tags["mlkit.trial_number"], r.info.status) for r in kids) == [("0", "FINISHED"), ("1", "FINISHED")]
    run = client.get_run(left)
    assert run.data.params.keys() == {"C"} and run.data.metrics["cv_roc_auc_mean"] == 0.8 and "fold_roc_auc" in run.data.metrics
    assert run.data.tags["mlkit.trial_state"] == "complete" and close() == 0  # nothing left to close


def test_a_signal_stops_an_in_process_search_and_ends_every_run(mlstore, tmp_path):
    uri, exp = mlstore
    from mlkit.config import load_params
    from mlkit.tune import Interrupted, tune
    params = load_params("tune", write_params(tmp_path / "t.yaml", exp, n_trials=40, n_rows=300, refit=False, sampler="random"))
    searching = threading.Event(); searching.set()
    def stop_after_two_trials():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and searching.is_set():
            if len([t for t in study_trials(tmp_path, f"{exp}-tune") if t.state.is_finished()]) >= 2:
                if searching.is_set(): os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.02)
    handler_before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=stop_after_two_trials, daemon=True).start()
    try:
        with pytest.raises(Interrupted, match="stopped by SIGTERM") as stopped:
            tune(params, in_process=True, progress=False)
    finally: searching.clear()
    assert signal.getsignal(signal.SIGTERM) is handler_before

    runs = mlflow_runs(uri, exp)
    parent = next(r for r in runs if r.info.run_id == stopped.value.run_id)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert parent.info.status == "KILLED" and "stopped by SIGTERM" in parent.data.tags["mlkit.error"]
    study = journal_study(tmp_path, f"{exp}-tune")
    finished = [t for t in study.trials if t.state.is_finished()]
    assert parent.data.metrics["n_trials_complete"] == states(study)["COMPLETE"] >= 2
    assert parent.data.metrics["n_trials_waiting"] == states(study)["WAITING"] > 0  # left for the next call
    assert "RUNNING" not in states(study)
    trial_runs = {r.data.tags["mlkit.trial_number"]: r for r in runs if r.data.tags.get("mlkit.pipeline") == "tune.trial"}
    assert sorted(trial_runs) == sorted(str(t.number) for t in finished)
    for t in study.trials:
        if t.state.name == "FAIL":  # the trial that was running: failed with the reason, its run KILLED
            assert "was stopped (SIGTERM)" in t.user_attrs["error"] and trial_runs[str(t.number)].info.status == "KILLED"


# ---------------------------------------------------------------- budget, tracking, a killed worker, resume
@pytest.mark.slow
def test_two_workers_finish_budget_despite_a_killed_worker_then_resume(mlstore, store, tmp_path):
    uri, exp = mlstore
    p = write_params(tmp_path / "tune.yaml", exp, n_trials=8, space=HGB_SPACE, n_rows=1500, pruner="none", storage=None)  # default
    proc = subprocess.Popen(mlkit_cmd("tune", "-p", p, "--workers", "2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim, complete_before = None, set()
    try:
        victim, complete_before = wait_for(lambda: fresh_claim(store[0], f"{exp}-tune"), proc=proc, timeout=240,
                                           what="a worker claiming its second trial")
        os.kill(victim.system_attrs["mlkit:heartbeat"]["pid"], signal.SIGKILL)  # kill that worker's kernel
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None: proc.kill(); proc.communicate()
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


# ---------------------------------------------------------------- stopped by a signal: a complete record, no process left
def _reached(point, folder, uri, exp):
    "Whether the search under way has reached `point`."
    if point == "study": return (folder / "optuna.journal").exists()  # the storage is open: the study is being prepared
    if point == "workers": return any(r.data.tags.get("mlkit.pipeline") == "tune" for r in mlflow_runs(uri, exp))
    trials = study_trials(folder, f"{exp}-tune")  # "trials": one complete, another running
    return "COMPLETE" in {t.state.name for t in trials} and "RUNNING" in {t.state.name for t in trials}


@pytest.mark.slow
@pytest.mark.parametrize("sig,point", [("SIGTERM", "study"), ("SIGHUP", "workers"), ("SIGTERM", "trials")])
def test_a_signal_stops_the_search_with_a_complete_record(mlstore, tmp_path, sig, point):
    uri, exp = mlstore
    mark = uuid.uuid4().hex  # inherited by every process the command starts (its kernels too)
    p = write_params(tmp_path / "tune.yaml", exp, n_trials=8, space=HGB_SPACE, n_rows=1500, pruner="none", refit=True)
    log = tmp_path / "stderr.txt"  # a file, not a pipe: waiting for the command must not wait for kernels holding its pipe
    with open(log, "w") as f:
        proc = subprocess.Popen(mlkit_cmd("tune", "-p", p, "--workers", "2"), env={**os.environ, "MLKIT_TEST_MARK": mark},
                                stdout=subprocess.DEVNULL, stderr=f, text=True)
    try:
        wait_for(lambda: _reached(point, tmp_path, uri, exp), proc=proc, what=f"the search reaching '{point}'")
        proc.send_signal(getattr(signal, sig))
        proc.wait(timeout=180)
        left = marked_processes(mark)  # at once: no kernel outlives the command
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()
    err = log.read_text()
    assert not left, f"processes survived the search: {left}"
    assert proc.returncode == 128 + getattr(signal, sig), err[-3000:]
    assert f"search stopped by {sig}" in err and "run the same command again" in err and "Traceback" not in err, err[-3000:]

    runs = mlflow_runs(uri, exp)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    parents = [r for r in runs if r.data.tags.get("mlkit.pipeline") == "tune"]
    try: study = journal_study(tmp_path, f"{exp}-tune")
    except (KeyError, FileNotFoundError): study = None  # stopped before the study was created (the journal file may exist)
    if point != "study": assert parents  # the run existed when the signal came
    if not parents: return  # stopped before the run started: nothing to record, nothing left RUNNING
    parent = parents[0]
    assert len(parents) == 1 and parent.info.status == "KILLED" and f"stopped by {sig}" in parent.data.tags["mlkit.error"]
    assert "RUNNING" not in states(study)
    assert parent.data.metrics["n_trials_complete"] == states(study)["COMPLETE"]
    assert parent.data.metrics["n_trials_waiting"] == states(study)["WAITING"] > 0
    trial_runs = {r.data.tags["mlkit.trial_number"]: r for r in runs if r.data.tags.get("mlkit.pipeline") == "tune.trial"}
    assert sorted(trial_runs) == sorted(str(t.number) for t in study.trials if t.state.is_finished())
    for t in study.trials:
        if t.state.name == "FAIL":
            assert f"was stopped ({sig})" in t.user_attrs["error"] and trial_runs[str(t.number)].info.status == "KILLED"
    if point == "trials":
        import mlflow
        notebooks = mlflow.MlflowClient(uri).list_artifacts(parent.info.run_id, "workers")
        assert len([a for a in notebooks if a.path.endswith(".ipynb")]) == 2
        assert states(study)["COMPLETE"] >= 1 and "best_cv_roc_auc" not in parent.data.metrics  # no refit of a stopped search


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_password_in_the_storage_url_is_never_stored(mlstore, tmp_path, postgres):
    "Console, params, tags and every artifact of every run (worker notebooks included) are free of the storage's password."
    uri, exp = mlstore
    import mlflow
    planted = f"Planted-{uuid.uuid4().hex[:12]}"
    url = postgres.replace("postgresql://postgres@", f"postgresql://postgres:{planted}@")  # trust auth: any password works
    p = write_params(tmp_path / "t.yaml", exp, n_trials=3, n_rows=500, refit=True, storage=None, study_name="secret-study")
    r = subprocess.run(mlkit_cmd("tune", "-p", p, "--workers", "2", "--storage", url), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert planted not in r.stdout + r.stderr
    client, runs = mlflow.MlflowClient(uri), mlflow_runs(uri, exp)
    assert len(runs) == 4  # the search and its 3 trials
    files = []
    for run in runs:
        assert planted not in json.dumps([run.data.params, run.data.tags, run.data.metrics])
        dst = tmp_path / "artifacts" / run.info.run_id; dst.mkdir(parents=True)
        client.download_artifacts(run.info.run_id, "", str(dst))
        files += [f for f in dst.rglob("*") if f.is_file()]
    assert len([f for f in files if f.parent.name == "workers" and f.suffix == ".ipynb"]) == 2
    model = mlflow.artifacts.download_artifacts(r.stdout.split("model: ")[1].split()[0], dst_path=str(tmp_path / "model"))
    files += [f for f in Path(model).rglob("*") if f.is_file()]  # MLflow 3 keeps a logged model apart from the run's artifacts
    files += [f for f in Path(client.get_experiment_by_name(exp).artifact_location.removeprefix("file://")).rglob("*") if f.is_file()]
    assert "MLmodel" in {f.name for f in files}
    assert not [f for f in files if planted.encode() in f.read_bytes()]
    parent = next(x for x in runs if x.data.tags.get("mlkit.pipeline") == "tune")
    assert parent.data.params["search.storage"] == url.replace(planted, "***")  # shown masked, not dropped


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


@pytest.mark.slow
def test_bad_input_exit_code_from_console_script(tmp_path):
    r = subprocess.run(mlkit_cmd("tune", "--workers", "0", "--set", "data.n_rows=300"), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "error: --workers must be at least 1, got 0" in r.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.journal").exists()
