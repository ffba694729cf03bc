"""Monitoring correctness with fixed seeds: false-alarm rate on unshifted batches, detection of covariate/prior/concept shift,
exactness of the tests against scipy on raw samples, and bad input. CLI/pipeline tests are at the end of the file."""
import json, time
import numpy as np, pandas as pd, pytest
from scipy.stats import ks_2samp, chi2_contingency, false_discovery_control
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline

from mlkit.core import MonitorError
from mlkit.checks import infer_schema
from mlkit.data import make_credit_data
from mlkit.evaluate import compute_metrics
from mlkit.features import make_preprocessor
from mlkit.profile import make_profile
from mlkit.drift import adjust_pvalues, check_batch, compare_categorical, compare_numeric, drift_report
from mlkit.monitor import MonitorParams

NOT_FEATURES = ("default", "id", "application_date")


@pytest.fixture(scope="module")
def world():
    "A model trained on the credit demo, its holdout metrics and its reference profile (predictions profiled on the holdout)."
    df = make_credit_data(5000, seed=0)
    schema = infer_schema(df, target="default", time_column="application_date")
    feats = [c for c in df.columns if c not in NOT_FEATURES]
    tr, te = df.iloc[:4000], df.iloc[4000:]
    model = Pipeline([("preprocess", make_preprocessor(schema)),
                      ("estimator", HistGradientBoostingClassifier(max_iter=50, random_state=0))]).fit(tr[feats], tr["default"])
    profile = make_profile(tr[feats], schema=schema, model=model, X_pred=te[feats], target=tr["default"])
    holdout = {f"test_{k}": v for k, v in compute_metrics(model, te[feats], te["default"], task="binary").items()}
    return dict(model=model, profile=profile, holdout=holdout, feats=feats, train=tr)


def report(world, batch, labels=True):
    return drift_report(batch, world["profile"], model=world["model"], y=batch["default"] if labels else None,
                        task="binary", holdout_metrics=world["holdout"])


@pytest.mark.slow
def test_false_alarms_on_200_unshifted_batches(world):
    "200 batches of 1,000 rows from the training distribution (labels included): the default thresholds alert in at most 5 %."
    pool = make_credit_data(200_000, seed=1)
    proba = world["model"].predict_proba(pool[world["feats"]])            # one vectorized prediction pass for all batches
    t0, alerts = time.perf_counter(), []
    for i in range(200):
        sl = slice(i * 1000, (i + 1) * 1000)
        b = pool.iloc[sl]
        r = drift_report(b, world["profile"], predictions=proba[sl], y=b["default"], task="binary", holdout_metrics=world["holdout"])
        alerts.append(r.drifted)
    rate = np.mean([bool(a) for a in alerts])
    print(f"false-alarm rate {rate:.3f} ({sum(map(bool, alerts))}/200) in {time.perf_counter() - t0:.1f} s:", [a for a in alerts if a])
    assert rate <= 0.05
    assert "roc_auc" in set(r.table["feature"]) and "target" in set(r.table["feature"])   # performance and target were tested


@pytest.mark.parametrize("seed", [7, 8])
def test_covariate_shift_alerts_and_names_the_shifted_features(world, seed):
    b = make_credit_data(2000, seed=seed, shift="covariate")
    r = report(world, b, labels=False)
    assert r.verdict == "alert" and r.exit_code == 3
    assert {"age", "income", "debt_ratio", "prediction"} <= set(r.drifted), r.drifted
    assert not {"sex", "region", "purpose"} & set(r.drifted), r.drifted          # untouched features stay quiet


@pytest.mark.parametrize("seed", [7, 8])
def test_prior_shift_shows_as_prediction_and_target_drift(world, seed):
    b = make_credit_data(2000, seed=seed, shift="prior")
    assert "prediction" in report(world, b, labels=False).drifted
    r = report(world, b)
    assert {"prediction", "target"} <= set(r.drifted), r.drifted
    assert not r.flagged("alert", role="performance")                          # P(y|x) unchanged: the model still ranks well


@pytest.mark.parametrize("seed", [7, 8])
def test_concept_drift_shows_as_performance_decay_once_labels_arrive(world, seed):
    b = make_credit_data(2000, seed=seed, shift="concept")
    assert not report(world, b, labels=False).alert                           # inputs and predictions look the same
    r = report(world, b)
    assert r.flagged("alert", role="performance") == ["roc_auc"], r.table.query("role == 'performance'")
    perf = r.table.query("role == 'performance'").iloc[0]
    assert perf["cur"] < perf["ref"] * 0.9


