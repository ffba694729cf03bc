"""mlkit.evaluate: metrics against scikit-learn's own functions, cross-validation folds and callbacks, plots, explanations, errors."""
import os, subprocess, sys
import numpy as np, pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression, RidgeClassifier
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlkit.core import ConfigError, DataError, ModelError
from mlkit import evaluate as ev


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    "2 shared cores: OpenMP threads fighting for them slow HistGradientBoosting many times over."
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1): yield


def frame(n=1500, seed=0, labels=("bad", "good")):
    "Numeric columns with NaNs, a pandas-3 `str` categorical with NaNs, an ignored date column; target driven by debt_ratio/employment."
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"age": rng.normal(40, 10, n).round(), "income": rng.lognormal(10, .5, n), "debt_ratio": rng.uniform(0, 1, n),
                      "employment": rng.choice(["salaried", "self_employed", "unemployed"], n, p=[.7, .2, .1]),
                      "noise": rng.normal(size=n), "application_date": pd.date_range("2024-01-01", periods=n, freq="h")})
    logit = -1.5 + 3 * X.debt_ratio + 1.5 * (X.employment == "unemployed")
    X.loc[rng.random(n) < .1, "income"] = np.nan
    X.loc[rng.random(n) < .05, "employment"] = np.nan
    y = pd.Series(np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), labels[1], labels[0]), name="y")
    return X, y


def pipeline(est=None):
    ct = ColumnTransformer([("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["age", "income", "debt_ratio", "noise"]),
                            ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="missing"),
                                                  OneHotEncoder(handle_unknown="ignore", sparse_output=False)), ["employment"])])
    return Pipeline([("preprocess", ct), ("estimator", est if est is not None else HistGradientBoostingClassifier(max_iter=40, random_state=0))])


@pytest.fixture(scope="module")
def binary():
    X, y = frame()
    return pipeline().fit(X.iloc[:1000], y.iloc[:1000]), X.iloc[1000:], y.iloc[1000:]


def test_frame_has_what_the_module_must_cope_with():
    X, _ = frame()
    assert str(X.employment.dtype) == "str" and X.employment.isna().any() and X.income.isna().any()


# ---------------------------------------------------------------- metrics

def test_binary_metrics_match_sklearn_with_second_class_positive(binary):
    model, X, y = binary
    m = ev.compute_metrics(model, X, y, task="binary")
    assert list(m) == list(ev.TASK_METRICS["binary"]) and all(type(v) is float for v in m.values())
    p = model.predict_proba(X)[:, 1]; pred = model.predict(X)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y == "good", p))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y == "good", p))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, pos_label="good"))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, pos_label="good"))
    assert m["brier"] == pytest.approx(np.mean(((y == "good").to_numpy() - p) ** 2))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, model.predict_proba(X)))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))


def test_positive_class_follows_label_order():
    "Same data, labels swapped in sort order: the positive class changes, so recall is the other class's recall."
    X, y = frame(labels=("bad", "good"))
    flipped = y.map({"bad": "z_bad", "good": "a_good"})             # now "z_bad" sorts last → positive
    m1 = ev.compute_metrics(pipeline().fit(X, y), X, y, task="binary")
    m2 = ev.compute_metrics(pipeline().fit(X, flipped), X, flipped, task="binary")
    assert m1["roc_auc"] == pytest.approx(m2["roc_auc"])             # ranking quality is symmetric
    assert m1["recall"] != pytest.approx(m2["recall"])


def test_binary_int_labels_and_no_predict_proba():
    X, y = frame()
    y01 = (y == "good").astype(int)
    m = ev.compute_metrics(pipeline(RidgeClassifier()).fit(X, y01), X, y01, task="binary")
    assert "roc_auc" in m and "log_loss" not in m and "brier" not in m      # scored by decision_function
    assert 0.5 < m["roc_auc"] <= 1


def test_single_class_holdout_gives_nan_not_error(binary):
    model, X, y = binary
    keep = (y == "good").to_numpy()
    m = ev.compute_metrics(model, X[keep], y[keep], task="binary")
    assert np.isnan(m["roc_auc"]) and np.isnan(m["pr_auc"]) and not np.isnan(m["accuracy"])


