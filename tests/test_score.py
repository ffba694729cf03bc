"""`mlkit score`: files larger than a chunk, bad rows set aside, bounded memory, the same answers on a Dask LocalCluster."""
import json, os, subprocess, tracemalloc
from pathlib import Path
import numpy as np, pandas as pd
import pytest
from conftest import mlkit_cmd
from test_serve import NAME, fit_credit, train_and_log


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("score")
    uri = f"sqlite:///{d}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri); mp.chdir(d)
        from mlkit import data as md
        m, v, _ = train_and_log()
        X = md.make_credit_data(20_000, seed=7).drop(columns=["application_date", "default"])
        yield {"dir": d, "uri": uri, "model": m, "version": v, "X": X, "env": {**os.environ, "MLFLOW_TRACKING_URI": uri}}


@pytest.fixture(scope="module")
def served():
    "The credit model fitted in process, as a ServedModel, and a 20,000-row batch."
    from mlkit import data as md
    from mlkit.payload import ServedModel
    m, schema, _ = fit_credit()
    X = md.make_credit_data(20_000, seed=7).drop(columns=["application_date", "default"])
    return {"served": ServedModel(m, schema=schema, name=NAME, version="1"), "model": m, "X": X}


def score(store, *args):
    return subprocess.run(mlkit_cmd("score", "--model", f"models:/{NAME}@champion", *args), cwd=store["dir"], env=store["env"],
                          capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_cli_scores_a_parquet_file_larger_than_a_chunk(store, tmp_path):
    X = store["X"].copy()
    X.loc[[3, 4_321], "age"] = np.nan  # age had no missing values in training: under the strict policy these rows are set aside
    X.to_parquet(tmp_path / "in.parquet", row_group_size=2_000)
    r = score(store, "--input", tmp_path / "in.parquet", "--output", tmp_path / "out.parquet", "--chunksize", 2_000, "--input-policy", "strict")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["rows"], summary["scored"], summary["rejected"], summary["model_version"]) == (20_000, 19_998, 2, store["version"])
    assert "rows/s" in r.stderr or "rows" in r.stderr  # the progress bar goes to stderr
    out = pd.read_parquet(tmp_path / "out.parquet")
    good = X.drop(index=[3, 4_321])
    assert out["row"].tolist() == good.index.tolist() and out["id"].tolist() == good["id"].tolist()
    assert out["prediction"].tolist() == store["model"].predict(good.drop(columns="id")).tolist()
    np.testing.assert_allclose(out["proba_1"], store["model"].predict_proba(good.drop(columns="id"))[:, 1])
    assert set(out["model_version"]) == {store["version"]} and set(out["model_name"]) == {NAME}
    bad = pd.read_csv(tmp_path / "out.rejected.csv")
    assert bad["row"].tolist() == [3, 4_321]
    assert bad["error"].tolist() == ["column 'age': null is not allowed (the training data had no missing values here)"] * 2


def test_csv_with_text_in_a_numeric_column(served, tmp_path):
    from mlkit.score import score_file
    X = served["X"].head(3_000).astype({"debt_ratio": object})
    X.loc[2_500, "debt_ratio"] = "twelve"
    X.to_csv(tmp_path / "in.csv", index=False)
    s = score_file(served["served"], tmp_path / "in.csv", tmp_path / "out.csv", chunksize=1_000, progress=False)
    assert (s["scored"], s["rejected"]) == (2_999, 1)
    assert pd.read_csv(s["rejected_file"])["error"].tolist() == ["column 'debt_ratio': expected a finite number, got 'twelve'"]
    out = pd.read_csv(tmp_path / "out.csv")
    good = served["X"].head(3_000).drop(index=[2_500])
    assert out["prediction"].tolist() == served["model"].predict(good.drop(columns="id")).tolist()