def test_no_shift_at_zero_strength_is_healthy(world):
    b = make_credit_data(2000, seed=11, shift="covariate", shift_strength=0.0)
    assert not report(world, b).alert


def test_ks_and_chi2_match_scipy_on_raw_samples(world):
    tr, prof = world["train"], world["profile"]["columns"]
    b = make_credit_data(1500, seed=3, shift="covariate")
    for col in ("n_open_accounts", "credit_history_months"):                   # discrete: exact
        r = compare_numeric(b[col], prof[col])
        k = ks_2samp(tr[col].dropna(), b[col].dropna())
        assert r["statistic"] == pytest.approx(k.statistic, abs=1e-12)
        assert r["p_value"] == pytest.approx(k.pvalue, rel=0.05, abs=1e-12)
    for col in ("income", "debt_ratio"):                                       # continuous: within one grid step (1/500)
        r = compare_numeric(b[col], prof[col])
        assert abs(r["statistic"] - ks_2samp(tr[col].dropna(), b[col].dropna()).statistic) <= 1 / 500
    r = compare_categorical(b["housing"], prof["housing"])
    t = np.vstack([r["curve"]["ref_bins"], r["curve"]["cur_bins"]])
    assert r["p_value"] == pytest.approx(chi2_contingency(t[:, t.sum(0) > 0], correction=False).pvalue, rel=1e-6)


def test_multiple_testing_corrections():
    p = np.random.default_rng(0).random(30) ** 4
    np.testing.assert_allclose(adjust_pvalues(p, "fdr_bh"), false_discovery_control(p))
    np.testing.assert_allclose(adjust_pvalues(p, "bonferroni"), np.minimum(p * 30, 1))
    holm = adjust_pvalues(p, "holm")
    assert (holm >= p).all() and (holm <= np.minimum(p * 30, 1) + 1e-15).all()
    assert np.isnan(adjust_pvalues([0.1, np.nan], "holm")[1])


def test_feature_overrides_and_correction_change_the_verdict(world):
    b = make_credit_data(2000, seed=7, shift="covariate")
    base = report(world, b, labels=False)
    quiet = drift_report(b, world["profile"], model=world["model"],
                         params=MonitorParams(features={"age": {"ignore": True}, "income": {"d_min": 1, "psi_alert": 99}}))
    assert "age" in base.drifted and "age" not in set(quiet.table["feature"])
    assert "income" in base.drifted and "income" not in quiet.drifted
    strict = drift_report(b, world["profile"], model=world["model"], params=MonitorParams(thresholds={"d_min": 1, "psi_alert": 99}))
    assert strict.drifted == []


def test_profile_is_json_and_small_for_20_features():
    X = pd.DataFrame(np.random.default_rng(2).lognormal(size=(50_000, 20)), columns=[f"x{i}" for i in range(20)])
    prof = make_profile(X, schema={"columns": {c: {"kind": "numeric"} for c in X}}, predictions=X["x0"].to_numpy())
    assert len(json.dumps(prof)) < 200_000


@pytest.mark.parametrize("mutate, match", [
    (lambda b: b.iloc[:0], "batch is empty"),
    (lambda b: b.drop(columns=["income", "region"]), r"missing columns \['income', 'region'\]"),
    (lambda b: b.assign(income=b["income"].astype(str)), "'income' should be numeric but is"),
    (lambda b: b.iloc[:10], "fewer than min_rows=100"),
])
def test_bad_batches_are_clear_errors(world, mutate, match):
    b = make_credit_data(500, seed=5)
    with pytest.raises(MonitorError, match=match): drift_report(mutate(b), world["profile"])


def test_model_without_profile_is_a_clear_error():
    with pytest.raises(MonitorError, match="no reference profile"): check_batch(make_credit_data(200, seed=1), None)


# ---------------------------------------------------------------------------------------------------------------------------
# Issue 11 regressions on data shaped like the cases reported: multiclass string labels (item 1), the KS grid (item 10).

def _numeric_profile(values):
    return make_profile(pd.DataFrame({"x": values}), schema={"columns": {"x": {"kind": "numeric"}}})["columns"]["x"]


