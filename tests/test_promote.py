"""Compare, gate, promote, roll back: the champion/challenger story through the `mlkit` command, on a real SQLite MLflow store.
The tests on the shared store (a model trained by the real train pipeline) are slow; the ones on models trained here are quick."""
import json, os, re, shutil, subprocess, sys
from pathlib import Path
import pytest
from conftest import ROOT, run_mlkit

NAME = "credit"
slow = pytest.mark.slow


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


@slow
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


@slow
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


@slow
def test_promote_refuse_force_rollback_history(store, client, capsys):
    """The whole story, with the default gate (no params file anywhere). The first refusal and the history go through the console
    script; the moves in between call the same `mlkit.cli.main` in-process (a process start costs seconds on a busy machine)."""
    from mlkit.cli import main

    def cli(*args):
        rc = main([str(a) for a in args]); out = capsys.readouterr()
        return rc, out.out, out.err

    v = versions_by_run(client)
    hgb, logistic = v[store["runs"]["hgb"]], v[store["runs"]["logistic"]]

    # 15.7: without a params file the gate used to apply no limit at all and promoted a model with balanced accuracy 0.5.
    # The strongly regularised logistic model ranks well (its ROC AUC is the higher one) but predicts "no default" for everyone.
    r = mlkit(store, "promote", NAME, "--version", logistic)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.startswith("gate configuration: defaults for a binary model\n"), r.stdout
    assert "balanced_accuracy close ≥ 10% of the gap" in r.stdout and "selection_rate gap ≤ 0.1 by sex" in r.stdout
    assert f"REFUSED: {NAME} v{logistic} stays challenger; there is no champion yet" in r.stdout          # 11.8: not "v-"
    assert "balanced_accuracy 0.5000 against 0.5000 for the best constant prediction: 0% of the way" in r.stdout
    assert champion(client) is None

    rc, out, err = cli("promote", NAME, "--version", hgb)
    assert rc == 0 and f"PROMOTED: {NAME} champion (none) → v{hgb}" in out and champion(client) == hgb, out + err
    assert "fairness slices (per group):" in out and re.search(r"^\s*sex\s+F\s+\d+\s", out, re.M), out

    rc, out, err = cli("promote", NAME, "--version", logistic)
    assert rc == 1 and f"champion stays v{hgb}" in out and "balanced_accuracy" in out
    assert re.search(r"primary\s+roc_auc\s+[\d.]+\s+[\d.]+\s+≥ champion\s+pass", out), out      # better ranking, refused anyway

    rc, out, err = cli("promote", NAME, "--version", logistic, "--force")
    assert rc == 2 and "--force needs --reason" in err and champion(client) == hgb

    rc, out, err = cli("promote", NAME, "--version", logistic, "--force", "--reason", "incident 7: old behaviour needed")
    assert rc == 0 and "PROMOTED BY OVERRIDE" in out and champion(client) == logistic

    rc, out, err = cli("rollback", NAME, "--reason", "override no longer needed")
    assert rc == 0 and f"v{logistic} → v{hgb}" in out and champion(client) == hgb

    r = mlkit(store, "history", NAME)
    assert r.returncode == 0
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert [row[3] for row in rows] == ["refused", "promote", "refused", "force", "rollback"]
    assert all(row[2] == "tester" for row in rows)

    from mlkit.registry import read_history
    h = read_history(NAME)
    assert [(e["from_version"], e["to_version"]) for e in h] == [(None, None), (None, hgb), (hgb, hgb), (hgb, logistic), (logistic, hgb)]
    assert h[3]["verdict"] == "failed" and h[3]["reason"] == "incident 7: old behaviour needed"
    assert h[0]["gate"] == {"source": "defaults for a binary model", "weaker": []}
    assert h[1]["metrics"]["primary"] == "roc_auc" and h[1]["metrics"]["eval_fingerprint"] == h[2]["metrics"]["eval_fingerprint"]
    assert h[2]["metrics"]["baseline"]["balanced_accuracy"] == 0.5 and any("balanced_accuracy" in f for f in h[2]["failed"])

    import mlflow
    for ver, decision in ((hgb, "**PROMOTED**"), (logistic, "**PROMOTED BY OVERRIDE (gate failed)**")):
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
        assert main(["promote", NAME, "--version", "1", "--set", "min_delta=0"]) in (0, 1); capsys.readouterr()
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


@slow
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


@slow
def test_run_without_model_and_current_champion(bad, client):
    check, champ = bad
    import mlflow
    exp = client.get_experiment_by_name("ci").experiment_id
    run = client.create_run(exp); client.set_terminated(run.info.run_id)
    check(["promote", NAME, "--run", run.info.run_id], 2, f"run '{run.info.run_id}' logged no model")
    check(["promote", NAME, "--version", champ], 2, f"'credit' v{champ} already is the champion")


