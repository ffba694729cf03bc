"""Models mlkit did not write, treated like its own (issue 9): a research notebook nobody wrote for mlkit, with a transformer from
the user's own package, and a LightGBM estimator named by import path — each run, gated, served over HTTP, batch-scored and
monitored with the real CLI on a temporary store, and refused by every command, with one line naming the class and the setting,
where its module is not declared trusted.

The user's package (`shoppkg`) is put on PYTHONPATH rather than installed editable into a venv: what matters to mlkit is that every
process that loads the model (the notebook's kernel, `serve`, `score`, `promote`, `monitor`) can import `shoppkg.features` by that
name, and all of them inherit PYTHONPATH exactly as they would inherit the `.pth` entry of `pip install -e`. An editable install
would change the shared test venv for every other test (or cost a fresh ~1 GB venv per session); the installed path is covered by
test_new.py, which builds a project with `mlkit new`, installs it with `pip install -e .` in a fresh venv and serves it."""
from __future__ import annotations
import json, os, re, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import mlkit_cmd
from ops_tools import stop
from servers import free_port, wait_until

CLASS = "shoppkg.features.LoanToIncome"
SETTING = "declare `shoppkg` in trusted_modules of settings.ini, $MLKIT_TRUSTED_MODULES or --trust shoppkg"
LGBM_TYPES = {"collections.OrderedDict", "lightgbm.basic.Booster", "lightgbm.sklearn.LGBMClassifier"}
ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------------------- the user's own code
FEATURES = '''\
"Feature engineering of the shop team: nothing here knows mlkit."
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin


class LoanToIncome(TransformerMixin, BaseEstimator):
    "Adds `loan_to_income` = loan / income (income floored at `floor`; missing ratios get the training median)."

    def __init__(self, floor=1000.0):
        self.floor = floor

    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        self.median_ = float(np.nanmedian(X["loan_amount"] / np.maximum(X["income"], self.floor)))
        return self

    def transform(self, X):
        X = pd.DataFrame(X).copy()
        X["loan_to_income"] = (X["loan_amount"] / np.maximum(X["income"], self.floor)).fillna(self.median_)
        return X
'''

CELLS = [
    ("markdown", "# Default risk: research\nA notebook of the shop team; it knows scikit-learn, MLflow and one call of mlkit."),
    ("parameters", "data_path = 'customers.csv'\nC = 1.0\ntest_size = 0.25\nseed = 0"),
    ("code", """\
import pandas as pd, mlflow, matplotlib.pyplot as plt
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from shoppkg.features import LoanToIncome
import mlkit"""),
    ("code", """\
df = pd.read_csv(data_path)
X, y = df.drop(columns=['default', 'id', 'application_date']), df['default']
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)"""),
    ("code", """\
num = ['age', 'income', 'debt_ratio', 'loan_amount', 'credit_history_months', 'n_open_accounts', 'loan_to_income']
cat = ['employment', 'housing', 'purpose', 'region', 'sex']
pre = ColumnTransformer([('num', make_pipeline(SimpleImputer(), StandardScaler()), num),
                         ('cat', make_pipeline(SimpleImputer(strategy='most_frequent'), OneHotEncoder(handle_unknown='ignore')), cat)])
model = Pipeline([('ratio', LoanToIncome()), ('pre', pre),
                  ('clf', LogisticRegression(C=C, class_weight='balanced', max_iter=1000))]).fit(X_train, y_train)
mlflow.log_metric('research_auc', roc_auc_score(y_test, model.predict_proba(X_test)[:, 1]))
mlflow.log_metric('n_train', len(X_train))"""),
    ("code", """\
fig, ax = plt.subplots(figsize=(4, 3))
ax.hist(model.predict_proba(X_test)[:, 1], bins=20); ax.set_title('predicted default risk')
plt.show()"""),
    ("code", """\
info = mlkit.log_model(model, X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test, model_name='shop', sensitive=['sex'])
info.registered_version"""),
]


def write_research_notebook(path:Path) -> Path:
    "The research notebook, saved without kernelspec metadata as plain notebooks often are."
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata = {}
    for kind, src in CELLS:
        if kind == "markdown": nb.cells.append(nbformat.v4.new_markdown_cell(src))
        else: nb.cells.append(nbformat.v4.new_code_cell(src, metadata={"tags": ["parameters"]} if kind == "parameters" else {}))
    nbformat.write(nb, str(path))
    return path