@pytest.mark.parametrize("n_ref, n_cur, missing, seed", [(3617, 3617, 0.0, 5), (20_000, 200_000, 0.05, 2),
                                                          (100_000, 1_000_000, 0.0, 3), (100_000, 1_000_000, 0.05, 4)])
def test_ks_distance_is_never_above_the_exact_two_sample_distance(n_ref, n_cur, missing, seed):
    "Item 10: on the 501-point grid the distance read 0.0066 where scipy's exact one was 0.0048; now it is a lower bound within 1/500."
    rng = np.random.default_rng(seed)
    ref, cur = rng.normal(size=n_ref), rng.normal(size=n_cur)
    ref[rng.random(n_ref) < missing] = np.nan
    r, exact = compare_numeric(cur, _numeric_profile(ref)), ks_2samp(ref[~np.isnan(ref)], cur).statistic
    assert exact - 1 / 500 <= r["statistic"] <= exact + 1e-12, (r["statistic"], exact)


def test_ks_distance_and_pvalue_are_exact_for_a_discrete_column():
    rng = np.random.default_rng(8)
    ref, cur = rng.poisson(4, 100_000).astype(float), rng.poisson(4.05, 1_000_000).astype(float)
    r, k = compare_numeric(cur, _numeric_profile(ref)), ks_2samp(ref, cur)
    assert r["statistic"] == pytest.approx(k.statistic, abs=1e-12) and r["p_value"] == pytest.approx(k.pvalue, rel=1e-6)


def test_a_significant_shift_below_the_effect_size_is_a_warning_not_ok():
    "Item 10: 1M rows with a 0.05 sigma mean shift gave p_adj ~ 1e-167, distance 0.046 and status 'ok'."
    rng = np.random.default_rng(9)
    prof = make_profile(pd.DataFrame({"x": rng.normal(size=100_000)}), schema={"columns": {"x": {"kind": "numeric"}}})
    r = drift_report(pd.DataFrame({"x": rng.normal(0.05, 1, 1_000_000)}), prof)
    ks = r.table.query("test == 'ks'").iloc[0]
    assert ks["p_adj"] < 1e-10 and ks["distance"] < 0.05 and ks["psi"] < 0.1
    assert ks["status"] == "warn" and r.verdict == "warn" and not r.alert


