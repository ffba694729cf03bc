"""Data, features and models at the library level: loading, the bundled generator, checks of bad input, schemas and validation,
quality reports, splits, and the preprocessing/model factory on pandas 3 dtypes. Everything is generated with fixed seeds."""
import gzip, json, os, re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlkit.core import ConfigError, DataError, ModelError
from mlkit.config import DataParams, TrainParams
from mlkit.data import (CREDIT_COLUMNS, SHIFTS, fingerprint_frame, infer_task, load_data, make_credit_data, named_columns,
                        precheck_data, split_data)
from mlkit.checks import check_training_data, find_id_columns, infer_schema, quality_report, warn_leaks
from mlkit.validate import validate_frame
from mlkit.features import feature_columns, make_preprocessor
from mlkit.models import make_estimator, make_model


@pytest.fixture(scope="module")
def credit():
    return make_credit_data(3000, seed=11)


@pytest.fixture(scope="module")
def schema(credit):
    return infer_schema(credit, target="default", time_column="application_date")


# ---------------------------------------------------------------- the bundled generator
@pytest.mark.parametrize("shift", SHIFTS)
def test_credit_is_deterministic(shift):
    a = make_credit_data(1500, seed=3, shift=shift)
    b = make_credit_data(1500, seed=3, shift=shift)
    c = make_credit_data(1500, seed=4, shift=shift)
    assert fingerprint_frame(a) == fingerprint_frame(b)
    pd.testing.assert_frame_equal(a, b)
    assert fingerprint_frame(a) != fingerprint_frame(c)


def test_credit_is_realistic(credit):
    assert list(credit.columns) == ["id", "application_date", "age", "age_group", "sex", "income", "employment", "housing",
                                    "debt_ratio", "credit_history_months", "n_open_accounts", "loan_amount", "purpose", "region", "default"]
    assert 0.09 < credit["default"].mean() < 0.15
    assert 0.06 < credit["income"].isna().mean() < 0.10
    assert 0.015 < credit["employment"].isna().mean() < 0.045
    assert credit["id"].is_unique and credit["application_date"].is_monotonic_increasing
    assert set(credit["sex"]) == {"F", "M"} and credit["age_group"].nunique() == 5
    assert credit["purpose"].nunique() == 6 and credit["region"].nunique() == 8


def test_shifts_move_what_they_should():
    base = make_credit_data(4000, seed=21)
    cov = make_credit_data(4000, seed=21, shift="covariate")
    prior = make_credit_data(4000, seed=21, shift="prior", shift_strength=1.0)
    concept = make_credit_data(4000, seed=21, shift="concept")
    weak = make_credit_data(4000, seed=21, shift="covariate", shift_strength=0.2)
    assert cov["income"].median() < 0.85 * base["income"].median() and cov["age"].mean() < base["age"].mean() - 3
    assert abs(weak["income"].median() - base["income"].median()) < abs(cov["income"].median() - base["income"].median())
    assert prior["default"].mean() > 1.6 * base["default"].mean()
    pd.testing.assert_frame_equal(concept.drop(columns="default"), base.drop(columns="default"))
    assert (concept["default"] != base["default"]).mean() > 0.05
    assert fingerprint_frame(make_credit_data(500, seed=21, shift="covariate", shift_strength=0)) == fingerprint_frame(make_credit_data(500, seed=21))


@pytest.mark.parametrize("kwargs, match", [
    (dict(shift="drift"), r"unknown shift 'drift'.*'covariate', 'prior', 'concept'"),
    (dict(shift="concpet"), r"did you mean 'concept'"),
    (dict(n_rows=0), r"n_rows must be at least 1, got 0"),
    (dict(shift_strength=-1), r"shift_strength must be >= 0"),
])
def test_credit_bad_arguments(kwargs, match):
    with pytest.raises(DataError, match=match): make_credit_data(**{"n_rows": 10, **kwargs})


# ---------------------------------------------------------------- loading
@pytest.mark.parametrize("name, writer", [
    ("d.csv", lambda df, p: df.to_csv(p, index=False)),
    ("d.csv.gz", lambda df, p: df.to_csv(p, index=False, compression="gzip")),
    ("d.tsv", lambda df, p: df.to_csv(p, index=False, sep="\t")),
    ("d.parquet", lambda df, p: df.to_parquet(p)),
])
def test_load_files_round_trip(tmp_path, credit, name, writer):
    writer(credit.head(300), tmp_path / name)
    back = load_data(str(tmp_path / name))
    assert back.shape == (300, 15)
    assert back["application_date"].dtype.kind == "M"           # ISO dates come back as datetimes
    pd.testing.assert_series_equal(back["income"], credit["income"].head(300), check_dtype=False)
    assert len(load_data(tmp_path / name, n_rows=40)) == 40