def test_multiclass_metrics():
    X, _ = frame()
    y = pd.cut(X.debt_ratio, [0, .3, .6, 1], labels=["lo", "mid", "hi"], include_lowest=True).astype(str)
    model = pipeline().fit(X, y)
    m = ev.compute_metrics(model, X, y, task="multiclass")
    assert list(m) == list(ev.TASK_METRICS["multiclass"])
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, model.predict(X), average="macro"))
    assert m["roc_auc_ovr"] == pytest.approx(skm.roc_auc_score(y, model.predict_proba(X), multi_class="ovr", labels=model.classes_))
    no_proba = ev.compute_metrics(pipeline(RidgeClassifier()).fit(X, y), X, y, task="multiclass")
    assert set(no_proba) == {"accuracy", "balanced_accuracy", "f1_macro"}


def test_regression_metrics_and_mape_only_without_zeros():
    X, _ = frame()
    y = X.debt_ratio * 10 + 1
    model = pipeline(LinearRegression()).fit(X, y)
    m = ev.compute_metrics(model, X, y, task="regression")
    pred = model.predict(X)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((y - pred) ** 2)))
    assert m["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y, pred))
    y0 = y.copy(); y0.iloc[0] = 0.0
    assert "mape" not in ev.compute_metrics(model, X, y0, task="regression")


@pytest.mark.parametrize("call, exc, match", [
    (lambda X, y, m: ev.compute_metrics(pipeline(), X, y, task="binary"), ModelError, r"the model \(HistGradientBoostingClassifier\) is not fitted; call model.fit"),
    (lambda X, y, m: ev.compute_metrics(m, X, y, task="regression"), ModelError, r"task 'regression' needs a regressor; got HistGradientBoostingClassifier \(a classifier\)"),
    (lambda X, y, m: ev.compute_metrics(m, X, y, task="binari"), ConfigError, r"task must be one of .* got 'binari' — did you mean 'binary'"),
    (lambda X, y, m: ev.compute_metrics(m, X, y.iloc[:5], task="binary"), DataError, r"same number of rows; got 500 and 5"),
    (lambda X, y, m: ev.compute_metrics(m, X, y.replace("good", "fine"), task="binary"), DataError, r"labels \['fine'\] in y were never seen"),
    (lambda X, y, m: ev.compute_metrics(m, X, y.where(y.index != y.index[0]), task="binary"), DataError, r"y has 1 missing values"),
    (lambda X, y, m: ev.compute_metrics(m, X.iloc[:0], y.iloc[:0], task="binary"), DataError, r"no rows to evaluate"),
])
def test_compute_metrics_errors(binary, call, exc, match):
    model, X, y = binary
    with pytest.raises(exc, match=match): call(X, y, model)


def test_regressor_as_classifier_and_multiclass_as_binary_errors():
    X, y = frame()
    reg = pipeline(LinearRegression()).fit(X, X.debt_ratio)
    with pytest.raises(ModelError, match="task 'binary' needs a classifier"): ev.compute_metrics(reg, X, y, task="binary")
    y3 = pd.Series(np.array(["a", "b", "c"])[np.arange(len(X)) % 3])
    with pytest.raises(DataError, match=r"needs a model fitted on 2 classes; got 3.*set data.task to 'multiclass'"):
        ev.compute_metrics(pipeline(LogisticRegression()).fit(X, y3), X, y3, task="binary")


def test_metric_tables_and_direction():
    assert ev.default_metric("binary") == "roc_auc" and ev.default_metric("multiclass") == "f1_macro" and ev.default_metric("regression") == "rmse"
    assert ev.metric_direction("cv_roc_auc_mean") == "maximize" and ev.metric_direction("test_brier") == "minimize"
    assert ev.metric_direction("cv_r2_std") == "minimize" and ev.metric_direction("mape") == "minimize"
    for task, names in ev.TASK_METRICS.items():
        for n in names: assert ev.metric_direction(n) in ("maximize", "minimize")
    with pytest.raises(ConfigError, match=r"unknown metric 'test_rsme'.*did you mean 'rmse'"): ev.metric_direction("test_rsme")
    with pytest.raises(ConfigError, match=r"metric 'rmse' is not reported for binary tasks; choose one of \['roc_auc'"): ev.check_metric("rmse", "binary")


# ---------------------------------------------------------------- cross-validation

def test_cv_matches_manual_folds_and_leaves_model_unfitted():
    X, y = frame(n=600)
    model = pipeline()
    seen = []
    cv = ev.cross_validate_model(model, X, y, task="binary", folds=3, seed=7, on_fold=lambda i, s: seen.append((i, s)))
    assert set(cv) == {f"cv_{m}_{s}" for m in ev.TASK_METRICS["binary"] for s in ("mean", "std")}
    manual = []
    for tr, va in StratifiedKFold(3, shuffle=True, random_state=7).split(X, y):
        f = pipeline().fit(X.iloc[tr], y.iloc[tr])
        manual.append(skm.roc_auc_score(y.iloc[va] == "good", f.predict_proba(X.iloc[va])[:, 1]))
    assert cv["cv_roc_auc_mean"] == pytest.approx(np.mean(manual)) and cv["cv_roc_auc_std"] == pytest.approx(np.std(manual))
    assert [i for i, _ in seen] == [0, 1, 2]
    assert [s for _, s in seen] == pytest.approx([np.mean(manual[:k + 1]) for k in range(3)])
    assert not hasattr(model[-1], "n_iter_")                                    # cloned per fold
    assert ev.cross_validate_model(model, X, y, task="binary", folds=3, seed=7) == cv   # seeded → reproducible


def test_cv_primary_metric_subset_and_regression():
    X, _ = frame(n=400)
    y = X.debt_ratio * 10 + 1
    seen = []
    cv = ev.cross_validate_model(pipeline(LinearRegression()), X, y, task="regression", folds=4, metrics=["mae", "r2"], primary="mae",
                                 on_fold=lambda i, s: seen.append(s))
    assert list(cv) == ["cv_mae_mean", "cv_mae_std", "cv_r2_mean", "cv_r2_std"]
    assert len(seen) == 4 and seen[-1] == pytest.approx(cv["cv_mae_mean"])
    with pytest.raises(ConfigError, match="metric 'roc_auc' is not reported for regression"):
        ev.cross_validate_model(pipeline(LinearRegression()), X, y, task="regression", metrics=["roc_auc"])


def test_cv_on_fold_exception_propagates_including_optuna_pruning():
    import optuna
    X, y = frame(n=300)
    calls = []
    def prune(i, s):
        calls.append(i)
        raise optuna.TrialPruned(f"fold {i}")
    with pytest.raises(optuna.TrialPruned, match="fold 0"):
        ev.cross_validate_model(pipeline(), X, y, task="binary", folds=3, on_fold=prune)
    assert calls == [0]                                                          # stopped after the first fold


def test_cv_errors():
    X, y = frame(n=40)
    y = pd.Series(["bad"] * 2 + ["good"] * 38)
    with pytest.raises(DataError, match=r"5-fold cross-validation needs at least 5 rows of every class; class 'bad' has 2 — lower evaluate.cv_folds"):
        ev.cross_validate_model(pipeline(), X, y, task="binary", folds=5)
    with pytest.raises(ConfigError, match=r"cv folds must be an integer >= 2; got 1"):
        ev.cross_validate_model(pipeline(), X, y, task="binary", folds=1)
    with pytest.raises(DataError, match=r"class 1 has 1 —"):                  # plain label, not np.int64(1)
        ev.cross_validate_model(pipeline(), X, pd.Series([1] + [0] * 39), task="binary", folds=3)
    with pytest.raises(DataError, match=r"50-fold cross-validation needs at least 50 rows; got 40"):
        ev.cross_validate_model(pipeline(LinearRegression()), X, X.age, task="regression", folds=50)


# ---------------------------------------------------------------- plots

def test_plots_per_task_are_free_standing_and_saved(binary, tmp_path):
    import matplotlib.pyplot as plt
    model, X, y = binary
    before = plt.get_fignums()
    figs = ev.make_plots(model, X, y, task="binary")
    assert list(figs) == ["confusion_matrix", "roc_curve", "pr_curve", "calibration"]
    assert plt.get_fignums() == before                                          # nothing left open in pyplot
    assert "Positive label: good" in figs["roc_curve"].axes[0].get_xlabel()
    paths = ev.save_figures({**figs, "pdp_a/b c": figs["roc_curve"]}, tmp_path / "plots")
    assert [p.name for p in paths][-1] == "pdp_a_b_c.png"
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in paths)

    Xr, _ = frame(n=300)
    reg = pipeline(HistGradientBoostingRegressor(max_iter=20)).fit(Xr, Xr.debt_ratio)
    assert list(ev.make_plots(reg, Xr, Xr.debt_ratio, task="regression")) == ["residuals", "predicted_vs_actual"]
    y3 = pd.cut(Xr.debt_ratio, 3, labels=["a", "b", "c"]).astype(str)
    mc = ev.make_plots(pipeline().fit(Xr, y3), Xr, y3, task="multiclass")
    assert list(mc) == ["confusion_matrix", "roc_curve"] and len(mc["roc_curve"].axes[0].get_lines()) >= 3