def test_multiclass_model_with_string_labels_does_not_alert_on_an_unshifted_half():
    "Item 1: an unshifted half of the training table gave ALERT on prediction (distance 1, PSI ~ 9.6): '0','1','2' vs class names."
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(0); n = 4000
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "colour": rng.choice(["red", "green", "blue"], n)})
    logits = np.c_[X["a"], X["b"], -X["a"] - X["b"] + (X["colour"] == "red")] + rng.normal(0, .7, (n, 3))
    df = X.assign(species=np.array(["setosa", "versicolor", "virginica"])[logits.argmax(1)])
    schema = infer_schema(df, target="species")
    feats = ["a", "b", "colour"]
    train, half = df.iloc[: n // 2], df.iloc[n // 2:]
    model = Pipeline([("preprocess", make_preprocessor(schema)),
                      ("estimator", LogisticRegression(max_iter=500))]).fit(train[feats], train["species"])
    profile = make_profile(train[feats], schema=schema, model=model, target=train["species"])
    assert set(profile["predictions"]["categories"]) <= {"setosa", "versicolor", "virginica"}
    holdout = {f"test_{k}": v for k, v in compute_metrics(model, train[feats], train["species"], task="multiclass").items()}
    r = drift_report(half, profile, model=model, y=half["species"], task="multiclass", holdout_metrics=holdout)
    pred = r.table.query("feature == 'prediction'").iloc[0]
    assert pred["status"] != "alert" and pred["distance"] < 0.05, r.table
    assert not r.alert, r.table


# A statistical study: fresh reference and batch per trial (with one fixed reference every batch would share its noise, and at
# 1M rows against 100k the batches' verdicts would be nearly identical). Columns: continuous, continuous with missing values,
# counts (discrete), wide integers (more values than the grid), categories, a flag. The drift report's false-alarm rate must stay
# at most 5 % and the continuous columns' KS p-values uniform. Prints the rates.
def _world(rng, n):
    d = pd.DataFrame({"normal": rng.normal(size=n), "lognormal": rng.lognormal(0, 1, n), "counts": rng.poisson(4, n).astype(float),
                      "wide_int": rng.integers(0, 5000, n).astype(float),
                      "segment": pd.Series(np.array(list("abcdefgh"))[rng.choice(8, n, p=np.arange(1, 9) / 36)], dtype="str"),
                      "flag": rng.random(n) < 0.3})
    d.loc[rng.random(n) < 0.05, "lognormal"] = np.nan
    return d


_SCHEMA = {"columns": {"normal": {"kind": "numeric"}, "lognormal": {"kind": "numeric"}, "counts": {"kind": "numeric"},
                       "wide_int": {"kind": "numeric"}, "segment": {"kind": "categorical"}, "flag": {"kind": "boolean"}}}


@pytest.mark.slow
@pytest.mark.parametrize("n_ref, n_cur, trials", [(5_000, 1_000, 200), (100_000, 1_000_000, 80)])   # 80 big batches: ~75 s here
def test_unshifted_batches_keep_uniform_pvalues_and_rare_false_alarms(n_ref, n_cur, trials):
    from scipy.stats import kstest
    rng = np.random.default_rng(n_cur)
    t0, alerts, warns, p = time.perf_counter(), [], [], {}
    for _ in range(trials):
        r = drift_report(_world(rng, n_cur), make_profile(_world(rng, n_ref), schema=_SCHEMA))
        alerts.append(r.alert); warns.append(r.verdict == "warn")
        for row in r.table.itertuples(): p.setdefault(f"{row.feature}/{row.test}", []).append(row.p_value)
    rej = {k: float(np.mean(np.array(v) < 0.05)) for k, v in p.items()}
    unif = {k: kstest(p[k], "uniform").pvalue for k in ("normal/ks", "lognormal/ks")}
    print(f"\n{n_cur:,} rows vs {n_ref:,}: false alarms {np.mean(alerts):.3f}, warnings {np.mean(warns):.3f} over {trials} batches "
          f"in {time.perf_counter() - t0:.0f} s; share of raw p < 0.05 per test: {rej}; uniformity (KS) p: {unif}")
    assert np.mean(alerts) <= 0.05
    assert all(u > 1e-3 for u in unif.values()), unif                      # continuous columns: uniform p-values
    assert all(v <= 0.05 + 3 * (0.05 * 0.95 / trials) ** 0.5 for v in rej.values()), rej    # no test rejects too often


# ---------------------------------------------------------------------------------------------------------------------------
# The monitoring job in process (`run_monitor`): a real MLflow store in a temporary folder, models logged with mlkit's own
# log_model, real HTTP on 127.0.0.1 for the webhook. Marked slow: creating the store and logging two models takes 10-35 s here.

import http.server, threading
from pathlib import Path


class _Receiver:
    "A real HTTP server on 127.0.0.1 collecting POSTed JSON bodies (and the paths they were POSTed to)."
    def __init__(self):
        got = self.got = []
        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                got.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
                self.send_response(200); self.end_headers()
            def log_message(self, *a): pass
        self.srv = http.server.HTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_port}/alert"
        self.t = threading.Thread(target=self.srv.serve_forever, daemon=True); self.t.start()
    def close(self): self.srv.shutdown(); self.srv.server_close()


def _species_table(n, seed):
    "A multiclass table with string labels and its own id column (no column named 'id'), like the one reported in issue 11."
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"customer_id": np.arange(seed * 100_000, seed * 100_000 + n), "a": rng.normal(size=n),
                      "b": rng.normal(size=n), "colour": rng.choice(["red", "green", "blue"], n)})
    logits = np.c_[X["a"], X["b"], -X["a"] - X["b"] + (X["colour"] == "red")] + rng.normal(0, .7, (n, 3))
    return X.assign(species=np.array(["setosa", "versicolor", "virginica"])[logits.argmax(1)])