def test_load_bundled_and_sklearn():
    assert load_data("mlkit:credit", n_rows=200, seed=5).equals(make_credit_data(200, seed=5))
    for name, shape in [("iris", (150, 5)), ("wine", (178, 14)), ("breast_cancer", (569, 31)), ("diabetes", (442, 11)), ("digits", (1797, 65))]:
        assert load_data(f"sklearn:{name}").shape == shape
    sample = load_data("sklearn:iris", n_rows=30, seed=1)
    assert len(sample) == 30 and sample["target"].nunique() == 3    # sampled, not the first (single-class) rows


def test_load_missing_file_names_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=re.escape(f"data file not found: {tmp_path / 'trian.csv'}") + r".*did you mean 'train.csv'"):
        load_data("trian.csv")
    with pytest.raises(DataError, match="data file not found: " + re.escape(str(tmp_path / "sub" / "x.parquet"))):
        load_data("sub/x.parquet")


@pytest.mark.parametrize("name, content, match", [
    ("data.xlsx", b"PK", r"unsupported file type '.xlsx'.*\.csv"),
    ("data.json", b"{}", r"unsupported file type '.json'"),
    ("empty.csv", b"", r"data file is empty \(0 bytes\)"),
    ("header.csv", b"a,b,c\n", r"has a header but no rows"),
    ("blank.csv", b"\n\n", r"no columns or rows"),
    ("bad.parquet", b"this is not parquet", r"cannot read .*bad.parquet"),
    ("bad.csv.gz", b"not gzip at all", r"cannot read .*bad.csv.gz"),
])
def test_load_bad_files(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=match): load_data(tmp_path / name)


@pytest.mark.parametrize("source, match", [
    ("sklearn:irsi", r"unknown dataset 'sklearn:irsi' — did you mean 'iris'\?"),
    ("sklearn:california_housing", r"must be downloaded .*fetch_california_housing.*save it as \.csv/\.parquet"),
    ("sklearn:fetch_covtype", r"must be downloaded"),
    ("mlkit:credits", r"did you mean 'mlkit:credit'"),
])
def test_load_unknown_datasets(source, match):
    with pytest.raises(DataError, match=match): load_data(source)


def test_load_folder(tmp_path):
    with pytest.raises(DataError, match="is a folder, not a file"): load_data(tmp_path)


# ---------------------------------------------------------------- can we train on this?
def test_good_data_passes(credit):
    check_training_data(credit, "default", "binary")
    check_training_data(credit, "default", "auto")
    check_training_data(load_data("sklearn:iris"), "target", "multiclass")
    check_training_data(load_data("sklearn:diabetes"), "target", "regression")


def test_text_in_numeric_column_from_a_csv(tmp_path, credit):
    df = credit.head(200).copy()
    df.to_csv(tmp_path / "d.csv", index=False)
    lines = (tmp_path / "d.csv").read_text().splitlines()
    header = lines[0].split(",")
    i = header.index("debt_ratio")
    for r in (3, 9):
        cells = lines[r].split(","); cells[i] = "abc" if r == 3 else "n/a?"; lines[r] = ",".join(cells)
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    bad = load_data(tmp_path / "d.csv")
    with pytest.raises(DataError, match=r"column 'debt_ratio' looks numeric \(99% of its values are numbers\) but also holds text: \['abc', 'n/a\?'\].*drop_columns"):
        check_training_data(bad, "default", "binary")


@pytest.mark.parametrize("make, target, task, match", [
    (lambda c: c.head(0), "default", "binary", r"the data is empty \(0 rows, 15 columns\)"),
    (lambda c: pd.DataFrame(index=range(5)), "default", "binary", r"the data is empty"),
    (lambda c: c, "defualt", "binary", r"target column 'defualt' not in the data — did you mean 'default'\?; available: \['id', 'application_date'"),
    (lambda c: c, "label", "binary", r"target column 'label' not in the data; available:"),
    (lambda c: c.assign(default=1), "default", "binary", r"target 'default' has a single class \(1\)"),
    (lambda c: c.assign(default=1), "default", "auto", r"single class"),
    (lambda c: c.assign(notes=np.nan, memo=None), "default", "binary", r"column\(s\) \['notes', 'memo'\] have no values \(all missing\); add them to data.drop_columns"),
    (lambda c: c, "region", "regression", r"task 'regression' needs a numeric target, but 'region' holds str values"),
    (lambda c: c, "region", "binary", r"task 'binary' needs 2 classes, but target 'region' has 8.*use task 'multiclass'"),
    (lambda c: c, "income", "binary", r"target 'income' is missing in \d+ of 3000 rows"),
    (lambda c: c.assign(default=np.nan), "default", "binary", r"target 'default' has no values"),
    (lambda c: c, "default", "classification", r"unknown task 'classification'"),
    (lambda c: c.assign(default=c["default"].where(c.index > 0, 7)), "default", "multiclass", r"class 7 of target 'default' has only 1 row"),
])
def test_bad_training_data(credit, make, target, task, match):
    with pytest.raises(DataError, match=match): check_training_data(make(credit), target, task)


