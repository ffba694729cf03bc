"""Compare, gate, promote, roll back: the champion/challenger story through the `mlkit` command, on a real SQLite MLflow store."""
import json, os, shutil, subprocess, sys, time
from pathlib import Path
import pytest
from conftest import ROOT, run_mlkit

NAME = "credit"


def _train_inprocess(*, experiment="promo-extra", drop=(), C=1.0, seed=0, n_rows=1500):
    "Train a model the way the train pipeline does (its params, lineage tags, metrics and logged model), in this process."
    from mlkit.config import TrainParams
    from mlkit import checks as mc, data as md, models as mm, evaluate as me, tracking
    p = TrainParams(seed=seed, experiment=experiment, data={"n_rows": n_rows, "id_column": "id", "drop_columns": ["application_date", *drop], "sensitive": ["sex"]},
                    model={"estimator": "logistic_regression", "hyperparams": {"C": C}})
    df = md.load_data("mlkit:credit", n_rows=n_rows, seed=seed).drop(columns=p.data.drop_columns)
    schema = mc.infer_schema(df, target="default", id_column="id")
    tr, te = md.split_data(df, target="default", test_size=0.2, seed=seed, task="binary")
    X, Xt = tr.drop(columns=["default", "id"]), te.drop(columns=["default", "id"])
    m = mm.make_model(schema, task="binary", model=p.model, features=p.features, seed=seed).fit(X, tr["default"])
    with tracking.start_run(pipeline="train", params=p, tags={"mlkit.data_fingerprint": md.fingerprint_frame(df), "mlkit.task": "binary"}) as r:
        tracking.log_metrics({f"test_{k}": v for k, v in me.compute_metrics(m, Xt, te["default"], task="binary").items()})
        tracking.log_model(m, X_sample=X, schema=schema, task="binary")
    return r.info.run_id


@pytest.fixture(scope="module")
def store(trained_store, tmp_path_factory):
    """A private copy of the shared store (credit v1: trained by the real train pipeline, params/ci.yaml) plus credit v2:
    a model with different params (logistic regression), trained in-process the same way."""
    d = tmp_path_factory.mktemp("promote")
    shutil.copy(trained_store["dir"] / "mlflow.db", d / "mlflow.db")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{d}/mlflow.db", "MLKIT_USER": "tester"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env); cwd = os.getcwd(); os.chdir(d)
    try:
        import mlflow
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        from mlkit import registry
        runs = {"hgb": trained_store["run_id"], "logistic": _train_inprocess(experiment="ci", C=0.002)}
        registry.register_version(runs["logistic"], NAME)
    finally:
        os.chdir(cwd)
        for k, v in saved.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    return {"dir": d, "env": env, "runs": runs}


@pytest.fixture
def client(store, monkeypatch):
    monkeypatch.chdir(store["dir"])
    for k, v in store["env"].items(): monkeypatch.setenv(k, v)
    import mlflow
    mlflow.set_tracking_uri(store["env"]["MLFLOW_TRACKING_URI"])
    return mlflow.MlflowClient()


def mlkit(store, *args):
    return run_mlkit(*args, cwd=store["dir"], env=store["env"])


def champion(client, name=NAME):
    v = client.get_registered_model(name).aliases.get("champion")
    return None if v is None else str(v)


def versions_by_run(client, name=NAME):
    return {v.run_id: str(v.version) for v in client.search_model_versions(f"name='{name}'")}


def test_runs_lists_both(store, client):
    r = mlkit(store, "runs", "--experiment", "ci", "--sort", "roc_auc", "--plot", "runs.png")
    assert r.returncode == 0, r.stderr
    for run_id in store["runs"].values(): assert run_id[:8] in r.stdout
    header = r.stdout.splitlines()[0]
    assert "test_roc_auc" in header and "model.estimator" in header   # the params that differ are shown
    assert "data" in header and "commit" in header
    assert (store["dir"] / "runs.png").stat().st_size > 1000
    # sorted best first: the first data row is the run with the higher test_roc_auc
    auc = {k: client.get_run(v).data.metrics["test_roc_auc"] for k, v in store["runs"].items()}
    best = max(auc, key=auc.get)
    assert r.stdout.splitlines()[1].startswith(store["runs"][best][:8])


