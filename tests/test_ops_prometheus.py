"""Prometheus and Grafana: the alert rules (deploy/prometheus/alerts.yml), the scrape configuration (prometheus.yml) and the
dashboard (deploy/grafana/mlkit-dashboard.json) against a real `mlkit serve`, a real Pushgateway fed by `mlkit.alerts` with a
real monitoring run, and a real Prometheus scraping both (Debian's `prometheus` and `prometheus-pushgateway`, run as plain
processes on 127.0.0.1 with their own configuration and storage)."""
import json, math, re, secrets, shutil, subprocess
from pathlib import Path
import pytest, yaml
from conftest import ROOT, run_mlkit
from ops_tools import free_port, need_binary, start, start_serve, stop, wait_for

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "mlkit-dashboard.json"
# series Prometheus makes itself for every target (not mlkit's to expose)
PROMETHEUS_OWN = {"up"}
# labels Prometheus attaches to every scraped series (target labels)
TARGET_LABELS = {"job", "instance"}

# ---- PromQL: the metric names and label names an expression uses -------------------------------------------------------------
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_TOKEN = re.compile(r"\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|[A-Za-z_:][A-Za-z0-9_:]*")
_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless", "inf", "nan"}


def promql_names(expr:str) -> dict:
    """{'metrics': names of the series an expression selects, 'selectors': {metric: label names in its matchers},
    'grouping': label names in by/without/on/ignoring/group_* lists}. Strings, windows and offsets are skipped, functions too."""
    s = _STRING.sub('""', expr)
    s = re.sub(r"\[[^\]]*\]", " ", s)                          # range windows and subqueries: [5m], [$__rate_interval], [1h:5m]
    s = re.sub(r"\boffset\s+-?[\w$]+", " ", s)                  # offset 5m
    grouping = {l.strip() for _, ls in _GROUPING.findall(s) for l in ls.split(",") if l.strip()}
    s = _GROUPING.sub(" ", s)
    selectors = {}
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}", s):
        labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2)))
        if m.group(1) and m.group(1) not in _WORDS: selectors.setdefault(m.group(1), set()).update(labels)
    s = re.sub(r"\{[^}]*\}", " ", s)
    metrics = set()
    for m in _TOKEN.finditer(s):
        w = m.group()
        if w[0].isdigit() or w.lower() in _WORDS or s[m.end():].lstrip().startswith("("): continue
        metrics.add(w)
    return {"metrics": metrics, "selectors": selectors, "grouping": grouping}


def test_promql_names_parser():
    r = promql_names('histogram_quantile(0.99, sum by (job, le) (rate(mlkit_request_latency_seconds_bucket{endpoint=~"/invocations|x_total"}'
                     '[$__rate_interval]))) > 1e-3 and on (job) max(up offset 5m) by (instance) == bool 1')
    assert r["metrics"] == {"mlkit_request_latency_seconds_bucket", "up"}
    assert r["selectors"] == {"mlkit_request_latency_seconds_bucket": {"endpoint"}}
    assert r["grouping"] == {"job", "le", "instance"}
    assert promql_names('time() - max(mlkit_monitor_last_run_timestamp_seconds{model=~"$model"}) > 2 * 86400')["metrics"] == \
           {"mlkit_monitor_last_run_timestamp_seconds"}
    assert promql_names('{__name__="a"} or b:rate5m')["metrics"] == {"b:rate5m"}


# ---- the files ---------------------------------------------------------------------------------------------------------------
def rule_exprs() -> dict:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def _all_panels(panels):
    for p in panels:
        yield p
        yield from _all_panels(p.get("panels", []))


def dashboard_exprs() -> dict:
    "{'panel title [refId]': expr} of every panel target, plus the variables' label_values queries."
    d = json.loads(DASHBOARD.read_text())
    out = {f"{p['title']} [{t['refId']}]": t["expr"] for p in _all_panels(d["panels"]) for t in p.get("targets", [])}
    for v in d["templating"]["list"]:
        if v["type"] == "query": out[f"variable {v['name']}"] = re.sub(r"label_values\((\w+),.*", r"\1", v["definition"])
    return out


def grafana_to_promql(expr:str) -> str:
    "A dashboard expression with Grafana's variables replaced, as Grafana would send it (all jobs, all models)."
    for var, val in {"$__rate_interval": "10s", "$__interval": "5s", "$__range": "1m", "${job}": ".+", "$job": ".+",
                     "${model}": ".+", "$model": ".+"}.items():
        expr = expr.replace(var, val)
    return expr