def test_infer_task():
    assert infer_task(pd.Series([0, 1, 1])) == "binary"
    assert infer_task(pd.Series([True, False])) == "binary"
    assert infer_task(pd.Series(["a", "b", "c"])) == "multiclass"
    assert infer_task(pd.Series([1, 2, 3, 4])) == "multiclass"
    assert infer_task(pd.Series(np.arange(100))) == "regression"
    assert infer_task(pd.Series([0.1, 0.2, 0.3])) == "regression"


# ---------------------------------------------------------------- schemas and validation
def test_schema_is_plain_json(schema, credit):
    assert json.loads(json.dumps(schema)) == schema
    cols = schema["columns"]
    assert {c: cols[c]["kind"] for c in ("age", "sex", "application_date")} == {"age": "numeric", "sex": "categorical", "application_date": "datetime"}
    assert cols["income"]["nullable"] and not cols["age"]["nullable"]
    assert cols["age"]["min"] == credit["age"].min() and type(cols["n_open_accounts"]["max"]) is int
    assert schema["classes"] == [0, 1] and type(schema["classes"][0]) is int
    assert schema["id_column"] == "id" and schema["time_column"] == "application_date"
    flags = pd.DataFrame({"flag": [True, False, True], "y": ["a", "b", "a"], "n": np.array([1, 2, 3], dtype="int32")})
    s = infer_schema(flags, target="y")
    assert json.loads(json.dumps(s)) == s and s["columns"]["flag"]["kind"] == "boolean" and s["classes"] == ["a", "b"]


def test_schema_bad_column_names(credit):
    with pytest.raises(DataError, match=r"target 'defalt' not in the data — did you mean 'default'"): infer_schema(credit, target="defalt")
    with pytest.raises(DataError, match=r"time_column 'date' not in the data"): infer_schema(credit, time_column="date")


def test_validation_errors_and_warnings(schema, credit):
    batch = make_credit_data(400, seed=99, shift="covariate", shift_strength=3).drop(columns=["default", "purpose"])
    batch = batch.astype({"loan_amount": object, "region": object}).assign(extra_column=1)
    batch.loc[[2, 5, 7], "loan_amount"] = "lots"
    batch.loc[0, "region"] = "atlantis"
    report = validate_frame(batch, schema)
    assert not report.ok
    assert {(e["column"], e["check"]) for e in report.errors} == {("purpose", "column_in_dataframe"), ("loan_amount", "kind_numeric")}
    lam = next(e for e in report.errors if e["column"] == "loan_amount")
    assert lam["count"] == 3 and lam["examples"] == ["lots"] and "expected numbers" in lam["detail"]
    warned = {(w["column"], w["check"]) for w in report.warnings}
    assert ("region", "categories") in warned and ("debt_ratio", "range") in warned     # informative, not errors
    assert all(w["column"] != "extra_column" for w in report.errors + report.warnings)  # extra columns are allowed
    frame = report.to_frame()
    assert list(frame.columns[:4]) == ["severity", "column", "check", "detail"] and len(frame) == len(report.errors) + len(report.warnings)
    with pytest.raises(DataError, match=r"data does not match the schema \(2 problem\(s\)\): column 'purpose': column is missing; column 'loan_amount': expected numbers, found \['lots'\] \(3 rows\)"):
        report.raise_if_failed()


def test_validation_of_json_like_rows(schema, credit):
    rows = json.loads(credit.drop(columns=["default", "id", "application_date"]).head(20).to_json(orient="records"))
    rows[0]["employment"] = None           # a nullable column: fine
    rows[1]["sex"] = "X"                   # unseen category: a warning
    report = validate_frame(pd.DataFrame.from_records(rows), schema)
    assert report.ok, report.errors
    assert [w["column"] for w in report.warnings] == ["sex"]
    rows[2]["age"] = None                  # age never missing in training: an error
    bad = validate_frame(pd.DataFrame.from_records(rows), schema)
    assert [(e["column"], e["check"], e["count"]) for e in bad.errors] == [("age", "not_nullable", 1)]
    assert validate_frame(credit, schema, require_target=True).raise_if_failed().ok


