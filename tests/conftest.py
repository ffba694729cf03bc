"""Shared fixtures: real MLflow stores in temporary folders, data made with fixed seeds, nothing downloaded."""
import os, shutil, sys
from pathlib import Path
import pytest

pytest_plugins = ["servers"]  # real PostgreSQL and mlflow server fixtures (tests/servers.py)

ROOT = Path(__file__).resolve().parents[1]
# The tests run servers beside their load generators and several workers at once on small machines: one native (OpenMP/BLAS)
# thread per process, here and in every `mlkit` subprocess, avoids the spin-wait contention that makes model fits 20x slower.
for _var in ("MLKIT_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ["MLKIT_WARM"] = "0"   # a developer's own `mlkit warm` never runs the suite's commands; tests/test_warm.py starts its own
BIN = Path(sys.executable).parent


@pytest.fixture
def tmp_mlflow(tmp_path, monkeypatch):
    "A fresh SQLite MLflow store in tmp_path; the test runs with tmp_path as its working directory."
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run(): mlflow.end_run()


def mlkit_cmd(*args):
    "The installed `mlkit` console script with arguments (as a user would type it)."
    return [str(BIN / "mlkit"), *map(str, args)]


def run_mlkit(*args, cwd=None, env=None, timeout=600, check=False):
    "Run the `mlkit` console script; returns the CompletedProcess (text)."
    import subprocess
    full_env = {**os.environ, **(env or {})}
    r = subprocess.run(mlkit_cmd(*args), cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"mlkit {' '.join(map(str, args))} exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


def _shared_dir(tmp_path_factory) -> Path:
    "A folder every xdist worker of this run sees (the parent of the workers' own base folders), or this process's base folder."
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_once(tmp_path_factory, name:str, build):
    """`build(folder)` → a JSON-able dict, run once per test run however many xdist workers ask: the first one builds it (the others
    wait on a lock) and each later caller reads the saved result. A failed build is not saved: the next caller builds again."""
    import fcntl, json
    d = _shared_dir(tmp_path_factory) / f"shared-{name}"
    with open(_shared_dir(tmp_path_factory) / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = d / "built.json"
        if not done.exists():
            shutil.rmtree(d, ignore_errors=True); d.mkdir()
            done.write_text(json.dumps(build(d)))
        return json.loads(done.read_text())


def _train_store(d:Path) -> dict:
    uri = f"sqlite:///{d}/mlflow.db"
    r = run_mlkit("run", "train", "-p", ROOT / "params" / "ci.yaml", "--set", "model_name=credit", cwd=d,
                  env={"MLFLOW_TRACKING_URI": uri}, check=True)
    run_id = next(line.split()[1] for line in r.stdout.splitlines() if line.startswith("run "))
    return {"dir": str(d), "uri": uri, "name": "credit", "version": "1", "run_id": run_id, "model_uri": "models:/credit/1", "stdout": r.stdout}


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory):
    """A store holding a model trained by the real train pipeline (params/ci.yaml, registered as `credit`, version 1).
    Trained once per test run and shared by every xdist worker, read-only: tests must not write to it (nor move its aliases) —
    use `trained_copy`, or copy its mlflow.db, for that."""
    store = build_once(tmp_path_factory, "trained", _train_store)
    return {**store, "dir": Path(store["dir"])}


@pytest.fixture
def trained_copy(trained_store, tmp_path, monkeypatch):
    "A private copy of `trained_store` (same artifacts) as the working directory and tracking store of one test."
    shutil.copy(trained_store["dir"] / "mlflow.db", tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow
    mlflow.set_tracking_uri(uri)
    return {**trained_store, "dir": tmp_path, "uri": uri}


# --- scheduling on xdist workers (pytest.ini: --dist loadgroup) -------------------------------------------------------------------
# A module-scoped fixture is built by every worker that runs one of its tests, and a session-scoped server by every worker that
# needs it: under plain `--dist load` the tests of one module are spread over both workers, so the Airflow DAG runs, the secrets
# evidence, the security store... were each built twice. Each test that uses a module-scoped fixture of its own module joins that
# module's group (run on one worker, fixture built once); every test on the shared PostgreSQL / `mlflow server` joins one group.
SERVER_FIXTURES = {"mlflow_server", "pg_server", "postgres"}
# Longest first, so that the two workers finish together instead of one waiting on a long test picked up last (whole-group or
# single-test seconds measured on 2 busy cores, 2026-12-02). Everything else keeps its collection order after these.
LONGEST_FIRST = ["test_new.py::test_a_new_project", "@servers", "@test_ops_airflow.py", "@test_own_models.py", "@test_security.py",
                 "@test_ops_prometheus.py", "@test_promote.py", "@test_serve.py", "@test_tune.py", "@test_monitor.py"]


def _group(item) -> str | None:
    defs = getattr(item, "_fixtureinfo", None)
    if defs is None: return None
    used = [(name, defs.name2fixturedefs[name][-1]) for name in item.fixturenames if defs.name2fixturedefs.get(name)]
    if any(name in SERVER_FIXTURES and fd.func.__module__ == "servers" for name, fd in used): return "servers"
    module = item.nodeid.split("::")[0]
    return Path(item.path).name if any(fd.scope == "module" and fd.baseid == module for _, fd in used) else None


@pytest.hookimpl(wrapper=True)   # around xdist's own hook, which turns the xdist_group marks into the scheduling groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        g = _group(item)
        if g: item.add_marker(pytest.mark.xdist_group(g))
    def rank(item):
        g, key = _group(item), item.nodeid.split("/")[-1]
        for i, first in enumerate(LONGEST_FIRST):
            if (g and first == f"@{g}") or (not first.startswith("@") and key.startswith(first)): return i
        return len(LONGEST_FIRST)
    items.sort(key=rank)   # stable: collection order within each rank
    yield
    # then check that loadgroup really grouped: pytest 9.2's structured node ids made pytest-xdist 3.8 drop the groups silently
    # (pytest-xdist#1386), and every module fixture and server was built on both workers
    lost = [i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
    if getattr(config.option, "loadgroup", False) and lost:
        why = (f"pytest-xdist's --dist loadgroup ignores the xdist_group of {len(lost)} tests (e.g. {lost[0]}) with this pytest: "
               "install pytest<9.2 (pip install -e '.[dev]'), see pytest-xdist#1386")
        print(f"\n{why}", file=sys.__stderr__, flush=True)   # a worker: xdist shows only its own INTERNALERROR otherwise
        pytest.exit(why, returncode=3)


@pytest.fixture(autouse=True)
def _no_process_wide_experiment():
    """`mlflow.set_experiment` is process-wide (a module global and $MLFLOW_EXPERIMENT_ID) and outlives the test that called it:
    on a worker that ran test_security's crafted models first, test_monitor's store fixture started its runs in an experiment
    id of another store ("No Experiment with id=2 exists"). Each test starts and ends with no experiment chosen."""
    from mlkit.tracking import forget_experiment
    forget_experiment(); yield; forget_experiment()