@pytest.mark.slow
def test_headless_process_gets_agg(tmp_path):
    code = ("import numpy as np, pandas as pd, matplotlib\n"
            "from sklearn.linear_model import LogisticRegression\nfrom mlkit.evaluate import make_plots\n"
            "X = pd.DataFrame({'a': np.arange(40.)}); y = (X.a > 20).astype(int)\n"
            "make_plots(LogisticRegression().fit(X, y), X, y, task='binary'); print(matplotlib.get_backend())")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"} | {"MPLCONFIGDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().lower() == "agg"


def test_explicit_backend_is_kept(binary, monkeypatch):
    import matplotlib
    model, X, y = binary
    monkeypatch.setitem(matplotlib.rcParams, "backend", "svg")
    ev.make_plots(model, X, y, task="binary")
    assert matplotlib.get_backend() == "svg"


# ---------------------------------------------------------------- explanations

def test_explain_ranks_raw_columns_and_draws_pdp(binary):
    model, X, y = binary
    table, figs = ev.explain_model(model, X, y, task="binary", top=3, repeats=3)
    assert list(table.columns) == ["feature", "importance_mean", "importance_std"]
    assert set(table.feature) == set(X.columns)                                 # raw columns, not one-hot outputs
    assert table.feature.iloc[0] == "debt_ratio"
    assert table.importance_mean.is_monotonic_decreasing
    assert table.set_index("feature").loc["application_date", "importance_mean"] == 0.0   # dropped by the pipeline
    pdps = [k for k in figs if k.startswith("pdp_")]
    assert list(figs)[0] == "permutation_importance" and len(pdps) <= 3 and "pdp_debt_ratio" in pdps
    assert "pdp_application_date" not in figs
    line = figs["pdp_debt_ratio"].axes[0].get_lines()[0].get_ydata()
    assert line[-1] > line[0] and np.isfinite(line).all()                       # P(good) rises with debt_ratio, despite NaNs elsewhere