# ---------------------------------------------------------------- quality, fingerprints, splits
def test_quality_report(credit):
    df = pd.concat([credit.head(50), credit.head(50).iloc[:4].assign(id=[9001, 9002, 9003, 9004])]).assign(const="x")
    df.loc[df.index[0], "loan_amount"] = 1e9
    rep = quality_report(df, target="default", id_column="id")
    assert json.loads(json.dumps(rep)) == rep
    assert rep["duplicate_rows"] == 4 and rep["constant_columns"] == ["const"]
    assert rep["missing"]["income"] == round(df["income"].isna().mean(), 6)
    assert rep["target"]["counts"] == {str(k): int(v) for k, v in df["default"].value_counts().items()}
    assert rep["outliers"]["loan_amount"]["count"] >= 1 and "default" not in rep["outliers"] and "id" not in rep["outliers"]
    reg = quality_report(load_data("sklearn:diabetes"), target="target")["target"]
    assert reg["task"] == "regression" and reg["min"] == 25.0


def test_fingerprint_properties(credit):
    fp = fingerprint_frame(credit)
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert fingerprint_frame(credit.set_index("id")) != fp
    assert fingerprint_frame(credit.rename(columns={"age": "Age"})) != fp
    assert fingerprint_frame(credit.astype({"n_open_accounts": "float64"})) != fp
    assert fingerprint_frame(credit.sample(frac=1, random_state=0)) != fp


def test_splits(credit):
    tr, te = split_data(credit, target="default", task="binary", seed=5, test_size=0.25)
    assert (len(tr), len(te)) == (2250, 750) and not set(tr.index) & set(te.index)
    assert abs(tr["default"].mean() - te["default"].mean()) < 0.005
    assert split_data(credit, target="default", task="binary", seed=5, test_size=0.25)[1].index.equals(te.index)
    tr, te = split_data(credit.sample(frac=1, random_state=1), target="default", task="binary", time_column="application_date")
    assert tr["application_date"].max() <= te["application_date"].min() and len(te) == 600
    with pytest.raises(DataError, match=r"time_column 'date' not in the data"): split_data(credit, target="default", task="binary", time_column="date")
    with pytest.raises(DataError, match=r"test_size must be between 0 and 1 \(a fraction\), got 1.5"): split_data(credit, target="default", task="binary", test_size=1.5)
    tiny = pd.DataFrame({"x": range(6), "y": [0, 1, 2, 0, 1, 2]})
    with pytest.raises(DataError, match=r"cannot split 6 rows with test_size=0.2"): split_data(tiny, target="y", task="multiclass")


# ---------------------------------------------------------------- features and models on pandas 3 dtypes
@pytest.mark.parametrize("dtype", ["str", "object", "string[pyarrow]", "category"])
def test_preprocessor_handles_categorical_dtypes(credit, schema, dtype):
    cats = ["sex", "employment", "housing", "purpose", "region", "age_group"]
    df = credit.astype({c: dtype for c in cats})
    pre = make_preprocessor(schema).fit(df)
    out = pre.transform(df.head(50))
    assert out.shape[0] == 50 and not np.isnan(out).any()
    np.testing.assert_array_equal(out, make_preprocessor(schema).fit(credit).transform(credit.head(50)))


def test_feature_overrides(schema):
    with pytest.raises(ConfigError, match=r"features.numeric names column\(s\) not in the data: \['incme'\] — did you mean 'income'"):
        feature_columns(schema, {"numeric": ["incme"]})
    with pytest.raises(ConfigError, match=r"features.categorical cannot use 'id' is the id column"):
        feature_columns(schema, {"categorical": ["id"]})
    num, cat = feature_columns(schema, {"categorical": ["n_open_accounts"]})
    assert "n_open_accounts" in cat and "n_open_accounts" not in num