@slow
def test_gate_metric_the_runs_do_not_have(bad):
    check, champ = bad
    other = "1" if champ != "1" else "2"
    check(["promote", NAME, "--version", other, "--set", "primary_metric=rmse"], 2, "primary_metric: metric 'rmse' is not reported for binary tasks")
    check(["promote", NAME, "--version", other, "--set", "guards={log_los: 0.1}"], 2, "did you mean 'log_loss'")
    check(["promote", NAME, "--version", other, "--set", "fairness.max_gap={sex: {selection: 0.1}}"], 2, "did you mean 'selection_rate'")


@slow
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


@slow
def test_concurrent_promotions_stay_consistent(store, client, tmp_path):
    from mlkit import registry
    from mlkit.cli import main
    v1 = registry.register_version(_train_inprocess(C=0.0003), "race").version
    v2 = registry.register_version(_train_inprocess(C=1.0), "race").version
    v3 = registry.register_version(_train_inprocess(C=0.3), "race").version
    assert main(["promote", "race", "--version", str(v1), "--force", "--reason", "race set-up"]) == 0   # C=0.0003 fails the baseline
    go = tmp_path / "go"
    import mlkit.promote  # warm the import cache for the children
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


@slow
def test_compare_notebook_dry_runs_the_gate(store, tmp_path):
    """On a copy of the store with a champion of its own: what is compared cannot depend on which tests ran before
    (alone, the module's store has no champion and the gate had only its baseline and fairness checks)."""
    import mlflow
    shutil.copy(store["dir"] / "mlflow.db", tmp_path / "mlflow.db")
    env = {**store["env"], "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    own = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    v1 = versions_by_run(own)[store["runs"]["hgb"]]
    own.set_registered_model_alias(NAME, "champion", v1)
    r = run_mlkit("run", "compare", "--set", "model_name=credit", "--set", "runs_experiment=ci", "--set", "experiment=compare",
                  cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    run_id = r.stdout.split()[1]
    read = lambda name: json.loads(Path(own.download_artifacts(run_id, f"compare/{name}", str(tmp_path))).read_text())
    verdict, runs = read("verdict.json"), read("runs.json")
    assert {x["run_id"] for x in runs} >= set(store["runs"].values())
    assert verdict["eval"]["fingerprint"] and {c["check"] for c in verdict["checks"]} >= {"schema", "primary"}
    assert champion(own) == v1                                      # a dry run moves nothing


@slow
def test_one_failed_run_keeps_the_runs_table_readable(store, client, capsys):
    "11.7: a run with no params made every parameter 'differ' — about 35 identical columns, thousands of characters wide."
    from mlkit.cli import main
    exp = client.get_experiment_by_name("ci").experiment_id
    failed = client.create_run(exp, tags={"mlkit.pipeline": "train",
                                          "mlkit.error": "DataError: target column 'defualt' not in the data — did you mean 'default'?"})
    client.set_terminated(failed.info.run_id, "FAILED")
    try:
        assert main(["runs", "--experiment", "ci"]) == 0
        lines = capsys.readouterr().out.splitlines()
    finally:
        client.delete_run(failed.info.run_id)
    header = lines[0].split()
    good = [client.get_run(r).data.params for r in store["runs"].values()]
    differ = {k for k in set(good[0]) | set(good[1]) if k in good[0] and k in good[1] and good[0][k] != good[1][k]}
    fixed = {"run", "experiment", "status", "error", "pipeline", "data", "commit"}
    assert {c for c in header if c not in fixed and not c.startswith("test_")} == differ, header   # only what two real runs differ in
    row = next(l for l in lines if l.startswith(failed.info.run_id[:8]))
    assert "FAILED" in row and "DataError: target column 'defualt' not in the data" in row
    assert max(map(len, lines)) < 400, max(map(len, lines))


# ---------------------------------------------------------------- quick: models trained here, the command in-process
def _regression_version(name, *, alpha, experiment="houses"):
    "Register a ridge regression on sklearn:diabetes (sensitive attribute: sex) trained the way the train pipeline does."
    from mlkit.config import TrainParams
    from mlkit import checks, data as md, models as mm, registry, tracking
    p = TrainParams(seed=0, experiment=experiment, data={"source": "sklearn:diabetes", "target": "target", "sensitive": ["sex"]},
                    model={"estimator": "ridge", "hyperparams": {"alpha": alpha}})
    df = md.load_data("sklearn:diabetes")
    schema = checks.infer_schema(df, target="target", task="regression")
    train = md.split_data(df, target="target", seed=0, task="regression")[0]
    m = mm.make_model(schema, task="regression", model=p.model, seed=0).fit(train.drop(columns="target"), train["target"])
    with tracking.start_run(pipeline="train", params=p, tags={"mlkit.data_fingerprint": md.fingerprint_frame(df)}) as r:
        tracking.log_model(m, X_sample=train.drop(columns="target"), schema=schema, task="regression")
    return str(registry.register_version(r.info.run_id, name).version)


@pytest.fixture(scope="module")
def houses_store(tmp_path_factory):
    "A store with two ridge models of `houses` (alpha 0.01, then a much worse 2000), trained once for this module."
    d = tmp_path_factory.mktemp("houses")
    mp = pytest.MonkeyPatch()
    try:
        mp.chdir(d); mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{d}/mlflow.db")
        import mlflow
        mlflow.set_tracking_uri(f"sqlite:///{d}/mlflow.db")
        versions = [_regression_version("houses", alpha=0.01), _regression_version("houses", alpha=2000.0)]
    finally: mp.undo()
    return d, versions


@pytest.fixture
def houses(houses_store, tmp_path, monkeypatch, capsys):
    "A private copy of `houses_store`; the working directory holds the demo's params/promote.yaml (ROC AUC limits)."
    d, versions = houses_store
    shutil.copy(d / "mlflow.db", tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path); monkeypatch.setenv("MLKIT_USER", "tester")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    (tmp_path / "params").mkdir()
    shutil.copy(ROOT / "params" / "promote.yaml", tmp_path / "params" / "promote.yaml")
    from mlkit.cli import main
    def cli(*args):
        rc = main([str(a) for a in args]); out = capsys.readouterr()
        return rc, out.out, out.err
    capsys.readouterr()
    return versions, cli


def test_a_params_file_in_the_current_folder_is_not_read(houses):
    "11.6: run from the repository, `mlkit promote` applied the demo's params/promote.yaml (ROC AUC) to a regression model."
    (good, bad), cli = houses
    rc, out, err = cli("promote", "houses", "--version", good)
    assert rc == 0, out + err
    assert out.startswith("gate configuration: defaults for a regression model\n")
    assert "primary: rmse, at least as good as the champion" in out and "baseline: rmse close ≥ 10%" in out
    assert "relative_mae gap ≤ 0.25 by sex" in out and "PROMOTED: houses champion (none) → v1" in out
    rc, out, err = cli("promote", "houses", "--version", bad, "-p", "params/promote.yaml")     # named: read, and refused clearly
    assert rc == 2 and "primary_metric: metric 'roc_auc' is not reported for regression tasks" in err, out + err


def test_verdict_wording_says_better_or_worse_and_names_the_groups(houses):
    "11.8: 'rmse changed by -101.6201' when rmse rose; a fairness failure named the attribute but not the groups and the gap."
    (good, bad), cli = houses
    assert cli("promote", "houses", "--version", good)[0] == 0
    rc, out, err = cli("promote", "houses", "--version", bad)
    assert rc == 1 and "REFUSED: houses v2 stays challenger; champion stays v1" in out
    assert "  - rmse worse by " in out and "required: at least as good as the champion" in out and "changed by" not in out
    rc, out, err = cli("promote", "houses", "--version", bad, "--set", "fairness.max_gap={sex: {mae: 0.0001}}",
                       "--set", "baseline.min_skill=0.05")
    assert rc == 1
    assert out.startswith("gate configuration: defaults for a regression model with --set fairness.max_gap={sex: {mae: 0.0001}}, baseline.min_skill=0.05")
    fail = next(l for l in out.splitlines() if l.startswith("  - mae differs by"))
    assert "between sex groups: highest '" in fail and "(n=" in fail and "lowest '" in fail and fail.endswith("limit 0.0001")
    assert "warning: this gate is weaker than its defaults: baseline.min_skill 0.05 < 0.1; relative_mae gap by sex not limited" in out


def test_a_gate_weaker_than_its_defaults_says_so(houses, tmp_path):
    "15.7: a gate must never be weaker than its documented defaults without saying so (and the history records what it gave up)."
    (good, bad), cli = houses
    (tmp_path / "lenient.yaml").write_text("baseline:\n  min_skill: null\nfairness:\n  max_gap: {}\nschema_check: subset\n")
    rc, out, err = cli("promote", "houses", "--version", good, "-p", tmp_path / "lenient.yaml")
    assert rc == 0 and out.startswith(f"gate configuration: params file '{tmp_path / 'lenient.yaml'}'")
    assert ("warning: this gate is weaker than its defaults: no baseline check (baseline.min_skill: null); relative_mae gap by sex "
            "not limited (default ≤ 0.25); schema_check subset (default strict)") in out
    from mlkit.registry import read_history
    assert read_history("houses")[-1]["gate"]["weaker"][0] == "no baseline check (baseline.min_skill: null)"


def test_dry_run_chooses_without_registering_or_moving(houses):
    "The compare notebook's dry run: the same verdict as a promotion, with nothing registered, aliased or recorded."
    from mlkit.promote import choose_challenger, dry_run
    from mlkit.registry import get_alias, read_history
    (good, bad), cli = houses
    assert choose_challenger("houses") == bad
    v = dry_run("houses")
    assert v.challenger == bad and v.champion is None and v.passed
    assert get_alias("houses", "champion") is None and get_alias("houses", "challenger") is None and read_history("houses") == []
