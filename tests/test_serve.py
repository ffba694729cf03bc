"""`mlkit serve` against a real server on 127.0.0.1: MLflow's formats, every bad input, auth, metrics, the prediction log,
hot reload under load, a schemathesis fuzz of the OpenAPI schema, and parity with `mlflow models serve`."""
import json, os, socket, subprocess, sys, threading, time
from pathlib import Path
import numpy as np, pandas as pd
import pytest
from conftest import BIN, mlkit_cmd

NAME, TOKEN = "credit", "t0ken-for-tests"


def train_and_log(*, max_iter=30, seed=0, n_rows=1500, alias="champion"):
    "Train the way the train pipeline does (mlkit.models.make_model), log with mlkit.tracking.log_model, register, set the alias."
    import mlflow
    from mlkit import data as md, models as mm, tracking
    df = md.make_credit_data(n_rows, seed=seed).drop(columns=["application_date"])
    schema = md.infer_schema(df, target="default", id_column="id")
    X, y = df.drop(columns=["default", "id"]), df["default"]
    m = mm.make_model(schema, task="binary", model={"estimator": "hist_gradient_boosting", "hyperparams": {"max_iter": max_iter}}, seed=seed).fit(X, y)
    with tracking.start_run(pipeline="train", experiment="serve-tests"):
        info = tracking.log_model(m, X_sample=X, schema=schema, task="binary", model_name=NAME)
    v = str(info.registered_model_version)
    if alias: mlflow.MlflowClient().set_registered_model_alias(NAME, alias, v)
    return m, v, X


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def wait_ready(url, proc=None, timeout=60, headers=None):
    import httpx
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(url, headers=headers, timeout=1).status_code == 200: return
        except httpx.HTTPError: pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout}s")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{d}/mlflow.db"
    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI",)}
    os.environ["MLFLOW_TRACKING_URI"] = uri
    cwd = os.getcwd(); os.chdir(d)
    try:
        m1, v1, X = train_and_log()
        yield {"dir": d, "uri": uri, "model": m1, "version": v1, "X": X}
    finally:
        os.chdir(cwd)
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v