def _log(model, X, y, schema, task, name=None):
    import mlflow
    from mlkit import tracking
    prof = make_profile(X, schema=schema, model=model, target=y)
    metrics = {f"test_{k}": v for k, v in compute_metrics(model, X, y, task=task).items()}
    with mlflow.start_run() as run:
        tracking.log_model(model, X_sample=X, schema=schema, task=task, profile=prof, metrics=metrics, model_name=name)
    return f"models:/{name}/1" if name else f"runs:/{run.info.run_id}/model"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    "A SQLite MLflow store holding the credit model (registered `credit`) and a multiclass model with its own id column."
    import mlflow
    from sklearn.linear_model import LogisticRegression
    d = tmp_path_factory.mktemp("monitor-store")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d); mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{d}/mlflow.db")
        mlflow.set_tracking_uri(f"sqlite:///{d}/mlflow.db")
        df = make_credit_data(3000, seed=0)
        schema = infer_schema(df, target="default", time_column="application_date")
        X = df[[c for c in df.columns if c not in NOT_FEATURES]]
        credit = Pipeline([("preprocess", make_preprocessor(schema)),
                           ("estimator", LogisticRegression(max_iter=300))]).fit(X, df["default"])
        sp = _species_table(3000, seed=1)
        sp_schema = infer_schema(sp, target="species")
        sp_X = sp[["a", "b", "colour"]]
        species = Pipeline([("preprocess", make_preprocessor(sp_schema)),
                            ("estimator", LogisticRegression(max_iter=500))]).fit(sp_X, sp["species"])
        uris = {"credit": _log(credit, X, df["default"], schema, "binary", name="credit"),
                "species": _log(species, sp_X, sp["species"], sp_schema, "multiclass")}
        yield {"dir": d, "uri": f"sqlite:///{d}/mlflow.db", **uris, "species_schema": sp_schema}


@pytest.fixture
def in_store(store, monkeypatch):
    import mlflow
    monkeypatch.chdir(store["dir"]); monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"]); mlflow.set_tracking_uri(store["uri"])
    yield store
    while mlflow.active_run(): mlflow.end_run()


@pytest.mark.slow
def test_monitor_takes_the_id_column_and_target_from_the_models_record(in_store, tmp_path):
    """Issue 11.5 (and 11.1 end to end): labels keyed by the model's own id column join without any setting; a multiclass
    model with string labels is not alerted on an unshifted batch."""
    from mlkit.monitor import run_monitor
    assert in_store["species_schema"]["id_column"] == "customer_id"
    batch = _species_table(2000, seed=2)
    batch.drop(columns=["species"]).to_parquet(tmp_path / "batch.parquet")
    batch[["customer_id", "species"]].sample(frac=1, random_state=0).to_csv(tmp_path / "labels.csv", index=False)
    r = run_monitor(MonitorParams(model=in_store["species"], input=str(tmp_path / "batch.parquet"), labels=str(tmp_path / "labels.csv")))
    t = pd.DataFrame(r.payload["tests"]).set_index("feature")
    assert {"target", "f1_macro", "prediction"} <= set(t.index), t
    assert r.verdict != "alert" and t.loc["prediction", "distance"] < 0.05, t


@pytest.mark.slow
def test_a_wrong_id_column_names_the_fix_not_a_file_that_does_not_exist(in_store, tmp_path):
    from mlkit.monitor import run_monitor
    batch = _species_table(500, seed=3).rename(columns={"customer_id": "key"})     # e.g. a log keyed by another name
    batch.to_parquet(tmp_path / "batch.parquet")
    batch[["key", "species"]].to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(MonitorError, match=r"batch has no column 'customer_id'.*--set id_column=COLUMN") as e:
        run_monitor(MonitorParams(model=in_store["species"], input=str(tmp_path / "batch.parquet"), labels=str(tmp_path / "labels.csv")))
    assert "monitor.yaml" not in str(e.value)
    r = run_monitor(MonitorParams(model=in_store["species"], input=str(tmp_path / "batch.parquet"), labels=str(tmp_path / "labels.csv"),
                                  id_column="key"))
    assert "target" in {row["feature"] for row in r.payload["tests"]}


