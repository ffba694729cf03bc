"""`mlkit serve`: MLflow's formats, every bad input, auth and metrics in process (fast); a real server on 127.0.0.1 for the
prediction log, hot reload under load, a schemathesis fuzz, parity with `mlflow models serve` and the CLI's start-up (slow)."""
import json, os, re, socket, subprocess, threading, time
from pathlib import Path
import numpy as np, pandas as pd
import pytest
from conftest import BIN, mlkit_cmd

NAME, TOKEN = "credit", "t0ken-for-tests"


def fit_credit(*, max_iter=30, seed=0, n_rows=1500):
    "(pipeline, schema, X): the credit model the way the train pipeline builds it (mlkit.models.make_model), fitted in process."
    from mlkit import checks, data as md, models as mm
    df = md.make_credit_data(n_rows, seed=seed).drop(columns=["application_date"])
    schema = checks.infer_schema(df, target="default", id_column="id")
    X, y = df.drop(columns=["default", "id"]), df["default"]
    model = {"estimator": "hist_gradient_boosting", "hyperparams": {"max_iter": max_iter}}
    return mm.make_model(schema, task="binary", model=model, seed=seed).fit(X, y), schema, X


def train_and_log(*, max_iter=30, seed=0, n_rows=1500, alias="champion", name=NAME):
    "Fit (fit_credit), log with mlkit.tracking.log_model, register as `name`, set the alias; returns (pipeline, version, X)."
    import mlflow
    from mlkit import tracking
    m, schema, X = fit_credit(max_iter=max_iter, seed=seed, n_rows=n_rows)
    with tracking.start_run(pipeline="train", experiment="serve-tests"):
        info = tracking.log_model(m, X_sample=X, schema=schema, task="binary", model_name=name)
    v = str(info.registered_model_version)
    if alias: mlflow.MlflowClient().set_registered_model_alias(name, alias, v)
    return m, v, X


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def wait_until(cond, timeout=240, what="condition", proc=None):
    "Poll `cond()` until it is truthy (returns it) or `timeout` seconds pass (AssertionError); fail early if `proc` exits."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        out = cond()
        if out: return out
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached after {timeout}s")


def wait_ready(url, proc=None, timeout=240, headers=None):
    import httpx
    def up():
        try: return httpx.get(url, headers=headers, timeout=1).status_code == 200
        except httpx.HTTPError: return False
    wait_until(up, timeout, f"{url} answering 200", proc)


def records(X, n=3, start=0):
    return json.loads(X.iloc[start:start + n].to_json(orient="records"))


def stop(proc):
    proc.terminate()
    try: proc.wait(10)
    except subprocess.TimeoutExpired: proc.kill(); proc.wait(10)


# ---------------------------------------------------------------- in process (fast): make_app on a model fitted here
@pytest.fixture(scope="module")
def fitted():
    m, schema, X = fit_credit()
    return {"model": m, "schema": schema, "X": X}


@pytest.fixture
def client(fitted):
    "A function that builds `make_app(**opts)` around the in-process model and returns a started TestClient (closed after)."
    from fastapi.testclient import TestClient
    from mlkit.payload import ServedModel
    from mlkit.serve import make_app
    opened = []
    def make(unseen="pipeline", **opts):
        served = ServedModel(fitted["model"], schema=fitted["schema"], name=NAME, version="1", unseen=unseen)
        c = TestClient(make_app(served, unseen=unseen, **opts), raise_server_exceptions=False)
        c.__enter__(); opened.append(c)
        return c
    yield make
    for c in opened: c.__exit__(None, None, None)