@pytest.mark.slow
def test_peak_memory_is_bounded_by_the_chunk_size(served, tmp_path):
    from mlkit.score import score_file
    m = served["served"]
    served["X"].to_csv(tmp_path / "in.csv", index=False)  # pandas' chunked CSV reader allocates through numpy: tracemalloc sees it all
    peaks = {}
    for chunk in (1_000, 10_000):
        tracemalloc.start()
        score_file(m, tmp_path / "in.csv", tmp_path / f"out{chunk}.parquet", chunksize=chunk, progress=False)
        peaks[chunk] = tracemalloc.get_traced_memory()[1]; tracemalloc.stop()
    assert peaks[1_000] < peaks[10_000] / 3, peaks
    assert peaks[1_000] < served["X"].memory_usage(deep=True).sum(), peaks  # less than holding the whole input


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_answers(store, tmp_path):
    X = store["X"].head(6_000).astype({"income": object})
    X.loc[5_000, "income"] = "lots"
    X.to_csv(tmp_path / "in.csv", index=False)
    r = score(store, "--input", tmp_path / "in.csv", "--output", tmp_path / "out.parquet", "--engine", "dask", "--chunksize", 500)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["rows"], s["scored"], s["rejected"]) == (6_000, 5_999, 1)
    out = pd.read_parquet(tmp_path / "out.parquet").sort_values("row")
    good = store["X"].head(6_000).drop(index=[5_000])
    assert out["row"].tolist() == good.index.tolist()
    assert out["prediction"].tolist() == store["model"].predict(good.drop(columns="id")).tolist()
    bad = pd.read_csv(tmp_path / "out.rejected.csv")
    assert bad["row"].tolist() == [5_000] and "column 'income': expected a finite number, got 'lots'" in bad["error"][0]


@pytest.mark.slow
def test_missing_column_stops_before_scoring(store, tmp_path):
    store["X"].head(100).drop(columns="age").to_csv(tmp_path / "in.csv", index=False)
    r = score(store, "--input", tmp_path / "in.csv", "--output", tmp_path / "out.csv")
    assert r.returncode == 2
    assert "input has no column(s) ['age'] that the model needs" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out.csv").exists() or pd.read_csv(tmp_path / "out.csv").empty


# ---------------------------------------------------------------- QA regressions
@pytest.mark.slow
def test_output_that_is_the_input_is_refused_and_the_input_kept(store, tmp_path):
    store["X"].head(50).to_csv(tmp_path / "same.csv", index=False)
    before = (tmp_path / "same.csv").read_bytes()
    for out in ("same.csv", "./same.csv"):
        r = subprocess.run(mlkit_cmd("score", "--model", f"models:/{NAME}@champion", "--input", "same.csv", "--output", out),
                           cwd=tmp_path, env=store["env"], capture_output=True, text=True, timeout=180)
        assert r.returncode == 2, r.stderr
        assert "is the same file as --input" in r.stderr and "Traceback" not in r.stderr
        assert (tmp_path / "same.csv").read_bytes() == before