@pytest.mark.parametrize("call, match", [
    (lambda: make_estimator("xgboost", task="binary"), r"unknown estimator 'xgboost'; available: \['logistic_regression'"),
    (lambda: make_estimator("hist_gradient_bosting", task="binary"), r"did you mean 'hist_gradient_boosting'"),
    (lambda: make_estimator("logistic_regression", task="regression"), r"estimator 'logistic_regression' does not do regression; for regression use one of \['linear_regression', 'ridge'"),
    (lambda: make_estimator("linear_regression", task="binary"), r"does not do classification"),
    (lambda: make_estimator("random_forest", task="binary", hyperparams={"n_estimator": 10}), r"unknown hyperparameter 'n_estimator' for random_forest \(RandomForestClassifier\) — did you mean 'n_estimators'"),
    (lambda: make_estimator("random_forest", task="binary", hyperparams={"n_estimators": "ten"}), r"invalid hyperparameter for random_forest: The 'n_estimators' parameter"),
    (lambda: make_estimator("ridge", task="survival"), r"unknown task 'survival'"),
])
def test_bad_models(call, match):
    with pytest.raises(ModelError, match=match): call()


def test_a_csv_nobody_prepared(tmp_path):
    "A foreign table: its own id, a date, integer codes, text categories with gaps, a yes/no target."
    rng = np.random.default_rng(0)
    n = 600
    x = rng.normal(size=n)
    df = pd.DataFrame({"customer_id": [f"C{i:05d}" for i in range(n)],
                       "signup": pd.date_range("2023-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
                       "score": x.round(3), "plan": rng.choice(["basic", "pro", None], n),
                       "visits": rng.poisson(3, n), "churned": np.where(x + rng.normal(size=n) > 1, "yes", "no")})
    df.to_csv(tmp_path / "churn.csv", index=False)
    data = load_data(tmp_path / "churn.csv")
    check_training_data(data, "churned", "auto")
    schema = infer_schema(data, target="churned")
    assert schema["id_column"] == "customer_id" and schema["task"] == "binary" and schema["classes"] == ["no", "yes"]
    assert feature_columns(schema) == (["score", "visits"], ["plan"])
    tr, te = split_data(data, target="churned", task="binary", seed=0)
    model = make_model(schema, model={"estimator": "logistic_regression"}, seed=0).fit(tr, tr["churned"])
    assert model.score(te, te["churned"]) > 0.7
    assert set(model.predict(te.head(5))) <= {"no", "yes"}


def test_model_round_trips_through_skops(schema, credit):
    import skops.io as sio
    model = make_model(schema, model={"estimator": "hist_gradient_boosting", "hyperparams": {"max_iter": 20}}, seed=0).fit(credit, credit["default"])
    blob = sio.dumps(model)
    untrusted = sio.get_untrusted_types(data=blob)
    assert all(t.startswith(("sklearn.", "numpy.", "mlkit.")) for t in untrusted), untrusted
    back = sio.loads(blob, trusted=untrusted)
    np.testing.assert_array_equal(back.predict_proba(credit.head(100)), model.predict_proba(credit.head(100)))


# ---------------------------------------------------------------- a new user's own table (issues 11.2, 11.3, 15.9–15.11)
def _passengers(n=600, seed=0):
    "Shaped like the Titanic table: an integer id, a name unique per row, shared ticket codes, a cabin mostly missing, a target."
    rng = np.random.default_rng(seed)
    sex = rng.choice(["male", "female"], n)
    fare = rng.gamma(2, 15, n).round(4)
    return pd.DataFrame({"PassengerId": np.arange(1, n + 1), "Pclass": rng.integers(1, 4, n),
                         "Name": [f"{rng.choice(['Smith', 'Brown', 'Kelly'])}, {'Mr.' if s == 'male' else 'Mrs.'} Person {i}"
                                  for i, s in enumerate(sex)],
                         "Sex": sex, "Age": np.where(rng.random(n) < 0.2, np.nan, rng.normal(30, 12, n).round()),
                         "Ticket": [f"PC {t}" for t in rng.integers(1000, 1400, n)], "Fare": fare,
                         "Cabin": np.where(rng.random(n) < 0.75, None, [f"C{k}" for k in rng.integers(1, 150, n)]),
                         "Survived": (rng.random(n) < np.where(sex == "female", 0.7, 0.2)).astype(int)})


def test_a_name_unique_per_row_is_left_out_with_a_note(capsys):
    "11.2: with minimal params a passenger's name became a feature with one category per row, required by serving."
    from mlkit.features import feature_columns
    from mlkit.rescore import required_inputs
    df = _passengers()
    schema = infer_schema(df, target="Survived")
    assert schema["id_column"] == "PassengerId"
    assert list(schema["excluded"]) == ["Name"] and "Name" not in schema["columns"]
    assert schema["excluded"]["Name"] == "text unique in 600 of 600 rows"
    out = capsys.readouterr().out
    assert "note: leaving column 'Name' out of the features: it looks like an identifier" in out
    assert "data.keep_columns" in out and "data.id_column: Name" in out
    assert "Name" not in required_inputs(schema) and "PassengerId" not in required_inputs(schema)
    num, cat = feature_columns(schema)
    assert "Name" not in cat and {"Fare", "Age", "Pclass"} <= set(num) and {"Sex", "Ticket", "Cabin"} <= set(cat)
    model = make_model(schema, model={"estimator": "logistic_regression"}, seed=0).fit(df, df["Survived"])
    assert len(model.predict(df.drop(columns=["Name", "PassengerId"]).head(5))) == 5   # serving needs no name
    kept = infer_schema(df, target="Survived", keep=["Name"], quiet=True)
    assert "Name" in kept["columns"] and kept["excluded"] == {}
    assert capsys.readouterr().out == ""                                                     # quiet, and nothing to say


@pytest.mark.parametrize("column, values, reason", [
    ("token", lambda n, r: [f"{r.integers(1 << 62):016x}{r.integers(1 << 62):016x}" for _ in range(n)], "hex digests"),
    ("session", lambda n, r: [f"{r.integers(1 << 31):08x}-4a1b-4c2d-8e3f-{r.integers(1 << 47):012x}" for _ in range(n)], "UUIDs"),
    ("contact", lambda n, r: [f"user{i}@example.org" for i in range(n)], "e-mail addresses"),
    ("homepage", lambda n, r: [f"https://example.org/u/{i}" for i in range(n)], "URLs"),
    ("Unnamed: 0", lambda n, r: np.arange(n), "unique integers named like an id"),
    ("row", lambda n, r: np.arange(1, n + 1), "the row number (1…300 in order)"),
    ("comment", lambda n, r: [f"the customer called {i} times about the late delivery of order {r.integers(99999)}" for i in range(n)],
     "text unique in 300 of 300 rows"),
    ("notes", lambda n, r: [f"called about a late delivery number {i // 2}" for i in range(n)],
     "free text, about 7 words a value, 150 distinct in 300 rows"),
])
def test_identifier_formats_are_recognised(column, values, reason):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=300), column: values(300, rng), "y": rng.integers(0, 2, 300)})
    found = find_id_columns(df, exclude=("y",))
    assert list(found) == [column] and found[column].startswith(reason), found