def test_dashboard_covers_serving_and_drift():
    d = json.loads(DASHBOARD.read_text())
    panels = [p for p in _all_panels(d["panels"]) if p["type"] != "row"]
    ids = [p["id"] for p in _all_panels(d["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    used = set().union(*(promql_names(e)["metrics"] for e in dashboard_exprs().values()))
    for name in ("mlkit_requests_total", "mlkit_request_latency_seconds_bucket", "mlkit_errors_total", "mlkit_predictions_total",
                 "mlkit_model_version", "mlkit_drift_distance", "mlkit_drift_psi", "mlkit_monitor_verdict"):
        assert name in used, f"the dashboard shows no {name}"
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        assert set(p["gridPos"]) == {"h", "w", "x", "y"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
    assert any("histogram_quantile(0.99" in e for e in dashboard_exprs().values())


@pytest.mark.slow
def test_promtool_checks_rules_config_and_dashboard_queries(tmp_path):
    promtool = need_binary("promtool", "prometheus")
    r = subprocess.run([promtool, "check", "rules", RULES], capture_output=True, text=True)
    assert r.returncode == 0 and f"SUCCESS: {len(rule_exprs())} rules found" in r.stdout, r.stdout + r.stderr
    # the dashboard's queries are valid PromQL: promtool parses them as recording rules
    rec = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": grafana_to_promql(e)}
                                                        for i, e in enumerate(dashboard_exprs().values())]}]}
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rec))
    r = subprocess.run([promtool, "check", "rules", tmp_path / "dashboard_rules.yml"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # the shipped scrape configuration, with its token file present
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["rule_files"] = [str(RULES)]
    for job in cfg["scrape_configs"]:
        if "authorization" in job: (tmp_path / "token").write_text("x"); job["authorization"]["credentials_file"] = str(tmp_path / "token")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([promtool, "check", "config", tmp_path / "prometheus.yml"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # and promtool does fail on a broken expression
    (tmp_path / "broken.yml").write_text("groups: [{name: x, rules: [{alert: X, expr: 'sum(rate(mlkit_requests_total[5m])'}]}]\n")
    assert subprocess.run([promtool, "check", "rules", tmp_path / "broken.yml"], capture_output=True).returncode != 0


# ---- the real thing ----------------------------------------------------------------------------------------------------------
def _query(http, port:int, q:str) -> list:
    r = http.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": q})
    body = r.json()
    assert body["status"] == "success", f"{q}: {body}"
    return body["data"]["result"]


def _exposed(text:str) -> dict:
    "{sample name: label names} of a Prometheus text exposition."
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples: out.setdefault(s.name, set()).update(s.labels)
    return out


def _invocation(batch, token=None, **kw):
    body = '{"dataframe_split": %s}' % batch.to_json(orient="split", index=False)
    return dict(headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}, content=body, **kw)


@pytest.fixture(scope="module")
def stack(trained_store, tmp_path_factory):
    "A served model with real traffic (good and bad) and one hot reload, a Pushgateway holding a real monitoring run, Prometheus scraping both."
    import httpx, mlflow, pandas as pd
    from mlkit.alerts import push_monitoring
    prometheus, gateway = need_binary("prometheus", "prometheus"), need_binary("prometheus-pushgateway", "prometheus-pushgateway")
    d = tmp_path_factory.mktemp("prometheus")
    shutil.copy(trained_store["dir"] / "mlflow.db", d / "mlflow.db")       # a private copy: its alias moves
    store = {"dir": d, "uri": f"sqlite:///{d}/mlflow.db"}
    client = mlflow.MlflowClient(tracking_uri=store["uri"])
    client.set_registered_model_alias("credit", "champion", "1")
    token = secrets.token_hex(16)
    (d / "token").write_text(token)
    sp, gp, pp = free_port(), free_port(), free_port()
    procs = [start_serve(store, port=sp, log=d / "serve.log", token=token, extra=["--reload-interval", "1"]),
             start([gateway, f"--web.listen-address=127.0.0.1:{gp}"], log=d / "pushgateway.log")]
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(RULES)]
    for job in cfg["scrape_configs"]:
        if job["job_name"] == "mlkit-serve":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{sp}"]}]
            job["authorization"]["credentials_file"] = str(d / "token")
        else: job["static_configs"] = [{"targets": [f"127.0.0.1:{gp}"]}]
    (d / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    procs.append(start([prometheus, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{pp}"], log=d / "prometheus.log"))
    http = httpx.Client(timeout=10)
    try:
        # a real monitoring run (shifted applicants: an alert), meanwhile the servers start
        run_mlkit("demo-data", "shifted.csv", "--rows", 600, "--seed", 7, "--shift", "covariate", cwd=d, check=True)
        mon = run_mlkit("monitor", "-p", ROOT / "params" / "monitor.yaml", "--model", "models:/credit/1", "--input", "shifted.csv",
                        "--set", "plots=false", cwd=d, env={"MLFLOW_TRACKING_URI": store["uri"]})
        assert mon.returncode == 3, mon.stdout + mon.stderr
        run_id = re.search(r"monitor run (\w+)", mon.stdout).group(1)
        payload = json.loads(Path(client.download_artifacts(run_id, "monitor/verdict.json", str(d))).read_text())
        table = pd.DataFrame(payload["tests"])
        for what, port, path in (("serve", sp, "/ready"), ("pushgateway", gp, "/-/ready"), ("prometheus", pp, "/-/ready")):
            wait_for(lambda: http.get(f"http://127.0.0.1:{port}{path}").status_code == 200, timeout=120, what=f"{what} {path}")
        pushed = push_monitoring(f"http://127.0.0.1:{gp}", table, model_name="credit", model_version="1", verdict=payload["verdict"],
                                 n_rows=payload["n_rows"])
        # traffic: good requests, then one of each bad kind, so the error series exist
        batch = pd.read_csv(d / "shifted.csv").drop(columns=["application_date", "default"])
        url = f"http://127.0.0.1:{sp}"
        for i in range(0, 80, 4): http.post(f"{url}/invocations", **_invocation(batch[i:i + 4], token)).raise_for_status()
        bad = {"unauthorized": http.post(f"{url}/invocations", **_invocation(batch[:2])),
               "missing column": http.post(f"{url}/invocations", **_invocation(batch[:2].drop(columns=["age"]), token)),
               "wrong type": http.post(f"{url}/invocations", **_invocation(batch[:2].assign(age="old"), token)),
               "malformed JSON": http.post(f"{url}/invocations", headers={"Authorization": f"Bearer {token}",
                                           "Content-Type": "application/json"}, content=b'{"dataframe_split": '),
               "too large": http.post(f"{url}/invocations", headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                                      content=b" " * (1 << 21))}
        assert all(400 <= r.status_code < 500 for r in bad.values()), {k: (r.status_code, r.text[:200]) for k, r in bad.items()}
        # a hot reload: a new version becomes champion
        v1 = client.get_model_version("credit", "1")
        prev = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(store["uri"])            # MLflow resolves the version's source through the default store
        try: v2 = client.create_model_version("credit", v1.source, run_id=v1.run_id)
        finally: mlflow.set_tracking_uri(prev)
        client.set_registered_model_alias("credit", "champion", str(v2.version))
        v2 = str(v2.version)                              # MLflow 3 returns the version as an int; mlkit's answers carry a str
        wait_for(lambda: http.get(f"{url}/ready").json()["model_version"] == v2, timeout=60, what="the hot reload to v2")
        http.post(f"{url}/invocations", **_invocation(batch[:4], token)).raise_for_status()
        yield {"http": http, "serve": sp, "gateway": gp, "prometheus": pp, "token": token, "payload": payload, "table": table,
               "pushed": pushed, "bad": bad, "v2": v2, "dir": d}
    finally:
        for p in procs: stop(p)
        http.close()


@pytest.mark.slow
def test_every_metric_name_is_exposed(stack):
    http = stack["http"]
    serve = http.get(f"http://127.0.0.1:{stack['serve']}/metrics", headers={"Authorization": f"Bearer {stack['token']}"})
    assert serve.status_code == 200
    exposed = _exposed(serve.text) | _exposed(http.get(f"http://127.0.0.1:{stack['gateway']}/metrics").text)
    missing, bad_labels = {}, {}
    for where, exprs in (("alerts.yml", rule_exprs()), ("dashboard", dashboard_exprs())):
        for name, expr in exprs.items():
            used = promql_names(expr)
            for m in used["metrics"] - PROMETHEUS_OWN - set(exposed): missing.setdefault(f"{where}: {name}", []).append(m)
            for m, labels in used["selectors"].items():
                if m in exposed and (extra := labels - exposed[m] - TARGET_LABELS): bad_labels[f"{where}: {name} {m}"] = extra
            known = set().union(*(exposed.get(m, set()) for m in used["metrics"])) | TARGET_LABELS
            if (extra := used["grouping"] - known): bad_labels[f"{where}: {name} (grouping)"] = extra
    assert not missing, f"metric names mlkit does not expose: {missing}"
    assert not bad_labels, f"label names the metrics do not have: {bad_labels}"


@pytest.mark.slow
def test_prometheus_scrapes_serve_and_gateway(stack):
    http, pp, payload, table = stack["http"], stack["prometheus"], stack["payload"], stack["table"]
    q = lambda e: _query(http, pp, e)
    # the shipped scrape configuration authenticates (up == 1 needs the bearer token: /metrics answers 401 without it)
    wait_for(lambda: q('up{job="mlkit-serve"} == 1') and q('up{job="mlkit-pushgateway"} == 1'), timeout=60, what="both targets up")
    wait_for(lambda: q(f'mlkit_model_version{{job="mlkit-serve"}} == {stack["v2"]}'), timeout=60, what="the reloaded version in Prometheus")
    ok = wait_for(lambda: q('sum(mlkit_requests_total{job="mlkit-serve", endpoint="/invocations", status="200"}) >= 21'), timeout=60,
                  what="the scoring requests")
    assert float(ok[0]["value"][1]) >= 21
    kinds = {r["metric"]["kind"] for r in wait_for(lambda: q('mlkit_errors_total{job="mlkit-serve"} > 0'), what="error series")}
    assert "unauthorized" in kinds and len(kinds) >= 3, kinds
    assert q('sum(mlkit_model_reloads_total{result="ok"}) >= 1')
    # the pushed monitoring run, with the push's own labels (honor_labels keeps job and model)
    verdict = wait_for(lambda: q('mlkit_monitor_verdict{job="mlkit_monitor", model="credit"} == 1'), what="the pushed verdict")
    assert [r["metric"]["verdict"] for r in verdict] == [payload["verdict"]] == ["alert"]
    assert float(q('mlkit_monitor_rows{model="credit"}')[0]["value"][1]) == payload["n_rows"]
    got = {(r["metric"]["feature"], r["metric"]["test"]): float(r["value"][1]) for r in q('mlkit_drift_distance{model="credit"}')}
    want = {(t.feature, t.test): t.distance for t in table.itertuples() if t.distance is not None and math.isfinite(t.distance)}
    assert got.keys() == want.keys() and all(math.isclose(got[k], want[k], rel_tol=1e-9) for k in want)
    alerted = {r["metric"]["feature"] for r in q('mlkit_drift_alert{model="credit"} == 1')}
    assert alerted == set(payload["alerts"]) and alerted


@pytest.mark.slow
def test_every_dashboard_query_returns_data(stack):
    http, pp = stack["http"], stack["prometheus"]
    exprs = {k: grafana_to_promql(e) for k, e in dashboard_exprs().items()}
    empty = lambda: {k for k, e in exprs.items() if not _query(http, pp, e)}
    try: wait_for(lambda: not empty(), timeout=90, what="data in every panel")
    except AssertionError: pytest.fail(f"dashboard queries with no data: {sorted(empty())}")


@pytest.mark.slow
def test_alert_rules_load_and_drift_alert_fires(stack):
    http, pp, payload = stack["http"], stack["prometheus"], stack["payload"]
    def rules():
        groups = http.get(f"http://127.0.0.1:{pp}/api/v1/rules").json()["data"]["groups"]
        rs = [r for g in groups for r in g["rules"]]
        return rs if len(rs) == len(rule_exprs()) and all(r.get("lastEvaluation", "").startswith("20") for r in rs) else None
    rs = wait_for(rules, what="every rule evaluated")
    assert {r["name"] for r in rs} == set(rule_exprs())
    assert all(r["health"] == "ok" for r in rs), [(r["name"], r.get("lastError")) for r in rs if r["health"] != "ok"]
    def firing():
        alerts = http.get(f"http://127.0.0.1:{pp}/api/v1/alerts").json()["data"]["alerts"]
        return [a for a in alerts if a["state"] == "firing"]
    wait_for(lambda: any(a["labels"]["alertname"] == "MlkitDriftAlert" for a in firing()), what="MlkitDriftAlert firing")
    fired = firing()
    assert {a["labels"]["feature"] for a in fired if a["labels"]["alertname"] == "MlkitFeatureDrift"} == set(payload["alerts"])
    assert all(a["labels"]["model"] == "credit" for a in fired if a["labels"]["alertname"].startswith("MlkitDrift"))
    assert not any(a["labels"]["alertname"] in ("MlkitServeDown", "MlkitMonitoringStale") for a in fired)
