"""A team on one tracking server: every mlkit command pointed at a real `mlflow server` (basic auth, PostgreSQL, proxied artifacts)
by `MLFLOW_TRACKING_URI` and credentials from the environment, two users, Optuna on the same PostgreSQL; and the faults a team meets:
the server down, a wrong password, a user without permission, PostgreSQL restarted under a running study."""
import json, os, signal, subprocess, time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, mlkit_cmd, run_mlkit
from servers import free_port, wait_until

pytestmark = pytest.mark.slow
MODEL = "team-credit"
LR_SPACE = {"logistic_regression": {"C": {"type": "float", "low": 0.001, "high": 100, "log": True}, "max_iter": 500}}


def tune_params(path, experiment, *, n_trials=4, n_rows=600, space=LR_SPACE, refit=True):
    "A small tune params file (bundled credit data, 3 folds, no plots or explanations)."
    doc = {"experiment": experiment, "model_name": MODEL,
           "data": {"source": "mlkit:credit", "n_rows": n_rows, "id_column": "id", "drop_columns": ["application_date"], "sensitive": ["sex"]},
           "evaluate": {"cv_folds": 3, "plots": False, "explain": False},
           "search": {"n_trials": n_trials, "space": space, "refit": refit, "startup_trials": 2, "pruner": "none"}}
    Path(path).write_text(yaml.safe_dump(doc))
    return str(path)


def one_line_error(r, *needles):
    "The command failed with exactly one line on stderr, no traceback, naming each of `needles`."
    lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith(("note:", "warning:"))]
    assert r.returncode not in (0, None), (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-3000:]
    for n in needles: assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def team(mlflow_server, pg_server, tmp_path_factory):
    """Users made by the admin — alice trains and owns the model, bob tunes and promotes, carol only reads — and a PostgreSQL role and database for Optuna,
    with a password that is really checked."""
    alice, bob, carol = (mlflow_server.create_user(u) for u in ("alice", "bob", "carol"))
    pw = "optuna-" + os.urandom(6).hex()
    pg_server.create_role("optuna_team", pw)
    pg_server.create_database("optuna_team", owner="optuna_team")
    return {"server": mlflow_server, "alice": alice, "bob": {**bob, "PGPASSWORD": pw}, "carol": carol, "pg": pg_server,
            "storage": pg_server.url("optuna_team", user="optuna_team"), "dir": tmp_path_factory.mktemp("team")}  # libpq reads PGPASSWORD


def as_user(team, who, *args, timeout=900, **kw):
    return run_mlkit(*args, cwd=team["dir"], env={**team[who], "MLKIT_USER": "", **kw.pop("env", {})}, timeout=timeout, **kw)


def client(team, who="alice"):
    from mlflow import MlflowClient
    saved = {k: os.environ.get(k) for k in team[who]}
    os.environ.update(team[who])  # MlflowClient reads the credentials from the environment
    return MlflowClient(team[who]["MLFLOW_TRACKING_URI"]), saved


def restore(saved):
    for k, v in saved.items():
        if v is None: os.environ.pop(k, None)
        else: os.environ[k] = v


def test_train_tune_promote_serve_monitor_as_two_users(team, tmp_path):
    server = team["server"]
    # alice trains and registers version 1 on the server; the run, the model and its artifacts are there, not in a local store
    r = as_user(team, "alice", "run", "train", "-p", ROOT / "params" / "ci.yaml", "--set", f"model_name={MODEL}", "--set", "experiment=team")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (team["dir"] / "mlflow.db").exists() and not (team["dir"] / "mlruns").exists()
    assert any(server.artifacts.rglob("model.skops"))
    r = as_user(team, "alice", "promote", MODEL, "--version", "1")
    assert r.returncode == 0, r.stdout + r.stderr

    # the admin lets bob change it (MANAGE: the gate also deletes the `challenger` alias, which MLflow 3.17 counts as a delete);
    # bob tunes with Optuna on the team's PostgreSQL and registers the refitted model as version 2
    server.grant("bob", "registered_model", MODEL, "MANAGE")
    p = tune_params(tmp_path / "tune.yaml", "team-tune")
    r = as_user(team, "bob", "tune", "-p", p, "--storage", team["storage"], "--workers", "2")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "registered as team-credit v2" in r.stdout
    import optuna
    study = optuna.load_study(study_name="team-tune-tune", storage=team["storage"].replace("postgresql://optuna_team@", f"postgresql+psycopg2://optuna_team:{team['bob']['PGPASSWORD']}@"))
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 4

    # carol may read alice's model but not change it: her promotion is a 403, named, in one line
    r = as_user(team, "carol", "promote", MODEL, "--version", "2")
    one_line_error(r, "403 Forbidden", "user 'carol'", "ask an MLflow admin")

    # bob's promotion of v2 goes through the gate (passed or refused, both recorded); history and alias agree
    r = as_user(team, "bob", "promote", MODEL, "--version", "2")
    assert r.returncode in (0, 1) and ("PROMOTED" in r.stdout or "REFUSED" in r.stdout), r.stdout + r.stderr
    c, saved = client(team)
    try:
        from mlkit.registry import read_history
        os.environ.pop("MLKIT_USER", None)
        h = read_history(MODEL)
        assert [e["seq"] for e in h] == list(range(1, len(h) + 1)) and h[-1]["who"] == "bob"
        assert h[-1]["to_version"] == str(c.get_registered_model(MODEL).aliases["champion"])
    finally: restore(saved)

    # alice serves the champion from the server and it answers
    import httpx
    port = free_port()
    proc = subprocess.Popen(mlkit_cmd("serve", "--model", f"models:/{MODEL}@champion", "--port", port, "--log-dir", tmp_path / "plog"),
                            cwd=team["dir"], env={**os.environ, **team["alice"]}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(url + "/ready", timeout=2).status_code == 200, timeout=240, what="mlkit serve", proc=proc)
        from mlkit.data import load_data
        X = load_data("mlkit:credit", n_rows=5, seed=3).drop(columns=["default", "id", "application_date"])
        resp = httpx.post(url + "/invocations", json={"dataframe_records": json.loads(X.to_json(orient="records"))}, timeout=30)
        assert resp.status_code == 200 and len(resp.json()["predictions"]) == 5, resp.text
    finally:
        proc.send_signal(signal.SIGTERM)
        try: proc.wait(30)
        except subprocess.TimeoutExpired: proc.kill()

    # alice monitors a shifted batch against the champion: healthy (0) or an alert (3), logged as a run on the server
    batch = tmp_path / "batch.csv"
    assert as_user(team, "alice", "demo-data", batch, "--rows", "400", "--shift", "covariate").returncode == 0
    r = as_user(team, "alice", "monitor", "--model", f"models:/{MODEL}@champion", "--input", batch, "--set", "experiment=team-monitor")
    assert r.returncode in (0, 3), r.stdout + r.stderr[-3000:]
    c, saved = client(team)
    try:
        exp = c.get_experiment_by_name("team-monitor")
        assert exp is not None and c.search_runs([exp.experiment_id])[0].info.status == "FINISHED"
    finally: restore(saved)