def test_invocations_accepts_every_mlflow_format(client, fitted):
    X, m = fitted["X"], fitted["model"]
    want = m.predict(X.head(3)).tolist()
    recs = records(X)
    split = json.loads(X.head(3).to_json(orient="split", index=False))
    bodies = {"dataframe_records": {"dataframe_records": recs}, "dataframe_split": {"dataframe_split": split},
              "instances": {"instances": recs}, "inputs": {"inputs": {c: [r[c] for r in recs] for c in recs[0]}}}
    c = client()
    for name, body in bodies.items():
        r = c.post("/invocations", json=body)
        assert r.status_code == 200, (name, r.text)
        assert r.json() == {"predictions": want}, name
    r = c.post("/invocations", content=X.head(3).to_csv(index=False), headers={"Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": want}
    assert r.headers["x-model-version"] == "1"


def test_predict_returns_probabilities_and_version(client, fitted):
    X, m = fitted["X"], fitted["model"]
    r = client().post("/predict", json={"records": records(X, 5)}, headers={"X-Request-ID": "abc"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["model_name"], out["model_version"], out["request_id"]) == (NAME, "1", "abc")
    assert r.headers["x-request-id"] == "abc"
    assert out["predictions"] == m.predict(X.head(5)).tolist()
    np.testing.assert_allclose(out["probabilities"], m.predict_proba(X.head(5)), atol=1e-6)
    assert out["classes"] == [0, 1]


def _rec(X, **change):
    r = records(X, 1)[0]
    for k, v in change.items():
        if v is ...: r.pop(k)
        else: r[k] = v
    return r

BAD = [  # (name, path, body or bytes, content type, status, text the message must contain), under the strict input policy
    ("missing column", "/invocations", lambda X: {"dataframe_records": [_rec(X, age=...)]}, None, 422, "column 'age' is missing"),
    ("extra column", "/invocations", lambda X: {"dataframe_records": [_rec(X, agee=3)]}, None, 422, "unexpected column 'agee' — did you mean 'age'?"),
    ("wrong type", "/invocations", lambda X: {"dataframe_records": [_rec(X, debt_ratio="high")]}, None, 422,
     "column 'debt_ratio', row 0: expected a finite number, got 'high'"),
    ("bool as number", "/invocations", lambda X: {"dataframe_records": [_rec(X, age=True)]}, None, 422, "column 'age', row 0: expected a finite number"),
    ("number as category", "/invocations", lambda X: {"dataframe_records": [_rec(X, housing=3)]}, None, 422, "column 'housing', row 0: expected a str"),
    ("null not allowed", "/invocations", lambda X: {"dataframe_records": [_rec(X, age=None)]}, None, 422, "column 'age', row 0: null is not allowed"),
    ("malformed json", "/invocations", b'{"dataframe_records": [', None, 400, "not valid JSON"),
    ("not an object", "/invocations", b'[1, 2]', None, 400, "exactly one of"),
    ("two formats", "/invocations", lambda X: {"dataframe_records": [_rec(X)], "instances": [_rec(X)]}, None, 400, "exactly one of"),
    ("empty records", "/invocations", {"dataframe_records": []}, None, 400, "non-empty list"),
    ("ragged split", "/invocations", {"dataframe_split": {"columns": ["age", "sex"], "data": [[1]]}}, None, 400, "row 0 has 1 values; expected 2"),
    ("bad csv", "/invocations", b'age,sex\n"unclosed', "text/csv", 400, "not valid CSV"),
    ("csv wrong type", "/invocations", lambda X: X.head(2).assign(age="old").to_csv(index=False).encode(), "text/csv", 422, "column 'age', row 0"),
    ("content type", "/invocations", b"<rows/>", "application/xml", 415, "unsupported content type"),
    ("predict wrong type", "/predict", lambda X: {"records": [_rec(X, age="41")]}, None, 422, "records.0.age: Input should be a valid number"),
    ("predict extra", "/predict", lambda X: {"records": [_rec(X, colour="red")]}, None, 422, "records.0.colour: Extra inputs are not permitted"),
    ("predict missing", "/predict", lambda X: {"records": [_rec(X, sex=...)]}, None, 422, "records.0.sex: Field required"),
    ("predict malformed", "/predict", b"{", None, 400, "not valid JSON"),
    ("too large", "/invocations", lambda X: {"dataframe_records": records(X, 1) * 6000}, None, 413, "the limit is 1048576 bytes"),
]

@pytest.mark.parametrize("name,path,body,ctype,status,text", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_naming_the_problem(client, fitted, name, path, body, ctype, status, text):
    body = body(fitted["X"]) if callable(body) else body
    r = client(input_policy="strict").post(path, content=body if isinstance(body, bytes) else json.dumps(body),
                                           headers={"Content-Type": ctype or "application/json"})
    assert r.status_code == status, r.text
    assert text in r.json()["message"], r.json()


def test_errors_are_counted_and_the_app_keeps_answering(client):
    c = client()
    c.post("/invocations", content=b"{", headers={"Content-Type": "application/json"})
    text = c.get("/metrics").text
    assert 'mlkit_errors_total{kind="malformed_json"}' in text
    assert 'mlkit_requests_total{endpoint="/invocations",status="400"}' in text
    assert "mlkit_request_latency_seconds_bucket" in text and 'mlkit_model_info{' in text
    assert c.get("/ready").json()["ready"] is True


def test_unseen_category_follows_the_policy(client, fitted):
    body = {"dataframe_records": [_rec(fitted["X"], housing="castle")]}
    assert client().post("/invocations", json=body).status_code == 200  # the encoder handles it
    r = client(unseen="reject").post("/invocations", json=body)
    assert r.status_code == 422
    assert "column 'housing', row 0: unseen category 'castle'" in r.json()["message"]


def test_bearer_token_is_required(client, fitted):
    c, body = client(token=TOKEN), {"dataframe_records": records(fitted["X"], 1)}
    assert c.post("/invocations", json=body).status_code == 401
    r = c.post("/invocations", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "bearer token" in r.json()["message"]
    assert c.get("/metadata").status_code == 401
    assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200  # probes need no secret
    assert c.post("/invocations", json=body, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_metadata_and_openapi_describe_the_model(client, fitted):
    c = client()
    md = c.get("/metadata").json()
    assert (md["name"], md["version"], md["task"]) == (NAME, "1", "binary")
    assert md["inputs"] == list(fitted["X"].columns) and md["compiled_preprocessing"] is True
    rec = c.get("/openapi.json").json()["components"]["schemas"]["Record"]["properties"]
    assert set(fitted["X"].columns) <= set(rec) and "training range" in rec["age"]["description"]


def test_deeply_nested_json_is_a_400_and_the_app_keeps_answering(client):
    c = client()
    deep = b"[" * 5000 + b"]" * 5000
    for path, body in (("/invocations", deep), ("/predict", b'{"records": ' + deep + b"}"),
                       ("/invocations", b'{"dataframe_records": ' + deep + b"}")):
        r = c.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (path, r.text)
        assert "nested too deeply" in r.json()["message"]
    assert c.get("/ready").json()["ready"] is True


def test_prediction_log_is_written_off_the_request_path(client, fitted, tmp_path):
    from mlkit.predlog import read_prediction_log
    c = client(log_dir=tmp_path / "plog", sample_rate=1.0)
    for i in range(3):
        r = c.post("/invocations", json={"dataframe_records": records(fitted["X"], 2, i)}, headers={"X-Request-ID": f"r{i}"})
        assert r.status_code == 200
    c.app.state.prediction_log.close()
    log = read_prediction_log(tmp_path / "plog")
    assert log["request_id"].tolist() == ["r0", "r0", "r1", "r1", "r2", "r2"]
    assert set(log["model_version"]) == {"1"} and set(log["model_name"]) == {NAME}
    assert log["prediction"].tolist() == fitted["model"].predict(pd.concat([fitted["X"].iloc[i:i + 2] for i in range(3)])).tolist()
    assert list(log.columns[:3]) == list(fitted["X"].columns[:3]) and "score" in log and "timestamp" in log


# ---------------------------------------------------------------- regressions (issues 11 and 15), in process
HUGE = "1" + "0" * 400  # an integer over 1.8e308: no float can hold it


def test_huge_integer_is_a_422_naming_the_column(client, fitted):
    "Issue 15.5: JSON and CSV; under both input policies; a 4xx naming the column, not a 500 with the exception's text."
    X = fitted["X"]
    body = json.dumps({"dataframe_records": [_rec(X, income=1)]}).replace('"income": 1', f'"income": {HUGE}').encode()
    csv = X.head(2).to_csv(index=False).replace(str(X["income"].iloc[0]), HUGE, 1).encode()
    for c in (client(), client(input_policy="strict")):
        for content, ctype in ((body, "application/json"), (csv, "text/csv")):
            r = c.post("/invocations", content=content, headers={"Content-Type": ctype})
            assert r.status_code == 422, r.text
            assert (r.json()["column"], r.json()["error_code"]) == ("income", "OUT_OF_RANGE")
            assert "out of range" in r.json()["message"] and "OverflowError" not in r.text
        assert c.post("/invocations", json={"dataframe_records": records(X, 1)}).status_code == 200


def test_internal_error_is_a_500_with_an_error_id_only(client, fitted, monkeypatch, caplog):
    "Issue 15.5: no exception text of an internal error in the body; the log has it under the error id."
    c = client()
    def broken(cols, n): raise RuntimeError("secret internals /etc/mlkit")
    monkeypatch.setattr(c.app.state.holder.model, "predict", broken)
    with caplog.at_level("ERROR", logger="mlkit.serve"):
        r = c.post("/invocations", json={"dataframe_records": records(fitted["X"], 1)})
    assert r.status_code == 500
    assert "secret" not in r.text and "RuntimeError" not in r.text
    eid = r.json()["error_id"]
    assert eid in r.json()["message"] and any(eid in rec.getMessage() and rec.exc_info for rec in caplog.records)
    assert 'mlkit_errors_total{kind="internal"} 1.0' in c.get("/metrics").text


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_bearer_scheme_is_case_insensitive(client, fitted, scheme):
    "Issue 15.10 (RFC 7235): the scheme in any case; the token itself still exact."
    c, body = client(token=TOKEN), {"dataframe_records": records(fitted["X"], 1)}
    assert c.post("/invocations", json=body, headers={"Authorization": f"{scheme} {TOKEN}"}).status_code == 200
    assert c.post("/invocations", json=body, headers={"Authorization": f"{scheme} {TOKEN.upper()}"}).status_code == 401


def test_invocations_is_as_lenient_as_mlflow_by_default(client, fitted):
    "Issue 11.9: numbers as strings, an extra column, a null where training had none: 200, and the headers say what was done."
    X, m = fitted["X"], fitted["model"]
    rec = _rec(X, age=str(records(X, 1)[0]["age"]), colour="red", debt_ratio=None)
    r = client().post("/invocations", json={"dataframe_records": [rec]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": m.predict(X.head(1).assign(debt_ratio=np.nan)).tolist()}
    assert (r.headers["x-mlkit-coerced-columns"], r.headers["x-mlkit-ignored-columns"], r.headers["x-mlkit-imputed-columns"]) == \
           ("age", "colour", "debt_ratio")
    metrics = client().get("/metrics").text  # a fresh app: its own counters
    assert 'mlkit_input_adjustments_total{action="coerced",column="age"}' not in metrics
    c = client()
    c.post("/invocations", json={"dataframe_records": [rec]})
    metrics = c.get("/metrics").text
    for line in ('action="coerced",column="age"} 1.0', 'action="ignored",column="extra"} 1.0', 'action="imputed",column="debt_ratio"} 1.0'):
        assert "mlkit_input_adjustments_total{" + line in metrics


def test_strict_policy_is_an_opt_in_flag_and_a_request_param(client, fitted):
    X = fitted["X"]
    rec = _rec(X, age="41")
    strict = client(input_policy="strict").post("/invocations", json={"dataframe_records": [rec]})
    assert strict.status_code == 422 and "column 'age', row 0: expected a finite number, got '41'" in strict.json()["message"]
    asked = client().post("/invocations", json={"dataframe_records": [rec], "params": {"input_policy": "strict"}})
    assert asked.status_code == 422
    relaxed = client(input_policy="strict").post("/invocations", json={"dataframe_records": [rec], "params": {"input_policy": "mlflow"}})
    assert relaxed.status_code == 422  # a request can tighten the operator's policy, never loosen it


def test_predict_method_param_returns_probabilities(client, fitted):
    "Issue 11.9: MLflow's params field reaches the model: predict_method predict_proba."
    X, m = fitted["X"], fitted["model"]
    c = client()
    r = c.post("/invocations", json={"dataframe_split": json.loads(X.head(3).to_json(orient="split", index=False)),
                                     "params": {"predict_method": "predict_proba", "temperature": 2}})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["predictions"], m.predict_proba(X.head(3)), atol=1e-9)
    assert r.headers["x-mlkit-ignored-params"] == "temperature"
    bad = c.post("/invocations", json={"instances": records(X, 1), "params": {"predict_method": "decision_function"}})
    assert bad.status_code == 400 and "must be 'predict' or 'predict_proba'" in bad.json()["message"]


def test_empty_records_error_shows_the_models_own_column(fitted):
    "Issue 11.9: the hint is a record of the served model, not the demo's {'age': 41}."
    from fastapi.testclient import TestClient
    from sklearn.linear_model import LinearRegression
    from mlkit.payload import ServedModel
    from mlkit.serve import make_app
    X = fitted["X"][["income", "debt_ratio"]].fillna(0)
    spec = {c: {"kind": "numeric", "min": float(X[c].min()), "max": float(X[c].max())} for c in X}
    served = ServedModel(LinearRegression().fit(X, X["debt_ratio"] * 2), schema={"columns": spec, "task": "regression"}, name="r", version="1")
    with TestClient(make_app(served)) as c:
        r = c.post("/invocations", json={"dataframe_records": []})
    assert r.status_code == 400
    assert '[{"income": ' in r.json()["message"] and "age" not in r.json()["message"]


def test_docs_work_offline(client):
    "Issue 11.9: /docs serves Swagger UI's assets itself (no CDN), and they are the real files."
    c = client()
    page = c.get("/docs")
    assert page.status_code == 200 and "cdn." not in page.text and "https://" not in page.text.replace("https://swagger", "")
    import re
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(assets) == ["docs/favicon.png", "docs/swagger-ui-bundle.js", "docs/swagger-ui.css"], assets
    js = c.get("/docs/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 500_000 and b"SwaggerUIBundle" in js.content
    assert c.get("/docs/../../etc/passwd").status_code == 404


def test_options_are_checked_before_the_model_is_loaded(tmp_path):
    "Issue 15.8 and 15.9: refused at start with a message naming the flag."
    from mlkit.core import ServeError
    from mlkit.serve import serve
    (tmp_path / "a-file").write_text("x")
    cases = [({"max_body_bytes": -1}, "--max-body-bytes: input should be greater than or equal to 1024, got -1"),
             ({"log_dir": str(tmp_path / "a-file")}, "is a file, not a folder"),
             ({"sample_rate": 2}, "--sample-rate"), ({"reload_interval": -1}, "--reload-interval"), ({"workers": 0}, "--workers"),
             ({"max_rows": 0}, "--max-rows"), ({"port": 70000}, "--port"),
             ({"host": "0.0.0.0"}, "Set $MLKIT_TEST_NO_SUCH_TOKEN (or name another variable with --token-env)")]
    for opts, text in cases:
        with pytest.raises(ServeError, match=None) as e:
            serve("models:/does-not-exist@champion", token_env="MLKIT_TEST_NO_SUCH_TOKEN", **opts)
        assert text in str(e.value), (opts, str(e.value))
        assert "does-not-exist" not in str(e.value)  # refused before any model lookup
    with pytest.raises(ServeError, match="--allow-unauthenticated to serve without auth on purpose"):
        serve("models:/does-not-exist@champion", host="0.0.0.0", token_env="MLKIT_TEST_NO_SUCH_TOKEN")


# ---------------------------------------------------------------- a real MLflow store and a real server (slow)
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{d}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri); mp.chdir(d)
        m1, v1, X = train_and_log()
        yield {"dir": d, "uri": uri, "model": m1, "version": v1, "X": X}


def start_server(store, *args, token=TOKEN, env=None):
    "`mlkit serve` in a subprocess on a free port; returns (proc, url) once /ready answers."
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "PATH": f"{BIN}:{os.environ['PATH']}", **(env or {})}
    env.pop("MLKIT_SERVE_TOKEN", None)
    if token: env["MLKIT_SERVE_TOKEN"] = token
    proc = subprocess.Popen(mlkit_cmd("serve", "--port", port, *args), cwd=store["dir"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try: wait_ready(url + "/ready", proc)
    except BaseException: stop(proc); raise
    return proc, url


@pytest.fixture(scope="module")
def server(store):
    "`mlkit serve` on the champion alias, with a bearer token and the prediction log on."
    proc, url = start_server(store, "--model", f"models:/{NAME}@champion", "--log-dir", store["dir"] / "plog")
    try: yield {"url": url, "proc": proc, "auth": {"Authorization": f"Bearer {TOKEN}"}}
    finally: stop(proc)


@pytest.mark.slow
def test_served_registered_model_names_its_lineage(server, store):
    import httpx
    md = httpx.get(server["url"] + "/metadata", headers=server["auth"]).json()
    assert (md["name"], md["version"], md["task"]) == (NAME, store["version"], "binary")
    assert md["lineage"]["mlkit.pipeline"] == "train"
    r = httpx.post(server["url"] + "/invocations", json={"dataframe_records": records(store["X"], 3)}, headers=server["auth"])
    assert r.json() == {"predictions": store["model"].predict(store["X"].head(3)).tolist()}


@pytest.mark.slow
def test_hot_reload_under_load_has_no_failed_or_mixed_request(store):
    "Move the alias of a model of its own to a different version while 4 clients keep requesting: every answer is 200 and wholly one version's."
    import httpx
    name = "credit-reload"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store["uri"])
        m1, v1, X = train_and_log(name=name)
        proc, url = start_server(store, "--model", f"models:/{name}@champion", "--reload-interval", "0.5", "--log-dir", "none")
        row = records(X, 2, 10)
        expect = {v1: m1.predict_proba(X.iloc[10:12])}
        results, halt = [], threading.Event()
        def client():
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as c:
                while not halt.is_set():
                    t0 = time.monotonic(); r = c.post("/predict", json={"records": row})
                    results.append((t0, time.monotonic(), r.status_code, r.json() if r.status_code == 200 else r.text))
        threads = [threading.Thread(target=client) for _ in range(4)]
        try:
            for t in threads: t.start()
            wait_until(lambda: len(results) >= 40, 60, "40 answers before the swap")
            m2, v2, _ = train_and_log(max_iter=3, seed=1, name=name)  # a different model: its probabilities differ
            expect[v2] = m2.predict_proba(X.iloc[10:12])
            new = lambda: [r for r in results if r[2] == 200 and r[3]["model_version"] == v2]
            wait_until(lambda: len(new()) >= 40, 60, "40 answers by the new version")
        finally:
            halt.set()
            for t in threads: t.join(15)
            metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
            stop(proc)
    assert all(r[2] == 200 for r in results), [r for r in results if r[2] != 200][:3]
    for _, _, _, out in results:  # each answer is exactly the probabilities of the version it names
        np.testing.assert_allclose(out["probabilities"], expect[out["model_version"]], atol=1e-6)
    first_v2 = min(r[1] for r in results if r[3]["model_version"] == v2)
    assert all(r[3]["model_version"] == v2 for r in results if r[0] > first_v2)  # never back to the old version
    assert 'mlkit_model_reloads_total{result="ok"} 1.0' in metrics


@pytest.mark.slow
def test_openapi_fuzz_never_5xx(server):
    import httpx, schemathesis
    from hypothesis import HealthCheck, given, settings
    url = server["url"]
    schema = schemathesis.openapi.from_dict(httpx.get(url + "/openapi.json", headers=server["auth"]).json())
    failures = []
    for op in schema.get_all_operations():
        op = op.ok()
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case):
            r = case.call(base_url=url, headers=server["auth"], timeout=10)
            if r.status_code >= 500: failures.append((op.path, r.status_code, r.text[:200]))
        run()
    assert not failures, failures[:5]
    assert httpx.get(url + "/health").status_code == 200


@pytest.mark.slow
def test_same_answers_as_mlflow_models_serve(server, store):
    "Issue 11.9: side by side on the same model, every payload MLflow accepts gets the same 200 and predictions from mlkit."
    import httpx
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "PATH": f"{BIN}:{os.environ['PATH']}",
           "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}
    proc = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}/{store['version']}", "--env-manager", "local",
                             "-p", str(port), "-h", "127.0.0.1"], cwd=store["dir"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    X, rec = store["X"], records(store["X"], 1)[0]
    bodies = {"split": {"dataframe_split": json.loads(X.head(200).to_json(orient="split", index=False))},
              "number as string": {"dataframe_records": [{**rec, "age": str(rec["age"])}]},
              "extra column": {"dataframe_records": [{**rec, "colour": "red"}]},
              "null where training had none": {"dataframe_records": [{**rec, "debt_ratio": None}]},
              "bool as number": {"dataframe_records": [{**rec, "n_open_accounts": True}]},
              "number as category": {"dataframe_records": [{**rec, "housing": 3}]}}
    try:
        wait_ready(f"http://127.0.0.1:{port}/ping", proc, timeout=240)
        for name, body in bodies.items():
            theirs = httpx.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=30)
            ours = httpx.post(server["url"] + "/invocations", json=body, headers=server["auth"], timeout=30)
            assert theirs.status_code == ours.status_code == 200, (name, theirs.text, ours.text)
            assert ours.json() == theirs.json(), name
        huge = json.dumps(bodies["number as string"]).replace(f'"{rec["age"]}"', HUGE)
        theirs = httpx.post(f"http://127.0.0.1:{port}/invocations", content=huge, headers={"Content-Type": "application/json"}, timeout=30)
        ours = httpx.post(server["url"] + "/invocations", content=huge, headers={**server["auth"], "Content-Type": "application/json"})
        assert (theirs.status_code, ours.status_code, ours.json()["column"]) == (400, 422, "age")  # both refuse it, naming the column
    finally:
        stop(proc)


@pytest.mark.slow
def test_bad_model_uri_is_a_one_line_error(store):
    r = subprocess.run(mlkit_cmd("serve", "--model", "models:/credti@champion", "--port", free_port()), cwd=store["dir"],
                       env={**os.environ, "MLFLOW_TRACKING_URI": store["uri"]}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "no registered model 'credti'" in r.stderr and "did you mean 'credit'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("flags,text", [(["--port", "70000"], "--port: input should be less than or equal to 65535, got 70000"),
                                        (["--host", "no-such-host.invalid"], "--host 'no-such-host.invalid' is not an address")])
def test_bad_port_or_host_fails_before_loading_the_model(tmp_path, flags, text):
    # the model URI does not exist: an error about it would mean the model was loaded before the address was checked
    r = subprocess.run(mlkit_cmd("serve", "--model", "models:/nothing@champion", *flags), cwd=tmp_path,
                       env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert text in r.stderr and "Traceback" not in r.stderr and "nothing" not in r.stderr


@pytest.mark.slow
def test_keep_alive_connection_survives_user_and_internal_errors(fitted):
    "Issue 15.5: after a huge integer (422) and an internal error (500) the same connection answers the next valid request."
    import http.client, uvicorn
    from mlkit.payload import ServedModel
    from mlkit.serve import bind_socket, make_app
    served = ServedModel(fitted["model"], schema=fitted["schema"], name=NAME, version="1")
    app = make_app(served)
    sock = bind_socket("127.0.0.1", free_port())
    srv = uvicorn.Server(uvicorn.Config(app, log_level="critical"))
    t = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True); t.start()
    port = sock.getsockname()[1]
    try:
        wait_ready(f"http://127.0.0.1:{port}/health")
        good = json.dumps({"dataframe_records": records(fitted["X"], 1)})
        huge = good.replace(str(records(fitted["X"], 1)[0]["income"]), HUGE, 1)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # one TCP connection; http.client does not reconnect by itself
        answers = []
        def fail(cols, n): raise RuntimeError("secret internals")
        for body, broken in ((huge, False), (good, False), (good, True), (good, False)):
            served.predict = fail if broken else ServedModel.predict.__get__(served)
            conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse(); answers.append((r.status, json.loads(r.read())))
        local_port = conn.sock.getsockname()[1]
        conn.close()
    finally:
        srv.should_exit = True; t.join(10)
    assert [a[0] for a in answers] == [422, 200, 500, 200], answers
    assert answers[0][1]["column"] == "income" and "secret" not in json.dumps(answers[2][1])
    assert local_port  # the four answers came over the one connection


@pytest.mark.slow
@pytest.mark.parametrize("flags,text", [
    (["--host", "0.0.0.0"], "Set $MLKIT_SERVE_TOKEN (or name another variable with --token-env)"),
    (["--max-body-bytes", "-1"], "--max-body-bytes: input should be greater than or equal to 1024, got -1"),
    (["--log-dir", "a-file"], "--log-dir a-file is a file, not a folder"),
    (["--sample-rate", "1.5"], "--sample-rate: input should be less than or equal to 1"),
    (["--input-policy", "lax"], "invalid choice: 'lax'")])
def test_cli_refuses_bad_options_before_loading_the_model(tmp_path, flags, text):
    "Issues 15.8 and 15.9: exit 2, one line naming the flag; the (missing) model is never looked up."
    (tmp_path / "a-file").write_text("x")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    env.pop("MLKIT_SERVE_TOKEN", None)
    r = subprocess.run(mlkit_cmd("serve", "--model", "models:/nothing@champion", "--port", free_port(), *flags), cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert text in r.stderr and "Traceback" not in r.stderr and "nothing" not in r.stderr.replace("--model", "")
    assert not (tmp_path / "mlflow.db").exists()  # no store was opened


# ---------------------------------------------------------------- scoring alone or merged (issue 12)
def test_a_lone_request_is_scored_in_its_handler(client, fitted):
    c = client()
    for i in range(5): assert c.post("/invocations", json={"dataframe_records": records(fitted["X"], 1, i)}).status_code == 200
    assert c.app.state.batcher.inline == 5 and c.app.state.batcher.q.empty()


@pytest.mark.slow
def test_concurrent_requests_are_merged_and_answered_right(fitted):
    import httpx, uvicorn
    from concurrent.futures import ThreadPoolExecutor
    from mlkit.payload import ServedModel
    from mlkit.serve import bind_socket, make_app
    app = make_app(ServedModel(fitted["model"], schema=fitted["schema"], name=NAME, version="1"))
    sock = bind_socket("127.0.0.1", free_port())
    srv = uvicorn.Server(uvicorn.Config(app, log_level="critical"))
    t = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True); t.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    X, want = fitted["X"], fitted["model"].predict(fitted["X"].head(64)).tolist()
    def client(k):
        with httpx.Client(base_url=url, timeout=30) as c:
            return [(i, c.post("/invocations", json={"dataframe_records": records(X, 1, i)}).json()["predictions"][0]) for i in range(k, 64, 16)]
    try:
        wait_ready(url + "/health")
        with ThreadPoolExecutor(16) as ex: answers = [a for got in ex.map(client, range(16)) for a in got]
        metrics = httpx.get(url + "/metrics").text
    finally:
        srv.should_exit = True; t.join(10)
    assert sorted(answers) == list(enumerate(want))
    one = float(re.search(r'mlkit_batch_requests_bucket\{le="1.0"\} ([\d.]+)', metrics).group(1))
    calls = float(re.search(r"mlkit_batch_requests_count ([\d.]+)", metrics).group(1))
    assert calls < 64 and one < calls, (one, calls)  # some predict calls answered several requests


# ---------------------------------------------------------------- Open Inference Protocol V2 (issue 14.5)
def v2_request(X, m, n=3, outputs=("predict", "predict_proba")):
    from mlkit.v2 import v2_datatype
    X = X.dropna().head(n)
    return {"id": "r-1", "inputs": [{"name": c, "shape": [n], "datatype": v2_datatype(m.specs[c]), "data": X[c].tolist()} for c in m.inputs],
            "outputs": [{"name": o} for o in outputs]}, X


def test_v2_protocol_shapes(client, fitted):
    "The protocol's published JSON shapes: health, server and model metadata, inference, errors."
    c = client(token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert c.get("/v2/health/live").json() == {"live": True} and c.get("/v2/health/ready").json() == {"ready": True}  # no token needed
    assert c.get("/v2/models/credit/ready").status_code == 200
    assert c.get("/v2", headers=auth).json()["name"] == "mlkit"
    md = c.get("/v2/models/credit", headers=auth).json()
    assert (md["name"], md["versions"], md["platform"]) == (NAME, ["1"], "mlkit-sklearn")
    assert [i["name"] for i in md["inputs"]] == list(fitted["X"].columns)
    assert {i["name"]: i["datatype"] for i in md["inputs"]}["age"] == "FP64" and {i["name"]: i["datatype"] for i in md["inputs"]}["housing"] == "BYTES"
    assert md["outputs"] == [{"name": "predict", "datatype": "INT64", "shape": [-1]}, {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]}]
    served = c.app.state.holder.model
    body, X = v2_request(fitted["X"], served)
    r = c.post("/v2/models/credit/infer", json=body, headers=auth)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["model_name"], out["model_version"], [o["name"] for o in out["outputs"]]) == (NAME, "1", ["predict", "predict_proba"])
    assert out["outputs"][0] == {"name": "predict", "shape": [3], "datatype": "INT64", "data": fitted["model"].predict(X).tolist()}
    np.testing.assert_allclose(np.reshape(out["outputs"][1]["data"], out["outputs"][1]["shape"]), fitted["model"].predict_proba(X), atol=1e-9)
    assert c.post("/v2/models/credit/versions/1/infer", json=body, headers=auth).status_code == 200
    assert c.post("/v2/models/credit/infer", json=body).status_code == 401  # the same auth as /invocations
    wrong = c.post("/v2/models/other/infer", json=body, headers=auth)
    assert wrong.status_code == 404 and "this server serves 'credit'" in wrong.json()["error"]
    body["inputs"][0]["data"][0] = "old"  # the same validation as /invocations, V2's error shape
    bad = c.post("/v2/models/credit/infer", json=body, headers=auth)
    assert bad.status_code == 422 and bad.json() == {"error": "column 'age', row 0: expected a number, got 'old'"}
    assert 'mlkit_requests_total{endpoint="/v2/models",status="422"} 1.0' in c.get("/metrics", headers=auth).text


@pytest.mark.slow
def test_v2_with_the_triton_client(fitted):
    "A V2 client library from PyPI (tritonclient[http], a test extra) against a real server on 127.0.0.1."
    httpclient = pytest.importorskip("tritonclient.http")
    import uvicorn
    from mlkit.payload import ServedModel
    from mlkit.serve import bind_socket, make_app
    from mlkit.v2 import v2_datatype
    served = ServedModel(fitted["model"], schema=fitted["schema"], name=NAME, version="1")
    sock = bind_socket("127.0.0.1", free_port())
    srv = uvicorn.Server(uvicorn.Config(make_app(served, token=TOKEN), log_level="critical"))
    t = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True); t.start()
    try:
        wait_ready(f"http://127.0.0.1:{sock.getsockname()[1]}/health")
        c = httpclient.InferenceServerClient(url=f"127.0.0.1:{sock.getsockname()[1]}")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(NAME)
        md = c.get_model_metadata(NAME, headers=auth)
        assert [i["name"] for i in md["inputs"]] == served.inputs
        X = fitted["X"].dropna().head(4)
        inputs = []
        for col in served.inputs:
            dt = v2_datatype(served.specs[col])
            inp = httpclient.InferInput(col, [len(X)], dt)
            inp.set_data_from_numpy(np.array(X[col].tolist(), dtype=object if dt == "BYTES" else np.float64), binary_data=False)
            inputs.append(inp)
        outs = [httpclient.InferRequestedOutput(o, binary_data=False) for o in ("predict", "predict_proba")]
        res = c.infer(NAME, inputs, outputs=outs, headers=auth)
        assert res.as_numpy("predict").tolist() == fitted["model"].predict(X).tolist()
        np.testing.assert_allclose(res.as_numpy("predict_proba"), fitted["model"].predict_proba(X), atol=1e-9)
        c.close()
    finally:
        srv.should_exit = True; t.join(10)