def test_explain_categorical_with_nans_and_sampling(binary):
    model, X, y = binary
    table, figs = ev.explain_model(model, X, y, task="binary", top=5, repeats=2, max_rows=200, seed=1)
    cat = figs.get("pdp_employment")
    if cat is None:                                                            # only when employment ranked at/below zero in this sample
        assert table.set_index("feature").loc["employment", "importance_mean"] <= 0
    else:
        assert [t.get_text() for t in cat.axes[0].get_xticklabels()][:1] == ["salaried"]   # most frequent level first, NaN excluded
    a = ev.explain_model(model, X, y, task="binary", repeats=2, max_rows=200, seed=1, plots=False)
    b = ev.explain_model(model, X, y, task="binary", repeats=2, max_rows=200, seed=1, plots=False)
    pd.testing.assert_frame_equal(a[0], b[0]) ; assert a[1] == {}


def test_explain_regression_sign_and_multiclass():
    X, _ = frame(n=600)
    y = X.debt_ratio * 10 + 1
    table, figs = ev.explain_model(pipeline(LinearRegression()).fit(X, y), X, y, task="regression", top=1, repeats=2)
    assert table.feature.iloc[0] == "debt_ratio" and table.importance_mean.iloc[0] > 1  # rmse rises a lot when shuffled → positive
    assert list(figs) == ["permutation_importance", "pdp_debt_ratio"]
    y3 = pd.cut(X.debt_ratio, 3, labels=["a", "b", "c"]).astype(str)
    _, mf = ev.explain_model(pipeline().fit(X, y3), X, y3, task="multiclass", top=1, repeats=2)
    curves = [l.get_label() for l in mf["pdp_debt_ratio"].axes[0].get_lines() if l.get_label().startswith("P(")]
    assert curves == ["P(a)", "P(b)", "P(c)"]                                    # one curve per class