@pytest.mark.parametrize("column, values", [
    ("income", lambda n, r: r.lognormal(10, 0.5, n)),                       # unique floats are measurements
    ("city", lambda n, r: r.choice(["Oslo", "Lima", "Pune", "Nice"], n)),   # text that repeats is a category
    ("store_id", lambda n, r: r.integers(1, 40, n)),                        # a non-unique id-named integer is a category
    ("year", lambda n, r: np.arange(n) + 1900),                             # consecutive, not a row number
    ("ticket", lambda n, r: [f"PC {t}" for t in r.integers(1000, 1200, n)]), # shared codes
    ("flag", lambda n, r: r.random(n) < 0.5),
    ("when", lambda n, r: pd.date_range("2024-01-01", periods=n, freq="h")),
])
def test_real_features_are_not_identifiers(column, values):
    rng = np.random.default_rng(1)
    df = pd.DataFrame({column: values(300, rng), "y": rng.integers(0, 2, 300)})
    assert find_id_columns(df, exclude=("y",)) == {}


def test_a_small_tables_text_is_a_category():
    df = pd.DataFrame({"colour": ["red", "green", "blue", "teal", "pink", "gold", "grey", "plum", "navy", "rose",
                                  "mint", "sand", "ruby", "jade", "onyx"], "y": [0, 1] * 7 + [0]})
    assert infer_schema(df, target="y", quiet=True)["excluded"] == {}


def test_data_params_keep_columns_and_roles():
    assert TrainParams(data={"keep_columns": ["Name"]}).data.keep_columns == ["Name"]
    with pytest.raises(ValueError, match=r"data.id_column uses \['id'\], which data.drop_columns removes"):
        DataParams(id_column="id", drop_columns=["id"])
    with pytest.raises(ValueError, match=r"data.keep_columns uses \['Name'\]"):
        DataParams(keep_columns=["Name"], drop_columns=["Name"])


def _houses(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"area": rng.gamma(4, 30, n), "rooms": rng.integers(1, 7, n), "city": rng.choice(list("abcdef"), n)})
    df["price"] = 1000 * df.area * (1 + 0.2 * (df.city == "a")) + rng.normal(0, 20_000, n)
    return df