@pytest.fixture(scope="module")
def server(store):
    "`mlkit serve` in a subprocess, on the champion alias, with a bearer token and the prediction log on."
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "MLKIT_SERVE_TOKEN": TOKEN, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.Popen(mlkit_cmd("serve", "--model", f"models:/{NAME}@champion", "--port", port, "--log-dir", store["dir"] / "plog"),
                            cwd=store["dir"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/ready", proc)
        yield {"url": url, "proc": proc, "auth": {"Authorization": f"Bearer {TOKEN}"}}
    finally:
        proc.terminate()
        try: proc.wait(10)
        except subprocess.TimeoutExpired: proc.kill()


@pytest.fixture
def thread_server(store):
    "Start `make_app(**opts)` with uvicorn in a thread on a free port; returns a start(**opts) -> url function."
    import uvicorn
    from mlkit.serve import make_app, bind_socket
    started = []
    def start(**opts):
        app = make_app(f"models:/{NAME}@champion", **opts)
        sock = bind_socket("127.0.0.1", free_port())
        srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        t = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True); t.start()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        started.append((srv, t))
        wait_ready(url + "/health", headers={"Authorization": f"Bearer {opts.get('token')}"})
        return url, app
    yield start
    for srv, t in started:
        srv.should_exit = True; t.join(10)


def records(X, n=3, start=0):
    return json.loads(X.iloc[start:start + n].to_json(orient="records"))


# ---------------------------------------------------------------- formats
def test_invocations_accepts_every_mlflow_format(server, store):
    import httpx
    X, m = store["X"], store["model"]
    want = m.predict(X.head(3)).tolist()
    recs = records(X)
    split = json.loads(X.head(3).to_json(orient="split", index=False))
    bodies = {"dataframe_records": {"dataframe_records": recs}, "dataframe_split": {"dataframe_split": split},
              "instances": {"instances": recs}, "inputs": {"inputs": {c: [r[c] for r in recs] for c in recs[0]}}}
    with httpx.Client(base_url=server["url"], headers=server["auth"]) as c:
        for name, body in bodies.items():
            r = c.post("/invocations", json=body)
            assert r.status_code == 200, (name, r.text)
            assert r.json() == {"predictions": want}, name
        r = c.post("/invocations", content=X.head(3).to_csv(index=False), headers={"Content-Type": "text/csv"})
        assert r.status_code == 200, r.text
        assert r.json() == {"predictions": want}
        assert r.headers["x-model-version"] == store["version"]


def test_predict_returns_probabilities_and_version(server, store):
    import httpx
    X, m = store["X"], store["model"]
    r = httpx.post(server["url"] + "/predict", json={"records": records(X, 5)}, headers={**server["auth"], "X-Request-ID": "abc"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["model_name"], out["model_version"], out["request_id"]) == (NAME, store["version"], "abc")
    assert out["predictions"] == m.predict(X.head(5)).tolist()
    np.testing.assert_allclose(out["probabilities"], m.predict_proba(X.head(5)), atol=1e-6)
    assert out["classes"] == [0, 1]


# ---------------------------------------------------------------- bad input
def _rec(X, **change):
    r = records(X, 1)[0]
    for k, v in change.items():
        if v is ...: r.pop(k)
        else: r[k] = v
    return r

BAD = [  # (name, path, body or bytes, content type, status, text the message must contain)
    ("missing column", "/invocations", lambda X: {"dataframe_records": [_rec(X, age=...)]}, None, 422, "column 'age' is missing"),
    ("extra column", "/invocations", lambda X: {"dataframe_records": [_rec(X, agee=3)]}, None, 422, "unexpected column 'agee' — did you mean 'age'?"),
    ("wrong type", "/invocations", lambda X: {"dataframe_records": [_rec(X, debt_ratio="high")]}, None, 422, "column 'debt_ratio', row 0: expected a finite number, got 'high'"),
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
def test_bad_input_is_a_4xx_naming_the_problem(server, store, name, path, body, ctype, status, text):
    import httpx
    body = body(store["X"]) if callable(body) else body
    kw = {"content": body} if isinstance(body, bytes) else {"content": json.dumps(body)}
    r = httpx.post(server["url"] + path, headers={**server["auth"], "Content-Type": ctype or "application/json"}, timeout=10, **kw)
    assert r.status_code == status, r.text
    assert text in r.json()["message"], r.json()


def test_errors_are_counted_and_server_stays_up(server):
    import httpx
    c = httpx.Client(base_url=server["url"], headers=server["auth"])
    c.post("/invocations", content=b"{", headers={"Content-Type": "application/json"})
    text = c.get("/metrics").text
    assert 'mlkit_errors_total{kind="malformed_json"}' in text
    assert 'mlkit_requests_total{endpoint="/invocations",status="400"}' in text
    assert "mlkit_request_latency_seconds_bucket" in text and 'mlkit_model_info{' in text
    assert c.get("/ready").json()["ready"] is True


def test_unseen_category_follows_the_policy(server, store, thread_server):
    import httpx
    body = {"dataframe_records": [_rec(store["X"], housing="castle")]}
    assert httpx.post(server["url"] + "/invocations", json=body, headers=server["auth"]).status_code == 200  # the encoder handles it
    url, _ = thread_server(unseen="reject")
    r = httpx.post(url + "/invocations", json=body)
    assert r.status_code == 422
    assert "column 'housing', row 0: unseen category 'castle'" in r.json()["message"]


# ---------------------------------------------------------------- auth, metadata
def test_bearer_token_is_required(server, store):
    import httpx
    body = {"dataframe_records": records(store["X"], 1)}
    assert httpx.post(server["url"] + "/invocations", json=body).status_code == 401
    r = httpx.post(server["url"] + "/invocations", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "bearer token" in r.json()["message"]
    assert httpx.get(server["url"] + "/metadata").status_code == 401
    assert httpx.get(server["url"] + "/health").status_code == 200  # probes need no secret


def test_metadata_names_the_model(server, store):
    import httpx
    md = httpx.get(server["url"] + "/metadata", headers=server["auth"]).json()
    assert (md["name"], md["version"], md["task"]) == (NAME, store["version"], "binary")
    assert md["inputs"] == list(store["X"].columns)
    assert md["compiled_preprocessing"] is True
    assert md["lineage"]["mlkit.pipeline"] == "train"
    spec = httpx.get(server["url"] + "/openapi.json", headers=server["auth"]).json()
    rec = spec["components"]["schemas"]["Record"]["properties"]
    assert set(store["X"].columns) <= set(rec) and "training range" in rec["age"]["description"]


def test_prediction_log_is_written_off_the_request_path(store, thread_server):
    import httpx
    from mlkit.serve import read_prediction_log
    url, app = thread_server(log_dir=store["dir"] / "plog-thread", sample_rate=1.0)
    for i in range(3):
        assert httpx.post(url + "/invocations", json={"dataframe_records": records(store["X"], 2, i)}, headers={"X-Request-ID": f"r{i}"}).status_code == 200
    app.state.prediction_log.close()
    log = read_prediction_log(store["dir"] / "plog-thread")
    assert log["request_id"].tolist() == ["r0", "r0", "r1", "r1", "r2", "r2"]
    assert set(log["model_version"]) == {store["version"]} and set(log["model_name"]) == {NAME}
    assert log["prediction"].tolist() == store["model"].predict(pd.concat([store["X"].iloc[i:i + 2] for i in range(3)])).tolist()
    assert list(log.columns[:3]) == list(store["X"].columns[:3]) and "score" in log and "timestamp" in log


# ---------------------------------------------------------------- hot reload
def test_hot_reload_under_load_has_no_failed_or_mixed_request(server, store):
    "Move `champion` to a different model while 4 clients keep requesting: every answer is 200 and wholly one version's."
    import httpx, mlflow
    X, row = store["X"], records(store["X"], 2, 10)
    expect = {store["version"]: store["model"].predict_proba(X.iloc[10:12])}
    results, stop = [], threading.Event()
    def client():
        with httpx.Client(base_url=server["url"], headers=server["auth"], timeout=10) as c:
            while not stop.is_set():
                t0 = time.monotonic(); r = c.post("/predict", json={"records": row})
                results.append((t0, time.monotonic(), r.status_code, r.json() if r.status_code == 200 else r.text))
    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads: t.start()
    try:
        time.sleep(1.0)
        m2, v2, _ = train_and_log(max_iter=3, seed=1)  # a different model: its probabilities differ
        expect[v2] = m2.predict_proba(X.iloc[10:12])
        t_swap = time.monotonic(); deadline = t_swap + 20
        while time.monotonic() < deadline and not any(r[2] == 200 and r[3]["model_version"] == v2 for r in results[-20:]): time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads: t.join(15)
    assert len(results) > 50
    assert all(r[2] == 200 for r in results), [r for r in results if r[2] != 200][:3]
    for _, _, _, out in results:  # each answer is exactly the probabilities of the version it names
        np.testing.assert_allclose(out["probabilities"], expect[out["model_version"]], atol=1e-6)
    first_v2 = min(r[1] for r in results if r[3]["model_version"] == v2)
    assert all(r[3]["model_version"] == v2 for r in results if r[0] > first_v2)  # never back to the old version
    assert "mlkit_model_reloads_total{result=\"ok\"} 1.0" in httpx.get(server["url"] + "/metrics", headers=server["auth"]).text
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", store["version"])  # restore for later tests
    wait = time.monotonic() + 20
    while httpx.get(server["url"] + "/ready", headers=server["auth"]).json()["model_version"] != store["version"] and time.monotonic() < wait: time.sleep(0.3)


# ---------------------------------------------------------------- fuzz
def test_openapi_fuzz_never_5xx(store, thread_server):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    url, _ = thread_server()
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    failures = []
    for op in schema.get_all_operations():
        op = op.ok()
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case):
            r = case.call(base_url=url, timeout=10)
            if r.status_code >= 500: failures.append((op.path, r.status_code, r.text[:200]))
        run()
    assert not failures, failures[:5]
    import httpx
    assert httpx.get(url + "/health").status_code == 200


# ---------------------------------------------------------------- parity with mlflow
def test_same_predictions_as_mlflow_models_serve(server, store):
    import httpx
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}/{store['version']}", "--env-manager", "local",
                             "-p", str(port), "-h", "127.0.0.1"], cwd=store["dir"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/ping", proc, timeout=60)
        body = {"dataframe_split": json.loads(store["X"].head(200).to_json(orient="split", index=False))}
        theirs = httpx.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=30)
        ours = httpx.post(server["url"] + "/invocations", json=body, headers=server["auth"], timeout=30)
        assert theirs.status_code == ours.status_code == 200, (theirs.text, ours.text)
        assert ours.json() == theirs.json()
    finally:
        proc.terminate()
        try: proc.wait(10)
        except subprocess.TimeoutExpired: proc.kill()


def test_bad_model_uri_is_a_one_line_error(store):
    r = subprocess.run(mlkit_cmd("serve", "--model", "models:/credti@champion", "--port", free_port()), cwd=store["dir"],
                       env={**os.environ, "MLFLOW_TRACKING_URI": store["uri"]}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "no registered model 'credti'" in r.stderr and "did you mean 'credit'" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- QA regressions
def test_deeply_nested_json_is_a_400_and_the_server_stays_up(server):
    import httpx
    c = httpx.Client(base_url=server["url"], headers={**server["auth"], "Content-Type": "application/json"}, timeout=10)
    deep = b"[" * 5000 + b"]" * 5000
    for path, body in (("/invocations", deep), ("/predict", b'{"records": ' + deep + b"}"),
                       ("/invocations", b'{"dataframe_records": ' + deep + b"}")):
        r = c.post(path, content=body)
        assert r.status_code == 400, (path, r.text)
        assert "nested too deeply" in r.json()["message"]
    assert c.get("/ready").json()["ready"] is True


@pytest.mark.parametrize("flags,text", [(["--port", "70000"], "--port must be a TCP port between 1 and 65535, got 70000"),
                                        (["--host", "no-such-host.invalid"], "--host 'no-such-host.invalid' is not an address")])
def test_bad_port_or_host_fails_before_loading_the_model(tmp_path, flags, text):
    # the model URI does not exist: an error about it would mean the model was loaded before the address was checked
    r = subprocess.run(mlkit_cmd("serve", "--model", "models:/nothing@champion", *flags), cwd=tmp_path,
                       env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert text in r.stderr and "Traceback" not in r.stderr and "nothing" not in r.stderr