def test_explain_errors(binary):
    model, X, y = binary
    with pytest.raises(ConfigError, match=r"repeats and max_rows must be >= 1; got repeats=0"):
        ev.explain_model(model, X, y, task="binary", repeats=0)
    with pytest.raises(ConfigError, match=r"metric 'f1_macro' is not reported for binary tasks"):
        ev.explain_model(model, X, y, task="binary", metric="f1_macro")


# ---------------------------------------------------------------- partial dependence and the real mlkit pipeline

@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_stacked_partial_dependence_equals_sklearn(task):
    from sklearn.inspection import partial_dependence
    X, y = frame(n=400)
    if task == "multiclass": y = pd.cut(X.debt_ratio, 3, labels=["a", "b", "c"]).astype(str)
    if task == "regression": y = X.debt_ratio * 3 + X.age / 10
    model = pipeline(HistGradientBoostingRegressor(max_iter=20) if task == "regression" else None).fit(X, y)
    grid = np.array([.1, .4, .8])
    ours = ev.partial_dependence_on(model, X, "debt_ratio", grid, task=task)
    np.testing.assert_allclose(ours, partial_dependence(model, X, ["debt_ratio"], custom_values={"debt_ratio": grid})["average"], rtol=1e-10)
    cats = np.array(["salaried", "unemployed"], dtype=object)                   # a str column holding NaNs
    theirs = partial_dependence(model, X, ["employment"], categorical_features=["employment"], custom_values={"employment": cats})["average"]
    np.testing.assert_allclose(ev.partial_dependence_on(model, X, "employment", cats, task=task), theirs, rtol=1e-10)


def test_real_mlkit_pipeline_on_credit_data(tmp_path):
    "make_credit_data + make_model: integer columns, several str categoricals with NaNs, id/date columns the model drops."
    from sklearn.inspection import partial_dependence
    from mlkit.checks import infer_schema
    from mlkit.data import make_credit_data, split_data
    from mlkit.models import make_model
    df = make_credit_data(1500, seed=3)
    schema = infer_schema(df, target="default", id_column="id", time_column="application_date")
    train, test = split_data(df, target="default", task="binary", seed=0)
    X, y, Xt, yt = train.drop(columns="default"), train["default"], test.drop(columns="default"), test["default"]
    model = make_model(schema, task="binary", model={"hyperparams": {"max_iter": 30}}, seed=0)
    cv = ev.cross_validate_model(model, X, y, task="binary", folds=3)
    assert 0.6 < cv["cv_roc_auc_mean"] < 1 and 0 < cv["cv_roc_auc_std"] < 0.1
    model.fit(X, y)
    m = ev.compute_metrics(model, Xt, yt, task="binary")
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(yt, model.predict_proba(Xt)[:, 1]))
    assert str(X.credit_history_months.dtype) == "int64"
    grid = np.array([12., 60., 240.])                                           # sklearn refuses int columns: compare on a float copy
    np.testing.assert_allclose(ev.partial_dependence_on(model, Xt, "credit_history_months", grid, task="binary"),
                               partial_dependence(model, Xt.astype({"credit_history_months": float}), ["credit_history_months"],
                                                  custom_values={"credit_history_months": grid})["average"], rtol=1e-10)
    table, figs = ev.explain_model(model, Xt, yt, task="binary", top=20, repeats=2)
    used = table.feature[table.importance_mean > 0]
    assert list(figs) == ["permutation_importance"] + [f"pdp_{c}" for c in used]
    assert (table.set_index("feature").importance_mean[["id", "application_date"]] == 0).all()
    figs |= ev.make_plots(model, Xt, yt, task="binary")
    assert len(ev.save_figures(figs, tmp_path)) == len(figs) == len(list(tmp_path.glob("*.png")))


def test_numpy_inputs_work_without_plots_of_named_columns():
    X, _ = frame(n=300)
    A = X[["age", "debt_ratio", "noise"]].to_numpy()
    y = (X.debt_ratio > .5).astype(int).to_numpy()
    model = LogisticRegression().fit(A, y)
    assert ev.compute_metrics(model, A, y, task="binary")["roc_auc"] > 0.9
    assert set(ev.cross_validate_model(LogisticRegression(), A, y, task="binary", folds=3, metrics=["accuracy"])) == {"cv_accuracy_mean", "cv_accuracy_std"}
    table, figs = ev.explain_model(model, A, y, task="binary", repeats=2)
    assert table.feature.iloc[0] == "x1" and figs == {}