@pytest.mark.slow
def test_the_record_params_metrics_artifacts_tags(in_store, tmp_path):
    import mlflow
    from mlkit.monitor import run_monitor, read_monitor_result
    make_credit_data(1500, seed=7, shift="covariate").to_csv(tmp_path / "shifted.csv", index=False)
    r = run_monitor(MonitorParams(model=in_store["credit"], input=str(tmp_path / "shifted.csv")))
    run = mlflow.get_run(r.run_id)
    assert run.info.status == "FINISHED" and r.exit_code == 3 and run.data.tags["mlkit.monitor.verdict"] == "alert"
    assert run.data.params["model"] == in_store["credit"] and run.data.params["thresholds.d_min"] == "0.05"
    assert "seed" not in run.data.params and run.data.tags["mlkit.pipeline"] == "monitor"
    assert run.data.tags["mlkit.monitor.model_version"] == "1" and run.data.tags["mlkit.monitor.alerts"].split(",") == r.payload["alerts"]
    assert run.data.metrics["monitor_n_alerts"] == len(r.payload["alerts"]) and "drift_income_ks_distance" in run.data.metrics
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(r.run_id, "monitor")}
    assert arts == {"monitor/plots", "monitor/report.html", "monitor/verdict.json"}, arts
    assert any(a.path.endswith("income.png") for a in mlflow.MlflowClient().list_artifacts(r.run_id, "monitor/plots"))
    back = read_monitor_result(r.run_id)
    assert (back.payload, back.verdict, back.webhook) == (r.payload, "alert", None)


@pytest.mark.slow
def test_the_job_records_into_the_callers_run_and_leaves_it_open(in_store, tmp_path):
    "The runner contract: when a run is active (the runner's, or a notebook's own), the job logs there and does not end it."
    import mlflow
    from mlkit.monitor import run_monitor
    make_credit_data(500, seed=8).to_csv(tmp_path / "b.csv", index=False)
    from mlkit.tracking import ensure_experiment
    with mlflow.start_run(experiment_id=ensure_experiment("outer")) as outer:   # no process-wide set_experiment: it outlives the test
        mlflow.log_params({"model": in_store["credit"]})                      # as a runner would have logged it already
        r = run_monitor(MonitorParams(model=in_store["credit"], input=str(tmp_path / "b.csv")))
        assert r.run_id == outer.info.run_id and mlflow.active_run().info.run_id == outer.info.run_id
    run = mlflow.get_run(outer.info.run_id)
    assert run.data.tags["mlkit.monitor.verdict"] in ("healthy", "warn") and run.data.params["input"] == str(tmp_path / "b.csv")


@pytest.mark.slow
def test_a_failing_step_leaves_the_run_failed_with_the_report(in_store, tmp_path):
    "Retraining a model monitored by a runs:/ URI (no registered model to add a version to) fails after the report was logged."
    import mlflow
    from mlkit.monitor import run_monitor
    batch = _species_table(800, seed=4).assign(a=lambda d: d["a"] + 2)       # shifted: the alert triggers the retraining
    batch.to_csv(tmp_path / "labelled.csv", index=False)
    with pytest.raises(MonitorError, match="needs a registered model"):
        run_monitor(MonitorParams(model=in_store["species"], input=str(tmp_path / "labelled.csv"), labels=str(tmp_path / "labelled.csv"),
                                  retrain=True))
    run = mlflow.search_runs(experiment_names=["mlkit-monitor"], order_by=["start_time DESC"], max_results=1, output_format="list")[0]
    assert run.info.status == "FAILED" and run.data.tags["mlkit.monitor.verdict"] == "alert"


@pytest.mark.slow
def test_webhook_url_is_never_printed_logged_or_stored(in_store, tmp_path):
    """Issue 15.4: a webhook URL's path and query are its secret; only scheme and host appear, on the terminal and in the
    record."""
    import mlflow
    from conftest import run_mlkit
    make_credit_data(600, seed=9, shift="covariate").to_csv(tmp_path / "shifted.csv", index=False)
    rec = _Receiver()
    try:
        secret_url = rec.url.replace("/alert", "/services/T0SECRETPATH/B0?token=SECRETQUERY")
        r = run_mlkit("monitor", "--model", in_store["credit"], "--input", tmp_path / "shifted.csv", "--webhook", secret_url, cwd=in_store["dir"])
        bad = run_mlkit("monitor", "--model", in_store["credit"], "--input", tmp_path / "shifted.csv",
                        "--webhook", "http://127.0.0.1:1/services/T0SECRETPATH/B0?token=SECRETQUERY", cwd=in_store["dir"])
    finally: rec.close()
    assert r.returncode == 3 and bad.returncode == 3, r.stderr + bad.stderr
    assert rec.got and rec.got[0][0] == "/services/T0SECRETPATH/B0?token=SECRETQUERY" and rec.got[0][1]["verdict"] == "alert"
    assert "warning: webhook POST to http://127.0.0.1:1 failed" in bad.stderr
    seen = r.stdout + r.stderr + bad.stdout + bad.stderr
    for out in (r, bad):
        rid = out.stdout.split("monitor run ")[1].split()[0]
        run = mlflow.get_run(rid)
        seen += json.dumps([run.data.params, run.data.tags])
        local = mlflow.artifacts.download_artifacts(run_id=rid, dst_path=str(tmp_path / rid))
        seen += "".join(p.read_text(errors="replace") for p in Path(local).rglob("*") if p.is_file() and p.suffix != ".png")
    assert "SECRETPATH" not in seen and "SECRETQUERY" not in seen
    assert "http://127.0.0.1:" in json.dumps(mlflow.get_run(rid).data.params)    # the origin is kept, to say where alerts went


