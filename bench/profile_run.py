"""Where the time of one `mlkit run` goes. Five views, each in a fresh working directory and store:

  phases    a timeline of the runner's steps (parent process) and of the kernel start, from wrappers put around the runner's functions
  parent    cProfile of the parent process (`python -m cProfile ... mlkit run ...`), top functions by cumulative time
  imports   `python -X importtime` of the parent: the heaviest imports (with the in-process engine, the cells' own imports are
            written to the execution's log, not shown here: see `cells`)
  cells     cProfile of the notebook's cells executed as one plain script (what the kernel spends), top functions

Usage: python bench/profile_run.py [phases|parent|imports|cells|steps] [NOTEBOOK] [mlkit run arguments ...]
       (defaults: phases train -p params/ci.yaml --set model_name=null). Profilers roughly double the times: compare within a view.
       A second `phases` call with `--again` runs the same command twice in one store and shows the second (reused) run.
"""
import json, os, pstats, re, subprocess, sys, tempfile, threading, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEFAULT = ["train", "-p", str(ROOT / "params" / "ci.yaml"), "--set", "model_name=null"]


def _env(d):
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{d}/mlflow.db", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}


_T0 = [0.0]


def _wrap(mod, name, label=None):
    "Print when `mod.name` starts and ends (seconds since the run began, thread name)."
    f = getattr(mod, name)
    def timed(*a, **kw):
        t = time.perf_counter()
        print(f"  {t - _T0[0]:7.2f}  {threading.current_thread().name[:18]:<18} > {label or name}", file=sys.stderr)
        try: return f(*a, **kw)
        finally:
            print(f"  {time.perf_counter() - _T0[0]:7.2f}  {threading.current_thread().name[:18]:<18} < {label or name} "
                  f"({time.perf_counter() - t:.2f} s)", file=sys.stderr)
    setattr(mod, name, timed)


def phases(args):
    "Run `mlkit run ARGS` in this process with the runner's steps timed (the same code path as the console script)."
    again = "--again" in args
    args = [a for a in args if a != "--again"]
    d = tempfile.mkdtemp(prefix="mlkit-prof-")
    os.chdir(d); os.environ.update(_env(d))
    _T0[0] = time.perf_counter()
    t_imp = time.perf_counter()
    from mlkit import cli, runner, execute, tracking, cache, lineage, record
    print(f"  {time.perf_counter() - _T0[0]:7.2f}  import mlkit.cli, runner ({time.perf_counter() - t_imp:.2f} s)", file=sys.stderr)
    for mod, names in ((runner, ["read_notebook", "resolve_parameters", "_key", "check_before_kernel", "_open", "_close",
                                 "execute_notebook", "find_reusable", "_reused", "contract_cell", "new_store"]),
                       (record, ["open_run", "close_run", "reap_orphans"]),
                       (tracking, ["ensure_experiment"]),
                       (execute.KernelStart, ["_start", "wait", "stop", "evaluate"])):
        for n in names:
            if hasattr(mod, n): _wrap(mod, n)
    if again:
        t = time.perf_counter(); cli.main(["run", *args]); print(f"first run: {time.perf_counter() - t:.2f} s", file=sys.stderr)
        _T0[0] = time.perf_counter()
    t = time.perf_counter()
    code = cli.main(["run", *args])
    print(f"whole `mlkit run` in this process: {time.perf_counter() - t:.2f} s (exit {code})", file=sys.stderr)


def parent(args, top=40):
    d = tempfile.mkdtemp(prefix="mlkit-prof-")
    out = Path(d) / "parent.prof"
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), str(BIN / "mlkit"), "run", *args], cwd=d, env=_env(d), check=True,
                   stdout=subprocess.DEVNULL)
    pstats.Stats(str(out)).sort_stats("cumulative").print_stats(top)


def imports(args, top=40):
    d = tempfile.mkdtemp(prefix="mlkit-prof-")
    r = subprocess.run([sys.executable, "-X", "importtime", str(BIN / "mlkit"), "run", *args], cwd=d, env=_env(d),
                       capture_output=True, text=True)
    rows = []
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m: rows.append((int(m[2]) / 1e6, int(m[1]) / 1e6, len(m[3]) // 2, m[4]))
    print(f"{'cumul s':>8} {'self s':>7}  module (top-level imports of the parent, then the heaviest overall)")
    for c, s, depth, name in sorted((r for r in rows if r[2] <= 1), reverse=True)[:15]: print(f"{c:8.2f} {s:7.2f}  {name}")
    print("...")
    for c, s, depth, name in sorted(rows, reverse=True)[:top]: print(f"{c:8.2f} {s:7.2f}  {'.' * depth}{name}")


def cells(args, top=40):
    "cProfile of the notebook's own cells as one script, with the parameters `mlkit run` would inject."
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_train import notebook_as_script
    from mlkit.runner import resolve_notebook, resolve_parameters
    nb_path = resolve_notebook(args[0])
    p = args[1:]
    params = p[p.index("-p") + 1] if "-p" in p else None
    sets = [p[i + 1] for i, a in enumerate(p) if a == "--set"]
    r = resolve_parameters(nb_path, params=params, sets=sets)
    d = tempfile.mkdtemp(prefix="mlkit-prof-")
    (Path(d) / "cells.py").write_text(notebook_as_script(nb_path, r.inject))
    out = Path(d) / "cells.prof"
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), "cells.py"], cwd=d, env=_env(d), check=True, stdout=subprocess.DEVNULL)
    pstats.Stats(str(out)).sort_stats("cumulative").print_stats(top)