def test_a_feature_derived_from_the_target_is_warned_about(capsys):
    "11.3: log(target) as a feature gave R² 0.998 with no word."
    df = _houses().assign(log_price=lambda d: np.log(d.price.clip(1000)))
    train, _ = split_data(df, target="price", task="regression", seed=0)
    found = warn_leaks(train, target="price", task="regression")
    assert [f["column"] for f in found] == ["log_price"] and found[0]["metric"] == "r2" and found[0]["score"] > 0.98
    out = capsys.readouterr().out
    assert "warning: column 'log_price' alone predicts the target 'price' almost perfectly (r2 " in out
    assert "add it to data.drop_columns" in out
    cls = _passengers().assign(rescued=lambda d: d.Survived.map({0: "no", 1: "yes"}))   # the outcome, recorded as text
    assert [f["column"] for f in warn_leaks(cls, target="Survived", task="binary", quiet=True)] == ["rescued"]
    iris = load_data("sklearn:iris").assign(label=lambda d: d.target.map({0: "a", 1: "b", 2: "c"}))
    assert [f["column"] for f in warn_leaks(iris, target="target", task="multiclass", quiet=True)] == ["label"]


@pytest.mark.parametrize("source, task", [("sklearn:breast_cancer", "binary"), ("sklearn:iris", "multiclass"),
                                          ("sklearn:diabetes", "regression"), ("sklearn:wine", "multiclass")])
def test_strong_honest_features_are_not_leaks(source, task):
    assert warn_leaks(load_data(source), target="target", task=task, quiet=True) == []


def test_honest_demo_and_house_data_have_no_leak(credit):
    assert warn_leaks(credit, target="default", task="binary", quiet=True) == []
    assert warn_leaks(_houses(), target="price", task="regression", quiet=True) == []


def test_columns_the_params_name_must_exist(credit):
    "15.9: a data.sensitive column that does not exist trained and registered, failing only at the gate."
    p = TrainParams(data={"sensitive": ["gender"], "id_column": "id"})
    with pytest.raises(DataError, match=r"data.sensitive 'gender' is not a column of the data; available: \['id', 'application_date'"):
        check_training_data(credit, "default", named=named_columns(p))
    with pytest.raises(DataError, match=r"data.sensitive 'sx' is not a column of the data — did you mean 'sex'\?"):
        check_training_data(credit, "default", named=named_columns(TrainParams(data={"sensitive": ["sx"]})))
    for data, features, match in [
        ({"id_column": "idd"}, {}, r"data.id_column 'idd' is not a column of the data — did you mean 'id'\?"),
        ({"time_column": "date"}, {}, r"data.time_column 'date' is not a column"),
        ({"keep_columns": ["nmae"]}, {}, r"data.keep_columns 'nmae' is not a column"),
        ({}, {"numeric": ["age", "incme"]}, r"features.numeric names column\(s\) not in the data: \['incme'\] — did you mean 'income'"),
        ({}, {"categorical": ["regon"]}, r"features.categorical 'regon' is not a column of the data — did you mean 'region'"),
        ({"drop_columns": ["region"]}, {"categorical": ["region"]}, r"features.categorical uses \['region'\], which data.drop_columns removes"),
    ]:
        with pytest.raises(DataError, match=match):
            check_training_data(credit, "default", named=named_columns(TrainParams(data=data, features=features)))
    check_training_data(credit, "default", named=named_columns(TrainParams(data={"sensitive": ["sex"], "drop_columns": ["sex"]})))


def test_a_bad_drop_columns_entry_is_a_data_error(credit):
    "15.10: a bad drop_columns entry gave a raw pandas KeyError."
    named = named_columns(TrainParams(data={"drop_columns": ["application_dat"]}))
    with pytest.raises(DataError, match=r"data.drop_columns 'application_dat' is not a column of the data — did you mean 'application_date'"):
        check_training_data(credit, "default", named=named)
    with pytest.raises(DataError, match=r"data.drop_columns"):
        precheck_data("mlkit:credit", named=named)


def test_errors_name_the_parameter_that_was_used(tmp_path, monkeypatch):
    "15.10: a bad eval_data.source or a missing --labels file both said 'check data.source'."
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"data file not found: .*eval.csv; check eval_data.source"):
        load_data("eval.csv", param="eval_data.source")
    with pytest.raises(DataError, match=r"data file not found: .*labels.csv; check --labels"):
        load_data("labels.csv", param="--labels")
    with pytest.raises(DataError, match=r"^--labels is a folder, not a file"):
        load_data(tmp_path, param="--labels")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match=r"empty \(0 bytes\).*check eval_data.source"):
        load_data("e.csv", param="eval_data.source")
    with pytest.raises(DataError, match=r"check data.source"):
        load_data("eval.csv")