# ---------------------------------------------------------------- JSON logs (issue 14.4)
def test_json_log_lines_carry_the_request_id(client, fitted):
    import io, logging
    from mlkit.predlog import configure_logging
    buf = io.StringIO()
    root, before = logging.getLogger(), (list(logging.getLogger().handlers), logging.getLogger().level)
    configure_logging("json", stream=buf)
    try:
        c = client()
        rec = records(fitted["X"], 1)[0]
        r = c.post("/invocations", json={"dataframe_records": [rec]}, headers={"X-Request-ID": "order-17"})
        bad = c.post("/invocations", json={"dataframe_records": [{**rec, "age": "old"}]})
    finally:
        for h in list(root.handlers): root.removeHandler(h)
        for h in before[0]: root.addHandler(h)
        root.setLevel(before[1])
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]  # every line parses
    reqs = [l for l in lines if l["event"] == "request"]
    assert r.headers["x-request-id"] == "order-17" and len(bad.headers["x-request-id"]) == 32
    first = reqs[0]
    assert {k: first[k] for k in ("request_id", "status", "path", "model_name", "model_version", "level")} == \
           {"request_id": "order-17", "status": 200, "path": "/invocations", "model_name": NAME, "model_version": "1", "level": "info"}
    assert first["latency_ms"] > 0 and first["timestamp"].endswith("Z")
    assert reqs[1]["status"] == 422 and reqs[1]["request_id"] == bad.headers["x-request-id"]
    assert "payload" not in first and str(rec["income"]) not in buf.getvalue()  # no request payloads unless asked


@pytest.mark.slow
def test_cli_log_format_json_every_line_parses(store):
    import httpx
    proc, url = start_server(store, "--model", f"models:/{NAME}@champion", "--log-format", "json", "--log-dir", "none", "--log-payloads")
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = httpx.post(url + "/invocations", json={"dataframe_records": records(store["X"], 1)}, headers={**auth, "X-Request-ID": "cli-42"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "cli-42"
        httpx.post(url + "/invocations", content=b"{", headers={**auth, "Content-Type": "application/json"})
    finally:
        proc.terminate(); _, err = proc.communicate(timeout=20)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line is one JSON object
    assert any(l["event"] == "serving" and l["model_name"] == NAME for l in lines)
    req = next(l for l in lines if l.get("request_id") == "cli-42")
    assert (req["status"], req["model_version"], req["path"]) == (200, store["version"], "/invocations")
    assert '"dataframe_records"' in req["payload"]  # asked for with --log-payloads
    assert any(l.get("status") == 400 for l in lines) and all({"timestamp", "level", "event"} <= set(l) for l in lines)