def steps(args):
    "CPU seconds of each step of `training.train_model`'s work on params/ci.yaml (or `-p PARAMS`), done step by step in a new process."
    p = args[args.index("-p") + 1] if "-p" in args else str(ROOT / "params" / "ci.yaml")
    d = tempfile.mkdtemp(prefix="mlkit-prof-")
    subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.MlflowClient('sqlite:///{d}/mlflow.db').search_experiments()"],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-c", _STEPS, p], cwd=d, env=_env(d), check=True)


_STEPS = r"""
import sys, time
T, marks = time.process_time, []
def mark(n, t0=[0.0]): t = T(); marks.append((n, t - t0[0])); t0[0] = t
import numpy, pandas; mark("import numpy, pandas")
import sklearn.compose, sklearn.ensemble; mark("import sklearn")
import mlflow; mark("import mlflow")
from mlkit import training, tracking, trust, evaluate as mev, profile as mprofile, registry
from mlkit.config import load_params
from mlkit.models import make_model
mark("import mlkit")
p = load_params("train", sys.argv[1]); d = training.prepare_training_data(p); mark("prepare_training_data")
run = tracking.start_run(pipeline="train", params=p, tags=d.tags); mark("start_run (store, experiment, run)")
pipe = make_model(d.schema, task=d.task, model=p.model, features=p.features, seed=p.seed, sample=d.X_train)
cv = mev.cross_validate_model(pipe, d.X_train, d.y_train, task=d.task, folds=p.evaluate.cv_folds, seed=p.seed); mark("cross-validation")
pipe.fit(d.X_train, d.y_train); mark("fit")
out = mev.predict_outputs(pipe, d.X_test, task=d.task)
test = mev.compute_metrics(pipe, d.X_test, d.y_test, task=d.task, outputs=out); mark("holdout: predict once, metrics")
tracking.log_metrics({**cv, **{f"test_{k}": v for k, v in test.items()}}); mark("log metrics")
figs = mev.make_plots(pipe, d.X_test, d.y_test, task=d.task, outputs=out); mark("make_plots")
tracking.log_figures(figs, "plots"); mark("render and log the plots")
e = p.evaluate
imp, efigs = mev.explain_model(pipe, d.X_test, d.y_test, task=d.task, top=e.top_features, repeats=e.permutation_repeats, seed=p.seed,
                               max_rows=e.max_explain_rows); mark("explain_model")
tracking.log_figures(efigs, "explain"); mark("render and log the explanations")
training._log_holdout(d.X_test, d.y_test, d.target); mark("holdout parquet")
prof = mprofile.make_profile(d.X_train, schema=d.schema, target=d.y_train, classes=pipe.classes_, predictions=out.proba); mark("profile")
trust.check_model(pipe); mark("trust.check_model (import skops.io, dumps)")
tracking.log_model(pipe, X_sample=d.X_train, schema=d.schema, task=d.task, profile=prof, metrics=test); mark("log_model")
if p.model_name: registry.register_version(mlflow.active_run().info.run_id, p.model_name); mark("register_version, model card")
tracking.finish_run(); mark("finish_run")
for n, s in marks: print(f"{s:6.2f}  {n}")
print(f"{sum(s for _, s in marks):6.2f}  CPU seconds in all")
"""


def _absolute(args):
    "The arguments with paths that exist here made absolute (each view runs in a new folder)."
    return [str(Path(a).resolve()) if not a.startswith("-") and ("/" in a or a.endswith((".yaml", ".yml", ".ipynb"))) and Path(a).exists()
            else a for a in args]


if __name__ == "__main__":
    view = sys.argv[1] if len(sys.argv) > 1 else "phases"
    rest = _absolute(sys.argv[2:]) or DEFAULT
    {"phases": phases, "parent": parent, "imports": imports, "cells": cells, "steps": steps}[view](rest)