def test_precheck_finds_data_errors_from_the_header(tmp_path, credit):
    "15.11: a missing file, a missing target, a folder or a binary file were found in the kernel's 4th cell, after 14-23 s."
    credit.head(50).to_csv(tmp_path / "ok.csv", index=False)
    credit.head(50).to_csv(tmp_path / "ok.csv.gz", index=False, compression="gzip")
    credit.head(50).to_csv(tmp_path / "ok.tsv", index=False, sep="\t")
    credit.head(50).to_parquet(tmp_path / "ok.parquet")
    t = {"data.target": ["default"]}
    for name in ("ok.csv", "ok.csv.gz", "ok.tsv", "ok.parquet"):
        assert precheck_data(tmp_path / name, named=t) == list(CREDIT_COLUMNS), name
    (tmp_path / "head.csv").write_text("a,b,default\n")
    (tmp_path / "blob.csv").write_bytes(bytes(range(256)) * 40)
    (tmp_path / "latin.csv").write_bytes("name,default\nJos\xe9,1\n".encode("latin-1"))
    (tmp_path / "bad.parquet").write_text("PAR1 nope")
    (tmp_path / "data.xlsx").write_bytes(b"PK\x03\x04")
    (tmp_path / "folder").mkdir()
    for source, named, match in [
        (tmp_path / "missing.csv", t, r"data file not found: .*missing.csv.*; check data.source"),
        (tmp_path / "ok.cvs", t, r"did you mean 'ok.csv'"),
        (tmp_path / "folder", t, r"data.source is a folder, not a file"),
        (tmp_path / "blob.csv", t, r"looks like a binary file, not CSV text"),
        (tmp_path / "latin.csv", t, r"is not UTF-8 text"),
        (tmp_path / "head.csv", t, r"has a header but no rows"),
        (tmp_path / "bad.parquet", t, r"cannot read .*bad.parquet as Parquet"),
        (tmp_path / "data.xlsx", t, r"unsupported file type '.xlsx'"),
        (tmp_path / "ok.csv", {"data.target": ["defualt"]}, r"data.target 'defualt' is not a column of the data — did you mean 'default'"),
        (tmp_path / "ok.parquet", {**t, "data.sensitive": ["gender"]}, r"data.sensitive 'gender' is not a column"),
        (tmp_path / "ok.csv", {}, r"data.target is not set: name the column to predict; available: \['id'"),
        ("mlkit:credt", t, r"did you mean 'mlkit:credit'"),
        ("sklearn:california_housing", t, r"must be downloaded"),
        ("mlkit:credit", {"data.target": ["target"]}, r"data.target 'target' is not a column"),
        ("sklearn:iris", {"data.target": ["target"], "features.numeric": ["petal_length"]}, r"features.numeric 'petal_length' is not a column"),
    ]:
        with pytest.raises(DataError, match=match): precheck_data(source, named=named)


def test_precheck_reads_only_the_header(tmp_path):
    "Rows after the header are the kernel's business: a file pandas cannot parse still passes a precheck of its header."
    (tmp_path / "d.csv").write_text("a,b,y\n1,2,3\n" + '"unclosed,quote\n' * 3)
    assert precheck_data(tmp_path / "d.csv", named={"data.target": ["y"]}) == ["a", "b", "y"]
    with pytest.raises(DataError, match="cannot read"): load_data(tmp_path / "d.csv")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_precheck_unreadable_file(tmp_path):
    (tmp_path / "d.csv").write_text("a,y\n1,2\n"); (tmp_path / "d.csv").chmod(0)
    with pytest.raises(DataError, match="permission denied"): precheck_data(tmp_path / "d.csv", named={"data.target": ["y"]})


def test_precheck_of_train_params(tmp_path):
    "What the runner calls before a kernel starts: the params' own source and every column they name."
    p = TrainParams(data={"source": "mlkit:credit", "sensitive": ["sex", "age_group"], "drop_columns": ["application_date"]})
    assert precheck_data(p.data.source, named=named_columns(p)) == list(CREDIT_COLUMNS)
    bad = TrainParams(data={"source": str(tmp_path / "x.csv"), "target": "y"})
    with pytest.raises(DataError, match="data file not found"): precheck_data(bad.data.source, named=named_columns(bad))