@pytest.mark.parametrize("args", [
    ("promote", MODEL), ("history", MODEL), ("serve", "--model", f"models:/{MODEL}@champion", "--port", "9"),
    ("run", "train", "-p", ROOT / "params" / "ci.yaml")],
    ids=["promote", "history", "serve", "run-train"])
def test_server_down_is_one_clear_line_and_fast(tmp_path, args):
    "Nothing listens on the port: one line naming the URL and the fix; the timeout bounds it far below MLflow's 4 minutes."
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", "MLFLOW_TRACKING_USERNAME": "alice",
           "MLFLOW_TRACKING_PASSWORD": "pw-" + os.urandom(6).hex()}
    r = run_mlkit(*args, cwd=tmp_path, env=env, timeout=45)
    one_line_error(r, "cannot reach the MLflow tracking server at http://127.0.0.1:", "connection refused", "MLFLOW_TRACKING_URI")
    assert env["MLFLOW_TRACKING_PASSWORD"] not in r.stdout + r.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("args", [
    ("promote", MODEL), ("runs",),
    ("run", "train", "-p", ROOT / "params" / "ci.yaml")],
    ids=["promote", "runs", "run-train"])
def test_wrong_password_is_a_named_401(team, args):
    env = {**team["alice"], "MLFLOW_TRACKING_PASSWORD": "not-alices-password"}
    r = run_mlkit(*args, cwd=team["dir"], env=env, timeout=120)
    one_line_error(r, "401 Unauthorized", "user 'alice'", "MLFLOW_TRACKING_PASSWORD")
    assert "not-alices-password" not in r.stdout + r.stderr


def test_postgres_restarted_while_a_study_runs(team, pg_cluster, tmp_path):
    """PostgreSQL (Optuna's storage) restarts while two workers run trials: they wait for it and go on (a trial whose writes fell in
    the outage fails cleanly), no completed trial is lost, nothing is left RUNNING, the search ends normally."""
    import optuna
    storage = pg_cluster.create_database("optuna_restart")
    space = {"hist_gradient_boosting": {"learning_rate": {"type": "float", "low": 0.05, "high": 0.3, "log": True},
                                        "max_iter": 60, "early_stopping": False}}
    p = tune_params(tmp_path / "tune.yaml", "team-restart", n_trials=10, n_rows=1500, space=space, refit=False)
    proc = subprocess.Popen(mlkit_cmd("tune", "-p", p, "--storage", storage, "--workers", "2"), cwd=tmp_path,
                            env={**os.environ, **team["bob"]}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sa_url = storage.replace("postgresql://", "postgresql+psycopg2://")
    def complete():
        trials = optuna.load_study(study_name="team-restart-tune", storage=sa_url).get_trials(deepcopy=False)
        return {t.number for t in trials if t.state.name == "COMPLETE"}
    try:
        before = wait_until(complete, timeout=300, what="first completed trial", proc=proc, every=0.2)
        pg_cluster.stop("fast")                          # every connection of the workers is dropped ...
        try: wait_until(lambda: proc.poll() is not None, timeout=8, what="tune", every=0.2)   # ... for an 8 s outage
        except RuntimeError: pass                        # still running: as it should
        pg_cluster.start()
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None: proc.kill()
    study = optuna.load_study(study_name="team-restart-tune", storage=sa_url)
    by_number = {t.number: t for t in study.trials}
    assert all(by_number[n].state.name == "COMPLETE" for n in before)            # no completed trial lost
    assert not [t.number for t in study.trials if t.state.name in ("RUNNING", "WAITING")], err[-3000:]
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]            # the workers and the search outlived it
    assert len(study.trials) == 10 and len(complete()) >= 8, [(t.number, t.state.name) for t in study.trials]
    c, saved = client(team, "bob")
    try:
        exp = c.get_experiment_by_name("team-restart")
        assert not [x.info.run_id for x in c.search_runs([exp.experiment_id]) if x.info.status == "RUNNING"]
    finally: restore(saved)