# ---------------------------------------------------------------------------------------------------------------------------
# `mlkit monitor` end to end: the real train pipeline's model (conftest.trained_store, a kernel: slow), MLflow, a local webhook
# receiver. The command runs the job in process (`run_monitor`); attaching an executed notebook is the runner's part.

from conftest import run_mlkit


def _write_log(folder, df, *, minutes_ago=0, version="1"):
    "Prediction-log files in mlkit.serve's format: the inputs plus prediction, score, model_name, model_version, timestamp, request_id."
    folder.mkdir(exist_ok=True)
    ts = pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=minutes_ago)
    log = df.drop(columns=["default"]).assign(prediction=0, score=0.1, model_name="credit", model_version=version,
                                             timestamp=ts, request_id=[f"r{i}" for i in range(len(df))])
    log.to_parquet(folder / f"predictions-{minutes_ago:06d}-1-00000.parquet")


def _run(uri, run_id):
    from mlflow import MlflowClient
    import mlflow; mlflow.set_tracking_uri(uri)
    c = MlflowClient()
    return c.get_run(run_id), c


@pytest.mark.slow
def test_cli_from_log_alerts_exit_3_names_features_logs_report_and_posts_webhook(trained_copy):
    d = trained_copy["dir"]
    _write_log(d / "plog", make_credit_data(300, seed=21), minutes_ago=600)              # old, unshifted: outside --since
    _write_log(d / "plog", make_credit_data(400, seed=22, shift="covariate"), minutes_ago=1)
    rec = _Receiver()
    try:
        r = run_mlkit("monitor", "--model", "models:/credit/1", "--from-log", d / "plog", "--since", "2h", "--webhook", rec.url, cwd=d)
    finally: rec.close()
    assert r.returncode == 3, r.stdout + r.stderr
    assert "verdict: ALERT — 400 rows" in r.stdout
    for f in ("income", "debt_ratio", "prediction"): assert f in r.stdout.split("alerts:")[1].splitlines()[0], r.stdout
    body = rec.got[0][1] if rec.got else {}
    assert body.get("verdict") == "alert" and "income" in body["alerts"] and body["model_version"] == "1"
    run_id = r.stdout.split("monitor run ")[1].split()[0]
    run, c = _run(trained_copy["uri"], run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mlkit.monitor.verdict"] == "alert"
    assert run.data.metrics["monitor_n_alerts"] >= 3 and "drift_income_ks_distance" in run.data.metrics
    arts = {a.path for a in c.list_artifacts(run_id, "monitor")}
    assert {"monitor/report.html", "monitor/verdict.json", "monitor/plots"} <= arts, arts
    assert any(a.path.endswith("income.png") for a in c.list_artifacts(run_id, "monitor/plots"))
    assert c.list_artifacts(run_id, "figures"), "the executed notebook shows the stored overlays (recorded under figures/)"


@pytest.mark.slow
def test_cli_failed_webhook_warns_on_stderr_and_still_exits_3(trained_copy):
    "QA: a webhook nobody listens on → one `warning: webhook POST to <scheme://host> failed: <reason>` line on stderr; exit code 3."
    d = trained_copy["dir"]
    make_credit_data(400, seed=24, shift="covariate").to_parquet(d / "shifted.parquet")
    url = "http://127.0.0.1:1/hook"
    r = run_mlkit("monitor", "--model", "models:/credit/1", "--input", "shifted.parquet", "--webhook", url, cwd=d)
    assert r.returncode == 3, r.stdout + r.stderr
    lines = [l for l in r.stderr.splitlines() if l.startswith("warning: webhook")]
    assert len(lines) == 1 and lines[0].startswith("warning: webhook POST to http://127.0.0.1:1 failed: ") and "refused" in lines[0].lower(), r.stderr
    assert "/hook" not in r.stdout + r.stderr                                  # the URL's path (often its secret) is never printed
    run, _ = _run(trained_copy["uri"], r.stdout.split("monitor run ")[1].split()[0])
    assert run.data.tags["mlkit.monitor.webhook"] == "failed" and run.data.tags["mlkit.monitor.webhook_error"] in lines[0]


@pytest.mark.slow
def test_cli_unshifted_batch_exits_0(trained_copy):
    d = trained_copy["dir"]
    make_credit_data(800, seed=23).to_parquet(d / "batch.parquet")
    r = run_mlkit("monitor", "--model", "models:/credit/1", "--input", "batch.parquet", cwd=d)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict: HEALTHY" in r.stdout or "verdict: WARN" in r.stdout


@pytest.mark.parametrize("make, args, match", [
    (lambda d: make_credit_data(50, seed=1).iloc[:0].to_csv(d / "b.csv", index=False), ["--input", "b.csv"], "no rows"),
    (lambda d: (d / "plog").mkdir() or (d / "plog" / "predictions-1.parquet").write_text("garbage"), ["--from-log", "plog"],
     "cannot read the prediction log in 'plog'"),
    (lambda d: None, ["--input", "nope.csv"], "input file 'nope.csv' not found"),
    (lambda d: make_credit_data(200, seed=1).to_csv(d / "b.csv", index=False), ["--input", "b.csv", "--labels", "nope.csv"],
     "labels file 'nope.csv' not found"),
    (lambda d: None, [], "give exactly one batch"),
    (lambda d: None, ["--since", "24h"], "--since 24h needs --from-log"),
])
@pytest.mark.slow
def test_cli_bad_input_is_a_clear_error_not_0_or_3(in_store, tmp_path, monkeypatch, capsys, make, args, match):
    "In process through `mlkit.cli.main`: the exit code and the one-line message on stderr."
    import re
    from mlkit.cli import main
    for var, value in (("OMP_WAIT_POLICY", "PASSIVE"), ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
                       ("MLFLOW_LOGGING_LEVEL", "WARNING")): monkeypatch.setenv(var, value)     # what main() would set
    monkeypatch.chdir(tmp_path); make(tmp_path)
    code = main(["monitor", "--model", in_store["credit"], *args])
    err = capsys.readouterr().err
    assert code not in (0, 3) and re.search(match, err) and "Traceback" not in err, err


@pytest.mark.slow
def test_model_without_profile_is_refused(trained_copy):
    import mlflow
    from mlkit import tracking
    from mlkit.monitor import load_monitored_model
    meta = tracking.load_model_meta("models:/credit/1")
    model = tracking.load_sklearn_model("models:/credit/1")
    X = make_credit_data(50, seed=2)[list(meta["profile"]["columns"])]
    with mlflow.start_run() as run:
        tracking.log_model(model, X_sample=X, schema=meta["schema"], task=meta["task"], profile=None)
    with pytest.raises(MonitorError, match="has no reference profile"): load_monitored_model(f"runs:/{run.info.run_id}/model")


@pytest.mark.slow
def test_cli_retrain_on_alert_goes_through_the_gate(trained_copy):
    "Concept drift with labels: the alert fires (performance), the train pipeline runs on the labelled data, the gate decides."
    d = trained_copy["dir"]
    make_credit_data(1500, seed=31, shift="concept").to_csv(d / "labelled.csv", index=False)
    r = run_mlkit("monitor", "--model", "models:/credit/1", "--input", "labelled.csv", "--retrain", "--labels", "labelled.csv",
                  "--set", f"train_params={Path(__file__).parents[1] / 'params' / 'ci.yaml'}", cwd=d)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "roc_auc" in r.stdout.split("alerts:")[1].splitlines()[0]
    assert "retrained: run " in r.stdout and ("PROMOTED to champion" in r.stdout or "REFUSED by the gate" in r.stdout), r.stdout
    from mlflow import MlflowClient
    versions = {str(v.version) for v in MlflowClient().search_model_versions("name='credit'")}
    assert "2" in versions