@pytest.mark.slow
def test_failed_run_keeps_the_previous_output(store, tmp_path):
    (tmp_path / "out.csv").write_text("previous results\n")
    for garbage, why in ((bytes(range(256)) * 64, "ParserError"), (b"age,sex\n\xff\xfe,1\n", "UnicodeDecodeError")):
        (tmp_path / "garbage.csv").write_bytes(garbage)
        r = score(store, "--input", tmp_path / "garbage.csv", "--output", tmp_path / "out.csv")
        assert r.returncode == 2, r.stderr
        assert "error: cannot read input" in r.stderr and why in r.stderr and "Traceback" not in r.stderr
        assert (tmp_path / "out.csv").read_text() == "previous results\n"
    assert [f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp")] == []


@pytest.mark.slow
def test_runs_uri_model_is_named_by_its_uri(store, tmp_path):
    import mlflow
    run_id = mlflow.MlflowClient().get_model_version(NAME, store["version"]).run_id
    store["X"].head(50).to_csv(tmp_path / "in.csv", index=False)
    r = subprocess.run(mlkit_cmd("score", "--model", f"runs:/{run_id}/model", "--input", tmp_path / "in.csv", "--output", tmp_path / "o.csv"),
                       cwd=store["dir"], env=store["env"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert f"scoring with runs:/{run_id}/model" in r.stderr and "None" not in r.stderr
    assert json.loads(r.stdout)["model_uri"] == f"runs:/{run_id}/model"


# ---------------------------------------------------------------- regressions (issues 11.9 and 15)
def test_input_policy_is_the_services(served, tmp_path):
    "Issue 11.9: by default extra columns are ignored, numbers as text converted, nulls left to the imputer; strict refuses them."
    from mlkit.core import DataError
    from mlkit.score import score_file
    X = served["X"].head(500).assign(colour="red").astype({"income": str})
    X.loc[[7, 9], "age"] = np.nan
    X.to_parquet(tmp_path / "in.parquet")
    s = score_file(served["served"], tmp_path / "in.parquet", tmp_path / "out.parquet", progress=False)
    assert (s["scored"], s["rejected"], s["ignored"], s["coerced"], s["imputed"]) == (500, 0, ["colour"], ["income"], ["age"])
    want = served["model"].predict(X.drop(columns=["id", "colour"]).astype({"income": float}))
    assert pd.read_parquet(tmp_path / "out.parquet")["prediction"].tolist() == want.tolist()
    with pytest.raises(DataError, match=r"input has column\(s\) \['colour'\] that the model does not use"):
        score_file(served["served"], tmp_path / "in.parquet", tmp_path / "strict.parquet", progress=False, policy="strict")
    X.drop(columns="colour").to_parquet(tmp_path / "in2.parquet")
    s = score_file(served["served"], tmp_path / "in2.parquet", tmp_path / "strict.parquet", progress=False, policy="strict")
    assert (s["scored"], s["rejected"]) == (498, 2)


def test_nothing_scored_is_an_error_that_keeps_the_previous_output(served, tmp_path):
    "Issue 15.3: every row rejected: an error naming why, the previous output and its rejected-rows file untouched."
    from mlkit.core import DataError
    from mlkit.score import score_file
    (tmp_path / "precious.parquet").write_bytes(b"previous results")
    (tmp_path / "precious.rejected.csv").write_text("previous rejects\n")
    served["X"].head(600).assign(age="old").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"all 600 rows were rejected \(600× column 'age': expected a finite number, got 'old'\)"):
        score_file(served["served"], tmp_path / "bad.csv", tmp_path / "precious.parquet", progress=False)
    assert (tmp_path / "precious.parquet").read_bytes() == b"previous results"
    assert (tmp_path / "precious.rejected.csv").read_text() == "previous rejects\n"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["bad.csv", "precious.parquet", "precious.rejected.csv"]  # no temp files


def test_a_clean_run_replaces_old_rejects_with_a_header_only_file(served, tmp_path):
    "Issue 15.3: the rejected-rows file always belongs to the output beside it."
    from mlkit.score import score_file
    (tmp_path / "out.rejected.csv").write_text("row,error\n3,old problem\n")
    served["X"].head(50).to_csv(tmp_path / "in.csv", index=False)
    s = score_file(served["served"], tmp_path / "in.csv", tmp_path / "out.parquet", progress=False)
    side = pd.read_csv(tmp_path / "out.rejected.csv")
    assert (s["rejected"], s["rejected_file"], len(side)) == (0, str(tmp_path / "out.rejected.csv"), 0)
    assert side.columns[0] == "row" and "age" in side.columns and side.columns[-1] == "error"


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_output_files_follow_the_umask(served, tmp_path, umask, mode):
    "Issue 15.10: score's files get the mode the umask gives, like any file the user creates (not always 0600)."
    from mlkit.score import score_file
    served["X"].head(20).assign(age=lambda d: d["age"].where(d.index != 3, "old")).to_csv(tmp_path / "in.csv", index=False)
    old = os.umask(umask)
    try: score_file(served["served"], tmp_path / "in.csv", tmp_path / "out.parquet", progress=False)
    finally: os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "out.parquet", tmp_path / "out.rejected.csv")} == {oct(mode)}


def test_unwritable_output_is_one_clear_error(served, tmp_path):
    "Issue 15.10: a DataError naming --output, not a FileNotFoundError traceback."
    from mlkit.core import DataError
    from mlkit.score import score_file
    served["X"].head(5).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(DataError, match=r"cannot write --output .*a-file/out.csv: .*a-file is a file, not a folder"):
        score_file(served["served"], tmp_path / "in.csv", tmp_path / "a-file" / "out.csv", progress=False)


@pytest.mark.slow
def test_cli_nothing_scored_and_unwritable_output_exit_non_zero(store, tmp_path):
    (tmp_path / "precious.parquet").write_bytes(b"previous results")
    store["X"].head(100).assign(age="old").to_csv(tmp_path / "bad.csv", index=False)
    r = score(store, "--input", tmp_path / "bad.csv", "--output", tmp_path / "precious.parquet")
    assert r.returncode == 2 and "all 100 rows were rejected" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (tmp_path / "precious.parquet").read_bytes() == b"previous results"
    store["X"].head(5).to_csv(tmp_path / "in.csv", index=False)
    r = score(store, "--input", tmp_path / "in.csv", "--output", "/proc/1/no-such-dir/out.csv")
    assert r.returncode == 2 and "error: cannot write --output /proc/1/no-such-dir/out.csv" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = score(store, "--input", tmp_path / "in.csv", "--output", tmp_path / "o.csv", "--chunksize", "0")
    assert r.returncode == 2 and "--chunksize: input should be greater than or equal to 1" in r.stderr
