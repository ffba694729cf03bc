"""Hostile model files and model URIs (issue 15, item 1; issue 9, item 3): no type or function in a model file runs unless the
*loading* side allows it, and models load only from inside the tracking store.

Every crafted model here is registered through plain MLflow (its folder logged as run artifacts, then `register_model`), so mlkit's
own log-time check never sees it. Each payload would write a marker file when it runs; the tests assert that no marker appears
and that the error names the refused type — under `mlkit serve`, `score`, `promote` and `monitor`, and through the loader itself."""
import io, json, os, re, shutil, socket, textwrap, zipfile
from pathlib import Path
from types import SimpleNamespace
import pytest, yaml
import skops.io as sio
from conftest import run_mlkit
from mlkit import trust, tracking
from mlkit.core import ConfigError, ModelError


# ---------------------------------------------------------------- crafted skops files
def _json(v): return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode", "content": json.dumps(v), "is_json": True}
def _node(v): return v if isinstance(v, dict) and "__loader__" in v else _json(v)
def _tuple(*items): return {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode", "content": [_node(i) for i in items]}
def call(module, name, *args):
    "A node that calls `module.name(*args)` when loaded."
    return {"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode", "content": _tuple(*args)}
def operator_call(*args):
    "A node that calls operator.call(*args), i.e. args[0](*args[1:])."
    return {"__class__": "call", "__module__": "operator", "__loader__": "OperatorFuncNode", "attrs": _tuple(*args)}
def instance(module, name):
    "A node that builds an instance of `module.name` and calls its __setstate__, the way a fitted custom transformer is stored."
    empty = {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode", "content": {},
             "key_types": {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode", "content": []}}
    return {"__class__": name, "__module__": module, "__loader__": "ObjectNode", "content": empty}

def skops_bytes(node) -> bytes:
    from skops.io._protocol import PROTOCOL
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z: z.writestr("schema.json", json.dumps({**node, "protocol": PROTOCOL}))
    return buf.getvalue()

def embedded(real:bytes, node) -> bytes:
    "The real model file `real` with `node` planted deep inside it (as the Pipeline's `memory` attribute)."
    z = zipfile.ZipFile(io.BytesIO(real))
    schema = json.loads(z.read("schema.json"))
    schema["content"]["content"]["memory"] = node
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for n in z.namelist(): out.writestr(n, json.dumps(schema) if n == "schema.json" else z.read(n))
    return buf.getvalue()

def write_code(m): return f"open({str(m)!r}, 'w').write('ran')"

# name -> (node writing marker m when run, the type the error must name, what the error must say about it)
PAYLOADS = {
    "exec": (lambda m: call("builtins", "exec", write_code(m)), "builtins.exec", "never loaded"),
    "eval": (lambda m: call("builtins", "eval", write_code(m)), "builtins.eval", "never loaded"),
    "import": (lambda m: operator_call(call("builtins", "getattr", call("builtins", "__import__", "os"), "system"), f"touch {m}"),
               "builtins.__import__", "never loaded"),
    "system": (lambda m: call("os", "system", f"touch {m}"), "os.system", "never loaded"),
    "savetxt": (lambda m: call("numpy", "savetxt", str(m), [1.0]), "numpy.savetxt", "not on mlkit's reviewed list"),
    "memmap": (lambda m: call("numpy", "memmap", str(m), "uint8", "w+", 0, [1]), "numpy.memmap", "not on mlkit's reviewed list"),
    "savemat": (lambda m: call("scipy.io", "savemat", str(m) + ".mat", {}), "scipy.io.savemat", "not on mlkit's reviewed list"),
    "user-class": (lambda m: instance("evilpkg.core", "Boom"), "evilpkg.core.Boom",
                   "declare `evilpkg` in trusted_modules of settings.ini, $MLKIT_TRUSTED_MODULES or --trust evilpkg"),
    "user-function": (lambda m: call("evilpkg.core", "boom", str(m)), "evilpkg.core.boom", "only classes of trusted modules are loaded"),
}
DECLARED = {"user-function": "evilpkg"}  # payloads tried on a side that does trust their module (still refused: a function)

def write_packages(lib:Path, markers:Path) -> None:
    "evilpkg: a hostile package (its import, its class and its function each leave a marker); secshoppkg: an honest custom transformer."
    for pkg in ("evilpkg", "secshoppkg"): (lib / pkg).mkdir(parents=True, exist_ok=True)
    (lib / "evilpkg" / "__init__.py").write_text(f"open({str(markers / 'imported')!r}, 'w').close()\n")
    (lib / "evilpkg" / "core.py").write_text(textwrap.dedent(f"""\
        from pathlib import Path
        class Boom:
            def __init__(self, *a): Path({str(markers / 'user-class')!r}).write_text("ran")
            def __setstate__(self, state): Path({str(markers / 'user-class')!r}).write_text("ran")
        def boom(path): Path(path).write_text("ran")
        """))
    (lib / "secshoppkg" / "__init__.py").write_text("")
    (lib / "secshoppkg" / "features.py").write_text(textwrap.dedent("""\
        import numpy as np
        from sklearn.base import BaseEstimator, TransformerMixin
        class LogIncome(TransformerMixin, BaseEstimator):
            "log1p of the income column, the rest unchanged."
            def fit(self, X, y=None): return self
            def transform(self, X):
                X = X.copy(); X["income"] = np.log1p(X["income"].clip(lower=0)); return X
        def clean(X): return X
        """))


# ---------------------------------------------------------------- a store with one real model and the crafted ones
def credit_frames(n=600, seed=0):
    from mlkit import data as md
    df = md.make_credit_data(n, seed=seed).drop(columns=["application_date"])
    return df.drop(columns=["default"]), df["default"]

def fit_model(X, y, estimator="hist_gradient_boosting", hyperparams=None, task="binary", before=()):
    from sklearn.pipeline import Pipeline
    from mlkit import checks, data as md, models
    schema = checks.infer_schema(X.assign(_y=y.values), target="_y")
    schema["task"] = task
    model = models.make_model(schema, task=task, model={"estimator": estimator, "hyperparams": hyperparams or {}}, seed=0)
    if before: model = Pipeline([*before, *model.steps])
    return model.fit(X, y), schema

def log_real(name:str, model, schema, X, y, declared=None):
    "Log `model` the way the train pipeline does (metrics, reference profile, registered as `name`), with `declared` trusted modules."
    from mlkit import training
    with pytest.MonkeyPatch.context() as mp:
        if declared is not None: mp.setenv("MLKIT_TRUSTED_MODULES", ",".join(declared))
        with tracking.start_run(pipeline="security-test", experiment="security"):
            out = training.log_fitted_model(model, X_train=X, y_train=y, X_test=X, y_test=y, schema=schema, task="binary",
                                            evaluate=SimpleNamespace(plots=False, explain=False), primary="roc_auc", model_name=name)
    return out.registered_version

def log_crafted(folder:Path, name:str, *, extra=None):
    "Register `folder` as version of model `name` through plain MLflow (log_artifacts + register_model): no mlkit check runs."
    import mlflow
    with mlflow.start_run(experiment_id=tracking.ensure_experiment("crafted")) as run:   # not set_experiment: process-wide
        mlflow.log_artifacts(str(folder), "model")
        for f in extra or (): mlflow.log_artifact(str(f))
    mlflow.register_model(f"runs:/{run.info.run_id}/model", name)
    return run.info.run_id

def crafted_folder(template:Path, dst:Path, skops:bytes, pickled_model=None) -> Path:
    shutil.copytree(template, dst)
    (dst / "model.skops").write_bytes(skops)
    if pickled_model:
        conf = yaml.safe_load((dst / "MLmodel").read_text())
        conf["flavors"]["sklearn"]["pickled_model"] = pickled_model
        (dst / "MLmodel").write_text(yaml.safe_dump(conf))
    return dst


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("security")
    markers, lib = d / "markers", d / "lib"
    markers.mkdir(); write_packages(lib, markers)
    uri = f"sqlite:///{d}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d); mp.setenv("MLFLOW_TRACKING_URI", uri); mp.delenv("MLKIT_TRUSTED_MODULES", raising=False)
        mp.syspath_prepend(str(lib))
        import mlflow
        mlflow.set_tracking_uri(uri)
        X, y = credit_frames()
        model, schema = fit_model(X, y, hyperparams={"max_iter": 10})
        log_real("credit", model, schema, X, y)
        template = Path(mlflow.artifacts.download_artifacts("models:/credit/1", dst_path=str(d / "template")))
        real = (template / "model.skops").read_bytes()
        for name, (node, *_) in PAYLOADS.items():
            log_crafted(crafted_folder(template, d / "crafted" / name, skops_bytes(node(markers / name))), f"evil-{name}")
        evil = d / "evil.skops"; evil.write_bytes(skops_bytes(PAYLOADS["exec"][0](markers / "escape")))
        log_crafted(crafted_folder(template, d / "crafted" / "dotdot", real, "../evil.skops"), "evil-dotdot", extra=[evil])
        log_crafted(crafted_folder(template, d / "crafted" / "absolute", real, str(evil)), "evil-absolute")
        outside = crafted_folder(template, d / "outside" / "model", skops_bytes(PAYLOADS["exec"][0](markers / "outside")))
        run_id = log_crafted(crafted_folder(template, d / "crafted" / "forged", real), "evil-forged")
        client = mlflow.MlflowClient()
        client.create_model_version("evil-forged", source=str(outside), run_id=run_id)   # v2: files outside its run
        artifacts = Path(client.get_run(run_id).info.artifact_uri)
        batch = d / "batch.csv"; credit_frames(300, seed=1)[0].to_csv(batch, index=False)
        yield SimpleNamespace(dir=d, uri=uri, markers=markers, lib=lib, template=template, real=real, outside=outside, batch=batch,
                              escape=f"runs:/{run_id}/{os.path.relpath(outside, artifacts)}", model=model, X=X, y=y, schema=schema,
                              env={"MLFLOW_TRACKING_URI": uri, "PYTHONPATH": os.pathsep.join([str(lib), os.environ.get("PYTHONPATH", "")])})

def ran(store) -> list[str]:
    "Markers left by payloads that ran (the declared-module import marker aside)."
    return sorted(p.name for p in store.markers.iterdir() if p.name != "imported")

def check_import_marker(store, name:str) -> None:
    "An undeclared module named in a file is never imported; a declared one is (its marker is then expected, and cleared)."
    if name in DECLARED: (store.markers / "imported").unlink(missing_ok=True)
    else: assert not (store.markers / "imported").exists(), "an undeclared module named in a model file was imported"


# ---------------------------------------------------------------- the loader, called directly (quick)
@pytest.mark.parametrize("name", PAYLOADS)
def test_a_crafted_file_is_refused_before_anything_runs(store, name, tmp_path):
    node, refused, why = PAYLOADS[name]
    declared = [DECLARED[name]] if name in DECLARED else []
    for data in (skops_bytes(node(store.markers / name)), embedded(store.real, node(store.markers / name))):
        (tmp_path / "m.skops").write_bytes(data)
        with pytest.raises(ModelError) as e: trust.load_skops(tmp_path / "m.skops", trusted_modules=declared)
        assert refused in str(e.value) and why in str(e.value)
    with pytest.raises(ModelError) as e:
        tracking.load_sklearn_model(f"models:/evil-{name}/1", **({"trusted_modules": declared} if declared else {}))
    assert refused in str(e.value) and why in str(e.value)
    assert ran(store) == []
    check_import_marker(store, name)


@pytest.mark.parametrize("uri,message", [
    ("models:/evil-dotdot/1", "names its model file '../evil.skops'; expected a plain file name"),
    ("models:/evil-absolute/1", "expected a plain file name inside the model folder"),
    ("models:/evil-forged/2", "are outside the artifacts of their run"),
    ("ESCAPE", "is not a safe run artifact URI"),
    ("OUTSIDE", "never from a folder"),
])
def test_a_model_loads_only_from_inside_the_store(store, uri, message):
    uri = {"ESCAPE": store.escape, "OUTSIDE": str(store.outside)}.get(uri, uri)
    with pytest.raises(ModelError, match=re.escape(message)): tracking.load_sklearn_model(uri)
    assert ran(store) == []
    if not uri.startswith("models:/"):
        with pytest.raises(ModelError, match=re.escape(message)): tracking.load_model_meta(uri)


def test_the_real_model_still_loads(store):
    loaded = tracking.load_sklearn_model("models:/credit/1")
    assert loaded.predict(store.X.head(50)).tolist() == store.model.predict(store.X.head(50)).tolist()
    assert tracking.load_model_meta("models:/credit/1")["trusted_modules"] == []


@pytest.mark.parametrize("task,target", [("binary", "default"), ("multiclass", "employment"), ("regression", "income")])
def test_every_builtin_estimator_passes_the_check_and_loads(task, target, tmp_path):
    from mlkit.models import ESTIMATORS
    X, y = credit_frames(400)
    df = X.assign(default=y).dropna(subset=[target])
    X, y = df.drop(columns=[target]), df[target]
    family = "regression" if task == "regression" else "classification"
    small = {"random_forest": {"n_estimators": 3}, "extra_trees": {"n_estimators": 3}, "hist_gradient_boosting": {"max_iter": 5}}
    seen = set()
    for name, fams in ESTIMATORS.items():
        if family not in fams: continue
        model, _ = fit_model(X, y, name, small.get(name), task=task)
        seen |= set(trust.check_model(model))
        (tmp_path / f"{name}.skops").write_bytes(sio.dumps(model))
        assert trust.load_skops(tmp_path / f"{name}.skops").predict(X.head(20)).tolist() == model.predict(X.head(20)).tolist()
    assert seen == {"mlkit.features.categories_as_text", "numpy.dtype", "sklearn.tree._tree.Tree",
                    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"}


# ---------------------------------------------------------------- the user's own package
@pytest.fixture(scope="module")
def shop(store):
    "A model holding the LogIncome transformer of the honest package `secshoppkg`, logged where secshoppkg was declared (`shop` v1)."
    from secshoppkg.features import LogIncome
    model, schema = fit_model(store.X, store.y, "logistic_regression", before=[("log_income", LogIncome())])
    version = log_real("shop", model, schema, store.X, store.y, declared=["secshoppkg"])
    return SimpleNamespace(model=model, schema=schema, X=store.X, y=store.y, uri=f"models:/shop/{version}")

def test_a_declared_class_logs_and_loads_and_the_declaration_is_recorded(shop):
    loaded = tracking.load_sklearn_model(shop.uri, trusted_modules=["secshoppkg"])
    assert loaded.predict(shop.X).tolist() == shop.model.predict(shop.X).tolist()
    assert tracking.load_model_meta(shop.uri)["trusted_modules"] == ["secshoppkg"]

def test_an_undeclared_class_is_refused_at_log_time_and_nothing_is_registered(shop):
    import mlflow
    with pytest.raises(ModelError) as e: log_real("shop-undeclared", shop.model, shop.schema, shop.X, shop.y)
    assert "secshoppkg.features.LogIncome" in str(e.value)
    assert "declare `secshoppkg` in trusted_modules of settings.ini, $MLKIT_TRUSTED_MODULES or --trust secshoppkg" in str(e.value)
    assert mlflow.MlflowClient().search_registered_models(filter_string="name='shop-undeclared'") == []

def test_a_function_of_a_declared_module_is_refused_at_log_time(shop):
    from sklearn.preprocessing import FunctionTransformer
    from secshoppkg.features import clean
    model, schema = fit_model(shop.X, shop.y, "logistic_regression", before=[("clean", FunctionTransformer(clean))])
    with pytest.raises(ModelError, match=r"secshoppkg\.features\.clean — a function of trusted `secshoppkg`: only classes"):
        log_real("shop-function", model, schema, shop.X, shop.y, declared=["secshoppkg"])

def test_the_loading_side_decides_not_the_record(shop, monkeypatch, tmp_path):
    with pytest.raises(ModelError, match=r"secshoppkg\.features\.LogIncome — from a module this side does not trust: declare `secshoppkg`"):
        tracking.load_sklearn_model(shop.uri)                 # the record lists secshoppkg; this side does not
    monkeypatch.setenv("MLKIT_TRUSTED_MODULES", "secshoppkg")
    assert len(tracking.load_sklearn_model(shop.uri).predict(shop.X.head(5))) == 5
    with pytest.raises(ModelError, match="does not trust"): tracking.load_sklearn_model(shop.uri, trusted_modules=[])  # --trust wins
    monkeypatch.delenv("MLKIT_TRUSTED_MODULES")
    (tmp_path / "settings.ini").write_text("[DEFAULT]\nlib_name = shop\ntrusted_modules = secshoppkg\n")
    (tmp_path / "nbs").mkdir(); monkeypatch.chdir(tmp_path / "nbs")
    assert len(tracking.load_sklearn_model(shop.uri).predict(shop.X.head(5))) == 5   # the settings.ini of a parent folder


def test_a_tampered_record_is_refused_at_load(shop, store):
    import mlflow
    version = log_real("shop-tampered", shop.model, shop.schema, shop.X, shop.y, declared=["secshoppkg"])
    client = mlflow.MlflowClient()
    folder = Path(client.get_logged_model(client.get_model_version("shop-tampered", version).source[len("models:/"):]).artifact_location)
    conf = yaml.safe_load((folder / "MLmodel").read_text())
    conf["metadata"]["mlkit_trusted_modules"] += ["builtins"]
    conf["flavors"]["sklearn"]["skops_trusted_types"] += ["builtins.exec"]
    (folder / "MLmodel").write_text(yaml.safe_dump(conf))
    (folder / "model.skops").write_bytes(embedded((folder / "model.skops").read_bytes(), PAYLOADS["exec"][0](store.markers / "tampered")))
    with pytest.raises(ModelError, match=r"builtins\.exec — part of Python itself"):
        tracking.load_sklearn_model(f"models:/shop-tampered/{version}", trusted_modules=["secshoppkg"])
    assert ran(store) == []


def test_a_declaration_of_python_itself_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("MLKIT_TRUSTED_MODULES", "secshoppkg, subprocess")
    with pytest.raises(ConfigError, match=r"\$MLKIT_TRUSTED_MODULES declares 'subprocess': Python's own modules"):
        trust.read_trusted_modules()
    monkeypatch.delenv("MLKIT_TRUSTED_MODULES")
    (tmp_path / "settings.ini").write_text("[DEFAULT]\ntrusted_modules = sklearn\n")
    with pytest.raises(ConfigError, match="trusted_modules in .*settings.ini declares 'sklearn'"): trust.read_trusted_modules(cwd=tmp_path)


# ---------------------------------------------------------------- the commands (real CLI subprocesses)
def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return str(s.getsockname()[1])

def command(store, cmd:str, uri:str) -> list:
    "The arguments of `mlkit cmd` loading `uri` (promote takes the registered name and version of a models:/NAME/VERSION uri)."
    if cmd == "promote": return ["promote", uri.split("/")[1], "--version", uri.split("/")[2]]
    return {"serve": ["serve", "--model", uri, "--port", free_port()],
            "score": ["score", "--model", uri, "--input", store.batch, "--output", store.dir / "scored.csv"],
            "monitor": ["monitor", "--model", uri, "--input", store.batch]}[cmd]

def check_refused(store, r, *expected) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    for text in expected: assert text in r.stderr, (text, r.stderr[-2000:])
    assert ran(store) == [], f"payload ran: {ran(store)}"
    assert not (store.dir / "scored.csv").exists()


# Every command loads through mlkit.trust: the exec payload goes through all four, every other payload through one (score, the
# cheapest); the quick tests above put every payload through the loader itself.
COMMAND_CASES = [(cmd, "exec") for cmd in ("serve", "score", "promote", "monitor")] + [("score", n) for n in PAYLOADS if n != "exec"]

@pytest.mark.slow
@pytest.mark.parametrize("cmd,name", COMMAND_CASES)
def test_no_command_runs_a_crafted_model(store, cmd, name):
    _, refused, why = PAYLOADS[name]
    env = {**store.env, **({"MLKIT_TRUSTED_MODULES": DECLARED[name]} if name in DECLARED else {})}
    r = run_mlkit(*command(store, cmd, f"models:/evil-{name}/1"), cwd=store.dir, env=env, timeout=180)
    check_refused(store, r, refused, why)
    check_import_marker(store, name)


@pytest.mark.slow
@pytest.mark.parametrize("cmd,uri,message", [("serve", "models:/evil-dotdot/1", "expected a plain file name"),
                                             ("promote", "models:/evil-absolute/1", "expected a plain file name"),
                                             ("score", "models:/evil-forged/2", "outside the artifacts of their run"),
                                             ("serve", "ESCAPE", "is not a safe run artifact URI"), ("score", "OUTSIDE", "never from a folder")])
def test_no_command_loads_a_model_from_outside_the_store(store, cmd, uri, message):   # one command per case: they share the resolver
    uri = {"ESCAPE": store.escape, "OUTSIDE": str(store.outside)}.get(uri, uri)
    check_refused(store, run_mlkit(*command(store, cmd, uri), cwd=store.dir, env=store.env, timeout=180), message)


@pytest.mark.slow
def test_commands_load_a_declared_user_class_and_refuse_it_undeclared(store, shop, tmp_path):
    args = ["score", "--model", shop.uri, "--input", store.batch, "--output", tmp_path / "out.csv"]
    r = run_mlkit(*args, cwd=tmp_path, env=store.env, timeout=180)
    assert r.returncode == 2 and "secshoppkg.features.LogIncome" in r.stderr and "--trust secshoppkg" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out.csv").exists()
    r = run_mlkit(*args, cwd=tmp_path, env={**store.env, "MLKIT_TRUSTED_MODULES": "secshoppkg"}, timeout=180)
    assert r.returncode == 0 and (tmp_path / "out.csv").exists(), r.stderr[-2000:]
    (tmp_path / "out.csv").unlink()
    (tmp_path / "settings.ini").write_text("[DEFAULT]\ntrusted_modules = secshoppkg\n")
    r = run_mlkit(*args, cwd=tmp_path, env=store.env, timeout=180)
    assert r.returncode == 0 and (tmp_path / "out.csv").exists(), r.stderr[-2000:]
    r = run_mlkit("monitor", "--model", shop.uri, "--input", store.batch, cwd=tmp_path, env=store.env, timeout=300)
    assert r.returncode in (0, 3), r.stderr[-2000:]      # healthy or drift alert: either way the model loaded and was judged