def test_runs_plot_into_a_new_folder_and_limit_must_be_positive(store, client, capsys):
    "QA: --plot into a missing folder creates it; an unwritable path, --limit 0 and --limit -3 are one-line errors (exit 2)."
    from mlkit.cli import main
    assert main(["runs", "--experiment", "ci", "--plot", "new/sub/runs.png"]) == 0, capsys.readouterr().err
    assert (store["dir"] / "new" / "sub" / "runs.png").stat().st_size > 1000
    (store["dir"] / "afile").write_text("x")
    capsys.readouterr()
    assert main(["runs", "--experiment", "ci", "--plot", "afile/x.png"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the plot to 'afile/x.png'") and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for n in ("0", "-3"):
        assert main(["runs", "--experiment", "ci", "--limit", n]) == 2
        out = capsys.readouterr()
        assert f"error: --limit must be a whole number of runs ≥ 1, got {n}" in out.err and out.out == "", out


def test_promote_refuse_force_rollback_history(store, client, capsys):
    """The whole story. The first promotion and the history go through the console script; the moves in between call the same
    `mlkit.cli.main` in-process (a process start costs seconds of imports on a busy machine)."""
    from mlkit.cli import main

    def cli(*args):
        rc = main([str(a) for a in args]); out = capsys.readouterr()
        return rc, out.out, out.err

    v = versions_by_run(client)
    auc = {k: client.get_run(rid).data.metrics["test_roc_auc"] for k, rid in store["runs"].items()}
    better, worse = (v[store["runs"][k]] for k in sorted(auc, key=auc.get, reverse=True))

    r = mlkit(store, "promote", NAME, "--version", better)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PROMOTED" in r.stdout and champion(client) == better

    rc, out, err = cli("promote", NAME, "--version", worse)
    assert rc == 1 and "REFUSED" in out
    assert "roc_auc" in out and "required gain" in out                    # the reason
    assert champion(client) == better

    rc, out, err = cli("promote", NAME, "--version", worse, "--force")
    assert rc == 2 and "--force needs --reason" in err and champion(client) == better

    rc, out, err = cli("promote", NAME, "--version", worse, "--force", "--reason", "incident 7: old behaviour needed")
    assert rc == 0 and "PROMOTED BY OVERRIDE" in out and champion(client) == worse

    rc, out, err = cli("rollback", NAME, "--reason", "override no longer needed")
    assert rc == 0 and f"v{worse} → v{better}" in out and champion(client) == better

    r = mlkit(store, "history", NAME)
    assert r.returncode == 0
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert [row[3] for row in rows] == ["promote", "refused", "force", "rollback"]
    assert all(row[2] == "tester" for row in rows)

    from mlkit.registry import read_history
    h = read_history(NAME)
    assert [(e["from_version"], e["to_version"]) for e in h] == [(None, better), (better, better), (better, worse), (worse, better)]
    assert h[2]["verdict"] == "failed" and h[2]["reason"] == "incident 7: old behaviour needed"
    assert h[0]["metrics"]["primary"] == "roc_auc" and h[0]["metrics"]["eval_fingerprint"] == h[1]["metrics"]["eval_fingerprint"]
    assert h[1]["metrics"]["challenger"]["roc_auc"] < h[1]["metrics"]["champion"]["roc_auc"]

    import mlflow
    for ver, decision in ((better, "**PROMOTED**"), (worse, "**PROMOTED BY OVERRIDE (gate failed)**")):
        mv = client.get_model_version(NAME, ver)
        card = mlflow.artifacts.load_text(mv.tags["mlkit.model_card"])
        for section in ("## Intended use", "## Lineage", "## Parameters", "## Metrics", "## Plots", "## Fairness slices", "## Gate verdict"):
            assert section in card
        assert decision in card and mv.tags["mlkit.params_hash"] in card
        if mv.run_id == store["runs"]["hgb"]: assert "plots/roc_curve.png" in card     # the train pipeline logged plots
        assert "| sex | F |" in card                                          # fairness slices by group


@pytest.fixture
def bad(store, client, capsys):
    from mlkit.cli import main
    if champion(client) is None:
        assert mlkit(store, "promote", NAME, "--version", "1", "--set", "min_delta=0").returncode in (0, 1)
    if champion(client) is None: main(["promote", NAME, "--version", "1", "--force", "--reason", "test setup"]); capsys.readouterr()
    before = champion(client)

    def check(args, code, text):
        rc = main([str(a) for a in args])
        out = capsys.readouterr()
        assert rc == code, (rc, out)
        assert text in out.err + out.out, out
        assert champion(client) == before
        return out
    return check, before


def test_unknown_model_version_run(bad):
    check, champ = bad
    check(["promote", "credt"], 2, "no registered model 'credt' in sqlite:")
    check(["promote", "credt"], 2, "did you mean 'credit'?")
    check(["promote", NAME, "--version", "99"], 2, "registered model 'credit' has no version '99'; existing versions: [1, 2")
    check(["promote", NAME, "--run", "0123456789abcdef"], 2, "no run '0123456789abcdef'")
    check(["rollback", "credt"], 2, "did you mean 'credit'?")
    check(["history", "nosuchmodel"], 2, "no registered model 'nosuchmodel'")
    check(["runs", "--experiment", "ci", "--sort", "rocauc"], 2, "did you mean 'test_roc_auc'")
    check(["runs", "--experiment", "cii"], 2, "no experiment 'cii' — did you mean 'ci'?")


def test_run_without_model_and_current_champion(bad, client):
    check, champ = bad
    import mlflow
    exp = client.get_experiment_by_name("ci").experiment_id
    run = client.create_run(exp); client.set_terminated(run.info.run_id)
    check(["promote", NAME, "--run", run.info.run_id], 2, f"run '{run.info.run_id}' logged no model")
    check(["promote", NAME, "--version", champ], 2, f"'credit' v{champ} already is the champion")


def test_gate_metric_the_runs_do_not_have(bad):
    check, champ = bad
    other = "1" if champ != "1" else "2"
    check(["promote", NAME, "--version", other, "--set", "primary_metric=rmse"], 2, "primary_metric: metric 'rmse' is not reported for binary tasks")
    check(["promote", NAME, "--version", other, "--set", "guards={log_los: 0.1}"], 2, "did you mean 'log_loss'")
    check(["promote", NAME, "--version", other, "--set", "fairness.max_gap={sex: {selection: 0.1}}"], 2, "did you mean 'selection_rate'")


def test_incompatible_schema_is_refused(bad):
    check, champ = bad
    from mlkit import registry
    from mlflow import MlflowClient
    run_id = _train_inprocess(drop=["region"])                         # logged, not registered: --run registers it
    out = check(["promote", NAME, "--run", run_id], 1, "drops columns the champion needs: ['region']")
    assert "REFUSED" in out.out
    mv = [m for m in MlflowClient().search_model_versions(f"name='{NAME}'") if m.run_id == run_id]
    assert len(mv) == 1 and mv[0].tags["mlkit.run_id"] == run_id and "mlkit.model_card" in mv[0].tags
    check(["promote", NAME, "--run", run_id], 1, "drops columns")          # the same run again: the same version, no new one
    assert len([m for m in MlflowClient().search_model_versions(f"name='{NAME}'") if m.run_id == run_id]) == 1


RACE = r"""
import os, sys, time
from pathlib import Path
print("ready", flush=True)
while not Path(sys.argv[1]).exists(): time.sleep(0.01)
from mlkit.cli import main
sys.exit(main(["promote", "race", "--version", sys.argv[2], "--set", "min_delta=0"]))
"""


def test_concurrent_promotions_stay_consistent(store, client, tmp_path):
    from mlkit import registry
    from mlkit.cli import main
    v1 = registry.register_version(_train_inprocess(C=0.0003), "race").version
    v2 = registry.register_version(_train_inprocess(C=1.0), "race").version
    v3 = registry.register_version(_train_inprocess(C=0.3), "race").version
    assert main(["promote", "race", "--version", str(v1)]) == 0
    go = tmp_path / "go"
    import mlkit.gate  # warm the import cache for the children
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(go), str(v)], cwd=store["dir"], env={**os.environ, **store["env"]},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for v in (v2, v3)]
    for p in procs: assert p.stdout.readline().strip() == "ready"
    go.touch()                                                     # both start at the same moment
    outs = [p.communicate(timeout=120) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) in ([0, 0], [0, 1]), (codes, outs)
    h = registry.read_history("race")
    assert [e["seq"] for e in h] == [1, 2, 3]
    assert h[-1]["to_version"] == str(champion(client, "race"))
    for prev, cur in zip(h, h[1:]): assert cur["from_version"] == prev["to_version"]   # the chain of moves has no gap
    for e in h: assert e["compared_with"] == e["from_version"]       # each verdict was evaluated against the champion it replaced
    assert h[1]["from_version"] == str(v1) and h[2]["from_version"] == h[1]["to_version"] != str(v1)


def test_compare_notebook_dry_runs_the_gate(store, client):
    before = champion(client)
    r = mlkit(store, "run", "compare", "--set", "model_name=credit", "--set", "runs_experiment=ci", "--set", "experiment=compare")
    assert r.returncode == 0, r.stdout + r.stderr
    run_id = r.stdout.split()[1]
    import mlflow
    verdict = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/compare/verdict.json"))
    runs = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/compare/runs.json"))
    assert {x["run_id"] for x in runs} >= set(store["runs"].values())
    assert verdict["eval"]["fingerprint"] and {c["check"] for c in verdict["checks"]} >= {"schema", "primary"}
    assert champion(client) == before                               # a dry run moves nothing
