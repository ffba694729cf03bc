"""No secret is ever printed, logged or stored. Three secrets are planted — the basic-auth password inside the tracking URI
(`http://dave:PASSWORD@127.0.0.1:PORT`), a PostgreSQL password inside `mlkit tune --storage`, and a token in the query string of
`mlkit monitor --webhook` (a real receiver on 127.0.0.1) — and real commands run against a real `mlflow server`. Then every byte
they printed, every MLflow param, tag, registry tag and description, and every artifact the server stored (executed notebooks
included) is searched for each secret, raw and percent-encoded.

Every secret is checked in every place it could land: printed, stored (params, tags, registry) and in artifacts."""
import http.server, json, os, threading
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from conftest import ROOT, run_mlkit

pytestmark = pytest.mark.slow
MODEL = "secret-credit"


class _Receiver(http.server.BaseHTTPRequestHandler):
    got = []
    def do_POST(self):
        self.got.append((self.path, self.rfile.read(int(self.headers.get("Content-Length") or 0))))
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass


@pytest.fixture(scope="module")
def webhook():
    "A real HTTP receiver on 127.0.0.1 that records what it is sent."
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()


@pytest.fixture(scope="module")
def evidence(mlflow_server, pg_server, webhook, tmp_path_factory):
    "Run train, tune, promote, monitor and a few failing commands with the secrets planted; collect everything they left."
    d = tmp_path_factory.mktemp("secrets")
    secrets = {"tracking": "Trk-" + os.urandom(8).hex(), "storage": "Pgs-" + os.urandom(8).hex(), "webhook": "Hook-" + os.urandom(8).hex()}
    mlflow_server.create_user("dave", secrets["tracking"])
    mlflow_server.grant("dave", "registered_model", MODEL, "MANAGE")
    pg_server.create_role("secret_optuna", secrets["storage"])
    pg_server.create_database("secret_optuna", owner="secret_optuna")
    uri = mlflow_server.uri.replace("http://", f"http://dave:{secrets['tracking']}@")
    env = {"MLFLOW_TRACKING_URI": uri, "MLKIT_USER": ""}
    storage = pg_server.url("secret_optuna", user="secret_optuna", password=secrets["storage"])
    hook = f"http://127.0.0.1:{webhook.server_address[1]}/alert?channel=ops&token={secrets['webhook']}"
    tune = d / "tune.yaml"
    tune.write_text(yaml.safe_dump({"experiment": "secrets-tune", "data": {"n_rows": 500, "id_column": "id", "drop_columns": ["application_date"]},
                                    "evaluate": {"cv_folds": 3, "plots": False, "explain": False},
                                    "search": {"n_trials": 2, "refit": False, "startup_trials": 1, "pruner": "none",
                                               "space": {"logistic_regression": {"C": {"type": "float", "low": 0.01, "high": 10, "log": True}}}}}))
    cmds = {"train": ("run", "train", "-p", ROOT / "params" / "ci.yaml", "--set", f"model_name={MODEL}", "--set", "experiment=secrets"),
            "promote": ("promote", MODEL, "--version", "1"),
            "tune": ("tune", "-p", tune, "--storage", storage),
            "demo-data": ("demo-data", d / "shifted.csv", "--rows", "400", "--shift", "covariate", "--strength", "3"),
            "monitor": ("monitor", "--model", f"models:/{MODEL}@champion", "--input", d / "shifted.csv", "--webhook", hook,
                        "--set", "experiment=secrets-monitor"),
            "unknown-model": ("promote", "no-such-model"),
            "bad-storage": ("tune", "-p", tune, "--storage", storage.replace(str(pg_server.port), "9")),
            "history": ("history", MODEL),
            "serve-unknown-model": ("serve", "--model", "models:/no-such-model@champion", "--port", "9")}
    # three independent chains at once (each command waits on the server or PostgreSQL much of the time): the model's life, the
    # search (the refused storage after it: both name experiment secrets-tune, which two processes must not create at once), and
    # the refusals of models that do not exist
    chains = [("train", "promote", "demo-data", "monitor", "history"), ("tune", "bad-storage"), ("unknown-model", "serve-unknown-model")]
    assert sorted(n for c in chains for n in c) == sorted(cmds)
    def run_chain(chain):
        return {name: run_mlkit(*cmds[name], cwd=d, env=env, timeout=900) for name in chain}
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(len(chains)) as pool:
        done = [r for results in pool.map(run_chain, chains) for r in results.items()]
    out = {name: {"code": r.returncode, "stdout": r.stdout, "stderr": r.stderr} for name, r in done}
    places = {f"{name}: {stream}": res[stream] for name, res in out.items() for stream in ("stdout", "stderr")}
    # everything MLflow keeps: params, tags (runs, registered models, versions), descriptions, and every stored artifact byte
    admin = mlflow_server.env(mlflow_server.admin[0])
    saved = {k: os.environ.get(k) for k in admin}
    os.environ.update(admin)
    try:
        from mlflow import MlflowClient
        c = MlflowClient(admin["MLFLOW_TRACKING_URI"])
        for exp in c.search_experiments():
            for run in c.search_runs([exp.experiment_id], max_results=1000):
                places[f"params of run {run.info.run_name} ({exp.name})"] = json.dumps(run.data.params)
                places[f"tags of run {run.info.run_name} ({exp.name})"] = json.dumps(run.data.tags)
        for m in c.search_registered_models():
            places[f"registered model {m.name}"] = json.dumps({"tags": m.tags, "description": m.description})
            for v in c.search_model_versions(f"name='{m.name}'"):
                places[f"{m.name} v{v.version}"] = json.dumps({"tags": v.tags, "description": v.description, "source": v.source})
    finally:
        for k, v in saved.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    for f in mlflow_server.artifacts.rglob("*"):
        if f.is_file(): places[f"artifact {f.relative_to(mlflow_server.artifacts)}"] = f.read_bytes().decode("utf-8", "replace")
    for f in d.rglob("*"):
        if f.is_file() and f.stat().st_size < 50_000_000: places[f"file {f.relative_to(d)}"] = f.read_bytes().decode("utf-8", "replace")
    return {"secrets": secrets, "out": out, "places": places, "received": list(_Receiver.got)}


def leaks(evidence, secret, where=lambda place: True):
    s = evidence["secrets"][secret]
    return sorted(p for p, text in evidence["places"].items() if where(p) and (s in text or quote(s, safe="") in text))


def test_the_commands_really_ran(evidence):
    codes = {k: v["code"] for k, v in evidence["out"].items()}
    assert codes["train"] == 0 and codes["promote"] == 0 and codes["tune"] == 0 and codes["monitor"] == 3, evidence["out"]
    assert codes["unknown-model"] == 2 and codes["bad-storage"] == 2 and codes["history"] == 0, codes
    assert codes["serve-unknown-model"] == 2, codes
    assert evidence["received"] and evidence["received"][0][0].startswith("/alert?channel=ops&token=")   # the webhook got the alert
    assert any(p.startswith("artifact ") and p.endswith(".ipynb") for p in evidence["places"])          # executed notebooks stored


WHERE = {"printed": lambda p: p.endswith(("stdout", "stderr")),
         "stored": lambda p: p.startswith(("params", "tags", "registered model", MODEL)),
         "artifacts": lambda p: p.startswith(("artifact", "file"))}
CASES = [(secret, where) for secret in ("tracking", "storage", "webhook") for where in WHERE]


@pytest.mark.parametrize("secret,where", CASES)
def test_no_secret_anywhere(evidence, secret, where):
    assert leaks(evidence, secret, WHERE[where]) == []