def write_package(lib:Path) -> Path:
    (lib / "shoppkg").mkdir(parents=True)
    (lib / "shoppkg" / "__init__.py").write_text('"The shop team\'s own helpers."\n')
    (lib / "shoppkg" / "features.py").write_text(FEATURES)
    return lib


def clean_env(**extra) -> dict:
    "This environment without a trust declaration of its own (the tests decide it), one native thread, plus `extra`."
    env = {k: v for k, v in os.environ.items() if k != "MLKIT_TRUSTED_MODULES"}
    return {**env, "OMP_NUM_THREADS": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", **extra}


def cli(*args, cwd, env, timeout=600) -> subprocess.CompletedProcess:
    "The `mlkit` command with `args`, in `cwd`, with exactly the environment `env`."
    return subprocess.run(mlkit_cmd(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def refusal(r:subprocess.CompletedProcess) -> str:
    "The one `error:` line of a refused command (AssertionError when there is not exactly one)."
    lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return lines[0]


def assert_refused_for(r, names, setting):
    line = refusal(r)
    assert r.returncode != 0 and all(n in line for n in names) and setting in line, line


def records(df:pd.DataFrame) -> list[dict]:
    return json.loads(df.to_json(orient="records"))


def start_serve(model:str, *extra, cwd, env, log:Path) -> tuple[subprocess.Popen, str]:
    "`mlkit serve` on a free loopback port, once /ready answers (a condition, never a fixed wait)."
    import httpx
    port = free_port()
    proc = subprocess.Popen(mlkit_cmd("serve", "--model", model, "--port", port, "--log-dir", "none", *extra), cwd=cwd, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try: wait_until(lambda: httpx.get(url + "/ready", timeout=2).status_code == 200, timeout=240, what="mlkit serve", proc=proc, log=log)
    except BaseException: stop(proc); raise
    return proc, url


# ------------------------------------------------------------------------------------------------------- quick, in process
@pytest.fixture
def shoppkg_on_path(tmp_path, monkeypatch):
    "The user's package importable in this process (as PYTHONPATH makes it in the subprocesses)."
    lib = write_package(tmp_path / "lib")
    monkeypatch.syspath_prepend(str(lib))
    monkeypatch.delenv("MLKIT_TRUSTED_MODULES", raising=False)
    yield lib
    for m in [m for m in sys.modules if m == "shoppkg" or m.startswith("shoppkg.")]: del sys.modules[m]


def _shop_model(n_rows=900, seed=0):
    "The research notebook's pipeline, fitted here, with its split."
    from mlkit.data import make_credit_data
    from sklearn.model_selection import train_test_split
    ns = {}
    exec(CELLS[2][1].replace("import mlkit", ""), ns)
    df = make_credit_data(n_rows, seed=seed)
    ns.update(df=df, C=1.0, test_size=0.3, seed=seed, data_path=None, mlflow=None)
    X, y = df.drop(columns=["default", "id", "application_date"]), df["default"]
    ns.update(zip(["X_train", "X_test", "y_train", "y_test"], train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y)))
    exec(CELLS[4][1].split("\nmlflow.log_metric")[0], ns)
    return ns["model"], ns["X_train"], ns["X_test"], ns["y_train"], ns["y_test"]


def test_a_model_with_the_users_own_class_is_checked_by_the_declaration_of_the_side_that_loads_it(shoppkg_on_path, tmp_path):
    from mlkit.core import ModelError
    from mlkit.trust import check_model, read_trusted_modules
    model = _shop_model()[0]
    types = check_model(model, trusted_modules=["shoppkg"])
    assert CLASS in types and [t for t in types if t.startswith("shoppkg")] == [CLASS]
    expected = ("the model holds 1 type(s) mlkit will not load (no trusted modules declared here): "
                f"{CLASS} — from a module this side does not trust: {SETTING}")
    with pytest.raises(ModelError, match=f"^{re.escape(expected)}$"): check_model(model, trusted_modules=[])
    (tmp_path / "proj").mkdir(); (tmp_path / "proj" / "settings.ini").write_text("[DEFAULT]\ntrusted_modules = shoppkg\n")
    assert read_trusted_modules(cwd=tmp_path / "proj") == ("shoppkg",)
    # the same class written in the notebook itself (module __main__) can never load anywhere: the message says where to put it
    ns = {"__name__": "__main__"}
    exec(FEATURES, ns)
    with pytest.raises(ModelError, match=r"__main__.LoanToIncome — defined in the notebook or script itself, not in a module.*move"):
        check_model(ns["LoanToIncome"]().fit(_shop_model(300)[1]), trusted_modules=["shoppkg"])


@pytest.mark.slow
def test_a_notebook_model_is_gated_on_its_frozen_holdout_in_process(shoppkg_on_path, tmp_mlflow, monkeypatch):
    "mlkit.log_model in a plain run (no data recipe) → the gate re-scores the rows it froze, with fairness slices by `sensitive`."
    import mlflow, mlkit
    from mlkit.gate import format_verdict
    from mlkit.rescore import evaluate_gate
    model, X_train, X_test, y_train, y_test = _shop_model()
    monkeypatch.setenv("MLKIT_TRUSTED_MODULES", "shoppkg")
    info = mlkit.log_model(model, X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test, model_name="shop",
                           sensitive="sex", evaluate={"explain": False, "plots": False})
    run_id = mlflow.active_run().info.run_id
    mlflow.end_run()
    v = evaluate_gate("shop", info.registered_version)
    tags = mlflow.get_run(run_id).data.tags
    assert (v.eval["fingerprint"], v.eval["rows"], v.eval["source"]) == (tags["mlkit.eval_fingerprint"], len(X_test),
                                                                         f"runs:/{run_id}/eval/holdout.parquet")
    assert [c["check"] for c in v.checks] == ["baseline", "baseline", "fairness"] and v.passed, v.table()
    assert list(v.fairness.group) == ["F", "M"]
    assert f"evaluation data: the frozen holdout of run {run_id} (eval/holdout.parquet, kept by mlkit.log_model)" in format_verdict(v)


def test_lightgbm_models_hold_exactly_the_types_its_trust_declaration_allows():
    "A fitted LightGBM pipeline's skops file holds three types beyond mlkit's list; declaring `lightgbm` allows those, nothing more."
    import numpy as np, skops.io as sio
    from mlkit.core import ModelError
    from mlkit.checks import infer_schema
    from mlkit.data import make_credit_data
    from mlkit.models import make_model
    from mlkit.trust import check_model_bytes, check_types, get_allowed_types
    df = make_credit_data(400, seed=0).drop(columns=["application_date"])
    spec = {"estimator": "lightgbm.LGBMClassifier", "hyperparams": {"n_estimators": 5, "verbose": -1}}
    model = make_model(infer_schema(df, target="default", id_column="id"), model=spec, seed=0)
    X = df.drop(columns=["default", "id"])
    model.fit(X, df["default"])
    data = sio.dumps(model)
    found = set(sio.get_untrusted_types(data=data))
    assert found - get_allowed_types() == LGBM_TYPES - {"collections.OrderedDict"}       # OrderedDict is on mlkit's own list
    assert LGBM_TYPES <= found and not any(n.startswith("lightgbm") for n in get_allowed_types())
    assert set(check_model_bytes(data, trusted_modules=["lightgbm"])) == found
    with pytest.raises(ModelError, match="lightgbm.basic.Booster, lightgbm.sklearn.LGBMClassifier — from a module this side does not "
                                         "trust: declare `lightgbm`"):
        check_model_bytes(data, trusted_modules=[])
    # declaring lightgbm allows its classes, never its functions, nor anything else that comes with it
    for name, why in [("lightgbm.train", "never functions"), ("lightgbm.basic._log_warning", "never functions"),
                      ("lightgbm.sklearn.LGBMClassifier.fit", "never methods"), ("lightgbm.sklearn.Booster", "defined in `lightgbm.basic`"),
                      ("collections.defaultdict", "part of Python itself"), ("pickle.loads", "part of Python itself")]:
        with pytest.raises(ModelError, match=why): check_types([name], trusted_modules=["lightgbm"])
    loaded = sio.loads(data, trusted=check_model_bytes(data, trusted_modules=["lightgbm"]))
    assert np.array_equal(loaded.predict(X.head(20)), model.predict(X.head(20)))


# ---------------------------------------------------------------------- the research notebook, end to end (kernels, servers)
@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A project of the shop team — its package on PYTHONPATH, its notebook, data and `trusted_modules = shoppkg` in settings.ini,
    committed to git — and a folder outside it with no declaration; one store; the notebook run once with `mlkit run`."""
    from mlkit.data import make_credit_data
    base = tmp_path_factory.mktemp("own")
    proj, outside, store = base / "shop", base / "outside", base / "store"
    for d in (proj, outside, store): d.mkdir()
    lib = write_package(proj / "lib")
    write_research_notebook(proj / "research.ipynb")
    make_credit_data(1200, seed=0).to_csv(proj / "customers.csv", index=False)
    (proj / "settings.ini").write_text("[DEFAULT]\n# the modules whose classes our models may hold\ntrusted_modules = shoppkg\n")
    (proj / ".gitignore").write_text("mlruns/\n__pycache__/\n*.db\nscored*\n")
    git = dict(cwd=proj, check=True, capture_output=True)
    subprocess.run(["git", "init", "-q"], **git)
    subprocess.run(["git", "add", "."], **git)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "research"], **git)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], **git, text=True).stdout.strip()
    env = clean_env(PYTHONPATH=os.pathsep.join([str(lib), *filter(None, [os.environ.get("PYTHONPATH")])]),
                    MLFLOW_TRACKING_URI=f"sqlite:///{store}/mlflow.db")
    from mlkit.trust import read_trusted_modules
    assert read_trusted_modules(cwd=outside) == (), "a settings.ini above the temporary folder would declare modules"
    batch = make_credit_data(300, seed=5).drop(columns=["default"])
    batch.to_csv(proj / "batch.csv", index=False); batch.to_csv(outside / "batch.csv", index=False)
    run = cli("run", "research.ipynb", "--set", "C=0.5", cwd=proj, env=env)
    return {"proj": proj, "outside": outside, "env": env, "commit": commit, "run": run, "batch": batch,
            "run_id": next((l.split()[1] for l in run.stdout.splitlines() if l.startswith("run ")), None)}


@pytest.fixture(scope="module")
def shop_promoted(shop):
    "`mlkit promote shop` refused outside the project (no declaration), then run in it; the CompletedProcesses."
    refused = cli("promote", "shop", cwd=shop["outside"], env=shop["env"])
    promoted = cli("promote", "shop", cwd=shop["proj"], env=shop["env"])
    return {**shop, "promote_refused": refused, "promote": promoted}


@pytest.mark.slow
def test_mlkit_run_records_the_research_notebook_and_its_model(shop):
    import mlflow
    r = shop["run"]
    assert r.returncode == 0 and "registered: shop version 1" in r.stdout, r.stdout + r.stderr
    client = mlflow.MlflowClient(shop["env"]["MLFLOW_TRACKING_URI"])
    run = client.get_run(shop["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params == {"data_path": "customers.csv", "C": "0.5", "test_size": "0.25", "seed": "0"}
    assert {"research_auc", "n_train", "test_roc_auc", "test_balanced_accuracy"} <= set(run.data.metrics)
    t = run.data.tags
    assert (t["mlkit.git_commit"], t["mlkit.git_dirty"].lower(), t["mlkit.seed"]) == (shop["commit"], "false", "0")
    assert {"mlkit.params_hash", "mlkit.version", "mlkit.packages"} <= set(t)
    assert (t["mlkit.task"], t["mlkit.target"], t["mlkit.sensitive"], t["mlkit.eval_data"]) == ("binary", "default", "sex",
                                                                                               "eval/holdout.parquet")
    arts = lambda p: [a.path for a in client.list_artifacts(shop["run_id"], p)]
    assert len(arts("figures")) == 1 and "notebook/research.ipynb" in arts("notebook") and "eval/holdout.parquet" in arts("eval")
    assert "model_cards/shop-v1.md" in arts("model_cards")


@pytest.mark.slow
def test_mlkit_run_refuses_the_model_where_shoppkg_is_not_declared(shop):
    r = cli("run", shop["proj"] / "research.ipynb", "--set", f"data_path={shop['proj'] / 'customers.csv'}", "--set", "seed=1",
              cwd=shop["outside"], env=shop["env"])
    assert r.returncode == 1
    assert_refused_for(r, [CLASS, "raised ModelError"], SETTING)


@pytest.mark.slow
def test_mlkit_promote_gates_the_notebook_model_on_its_frozen_holdout(shop_promoted):
    s = shop_promoted
    assert_refused_for(s["promote_refused"], [CLASS], SETTING)
    p = s["promote"]
    assert p.returncode == 0 and "PROMOTED: shop champion (none) → v1" in p.stdout, p.stdout + p.stderr
    assert f"evaluation data: the frozen holdout of run {s['run_id']} (eval/holdout.parquet, kept by mlkit.log_model) rows=300" \
        in p.stdout, p.stdout
    assert "fairness: selection_rate gap ≤ 0.1 by sex" in p.stdout and "fairness selection_rate gap by sex" in p.stdout, p.stdout
    import mlflow
    h = cli("history", "shop", cwd=s["outside"], env=s["env"])
    assert h.returncode == 0 and "promote" in h.stdout, h.stdout + h.stderr
    mv = mlflow.MlflowClient(s["env"]["MLFLOW_TRACKING_URI"]).get_model_version_by_alias("shop", "champion")
    assert str(mv.version) == "1"


@pytest.mark.slow
def test_mlkit_serve_answers_with_the_custom_transformer_loaded_by_its_declared_module(shop_promoted, tmp_path, monkeypatch):
    s, model = shop_promoted, "models:/shop@champion"
    r = cli("serve", "--model", model, "--port", free_port(), "--log-dir", "none", cwd=s["outside"], env=s["env"], timeout=120)
    assert r.returncode == 2
    assert_refused_for(r, [CLASS, f"model '{model}'"], SETTING)
    proc, url = start_serve(model, "--trust", "shoppkg", cwd=s["outside"], env=s["env"], log=tmp_path / "serve.log")
    try:
        import httpx
        rows = s["batch"].head(5)
        inv = httpx.post(url + "/invocations", json={"dataframe_records": records(rows)}, timeout=30)
        pred = httpx.post(url + "/predict", json={"records": records(rows.drop(columns=["id", "application_date"]))}, timeout=30)
        meta = httpx.get(url + "/metadata", timeout=10).json()
    finally: stop(proc)
    assert inv.status_code == 200 and pred.status_code == 200, (inv.text, pred.text)
    # the very pipeline the notebook fitted, loaded here by the same declaration
    monkeypatch.syspath_prepend(str(s["proj"] / "lib"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s["env"]["MLFLOW_TRACKING_URI"])
    import mlkit as api, mlflow
    mlflow.set_tracking_uri(s["env"]["MLFLOW_TRACKING_URI"])
    pipe = api.load_model(model, trusted_modules=["shoppkg"])
    assert type(pipe.steps[0][1]).__module__ + "." + type(pipe.steps[0][1]).__name__ == CLASS
    expected = pipe.predict(rows.drop(columns=["id", "application_date"])).tolist()
    assert inv.json()["predictions"] == expected and pred.json()["predictions"] == expected
    assert len(pred.json()["probabilities"]) == 5 and (meta["name"], meta["version"]) == ("shop", "1")
    assert "loan_to_income" not in meta["inputs"] and "sex" in meta["inputs"]      # made by the transformer, not sent


@pytest.mark.slow
def test_mlkit_score_scores_a_csv_with_the_custom_transformer(shop_promoted):
    s = shop_promoted
    r = cli("score", "--model", "models:/shop@champion", "--input", "batch.csv", "--output", "scored.csv", cwd=s["outside"],
              env=s["env"])
    assert r.returncode == 2 and not (s["outside"] / "scored.csv").exists()
    assert_refused_for(r, [CLASS], SETTING)
    r = cli("score", "--model", "models:/shop@champion", "--input", "batch.csv", "--output", "scored.csv", cwd=s["proj"],
              env=s["env"])       # the project's settings.ini declares shoppkg
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["rows"], summary["scored"], summary["rejected"], summary["model_name"]) == (300, 300, 0, "shop")
    out = pd.read_csv(s["proj"] / "scored.csv")
    assert len(out) == 300 and set(out.prediction) <= {0, 1} and {"proba_0", "proba_1"} <= set(out.columns)


@pytest.mark.slow
def test_mlkit_monitor_checks_a_batch_against_the_notebook_models_profile(shop_promoted):
    s = shop_promoted
    args = ("monitor", "--input", "batch.csv", "--model", "models:/shop@champion")
    r = cli(*args, cwd=s["outside"], env=s["env"])
    assert r.returncode == 2
    assert_refused_for(r, [CLASS], SETTING)
    r = cli(*args, cwd=s["proj"], env=s["env"])
    assert r.returncode in (0, 3) and "Traceback" not in r.stderr, r.stdout + r.stderr   # 0 healthy, 3 drift alert: both a verdict


# ------------------------------------------------------------------------------------ LightGBM by import path, end to end
@pytest.fixture(scope="module")
def lgbm(tmp_path_factory):
    "`mlkit run train` with model.estimator=lightgbm.LGBMClassifier in a folder whose process declares lightgbm by environment."
    d = tmp_path_factory.mktemp("lgbm")
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{d}/mlflow.db")
    args = ("run", "train", "-p", ROOT / "params" / "ci.yaml", "--set", "model.estimator=lightgbm.LGBMClassifier",
            "--set", "model.hyperparams={n_estimators: 30, verbose: -1}", "--set", "model_name=lgbm")
    return {"dir": d, "env": env, "args": args, "run": cli(*args, cwd=d, env={**env, "MLKIT_TRUSTED_MODULES": "lightgbm"})}


LGBM_SETTING = "declare `lightgbm` in trusted_modules of settings.ini, $MLKIT_TRUSTED_MODULES or --trust lightgbm"


@pytest.mark.slow
def test_lightgbm_by_import_path_is_refused_at_log_time_without_the_declaration(lgbm):
    r = cli(*lgbm["args"], "--force", cwd=lgbm["dir"], env=lgbm["env"])   # --force: not the trusted run of the same inputs, reused
    assert r.returncode == 1
    assert_refused_for(r, ["lightgbm.basic.Booster, lightgbm.sklearn.LGBMClassifier"], LGBM_SETTING)


@pytest.mark.slow
def test_lightgbm_by_import_path_trains_is_gated_and_served(lgbm, tmp_path):
    import httpx
    from mlkit.data import make_credit_data
    r, d, env = lgbm["run"], lgbm["dir"], lgbm["env"]
    assert r.returncode == 0 and "registered: lgbm version 1" in r.stdout, r.stdout + r.stderr
    refused = cli("promote", "lgbm", cwd=d, env=env)
    assert_refused_for(refused, ["lightgbm.basic.Booster"], LGBM_SETTING)
    trusted = {**env, "MLKIT_TRUSTED_MODULES": "lightgbm"}
    p = cli("promote", "lgbm", "--trust", "lightgbm", cwd=d, env=env)            # this command's own declaration
    assert p.returncode == 0 and "PROMOTED: lgbm champion (none) → v1" in p.stdout, p.stdout + p.stderr
    assert "evaluation data: mlkit:credit rows=300 seed=0 holdout" in p.stdout        # rebuilt from the run's data.* params
    s = cli("serve", "--model", "models:/lgbm@champion", "--port", free_port(), cwd=d, env=env, timeout=120)
    assert s.returncode == 2
    assert_refused_for(s, ["lightgbm.sklearn.LGBMClassifier"], LGBM_SETTING)
    proc, url = start_serve("models:/lgbm@champion", cwd=d, env=trusted, log=tmp_path / "serve.log")
    try:
        rows = make_credit_data(4, seed=9).drop(columns=["default"])
        inv = httpx.post(url + "/invocations", json={"dataframe_records": records(rows)}, timeout=30)
        meta = httpx.get(url + "/metadata", timeout=10).json()
    finally: stop(proc)
    assert inv.status_code == 200 and len(inv.json()["predictions"]) == 4 and set(inv.json()["predictions"]) <= {0, 1}, inv.text
    assert (meta["name"], meta["version"]) == ("lgbm", "1")
