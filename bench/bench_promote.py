"""`mlkit promote` against its own work, in the same run of this script (issue 12: goal ≤ the work + 2 s).

The work is what a promotion cannot avoid: in one fresh Python process, load the challenger's and the champion's model files, rebuild
the frozen evaluation rows, and compute both models' metrics on them (plus the constant baseline and the fairness slices the gate
reports). The command is `mlkit promote credit --version 2` with version 1 as champion, run as a user runs it (a new process), on a
store restored before every run. Both are timed alternately, `repeats` times each; medians, their ratio and difference are printed
with the absolute figures, then the same command through a warm process (`mlkit warm`, started once), and a profile of one in-process promotion (top functions by cumulative time) is written beside it.

Usage: python bench/bench_promote.py [repeats] [--store DIR]   (DIR: a folder from an earlier run, to skip training the two models)"""
import os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORK = r'''
import sys, time
t0 = time.perf_counter()
import numpy as np, pandas as pd, skops.io as sio
from sklearn.dummy import DummyClassifier
from mlkit.data import load_data, split_data
from mlkit.evaluate import compute_metrics
models = [sio.load(p, trusted=sio.get_untrusted_types(file=p)) for p in sys.argv[1:3]]
df = load_data("mlkit:credit", n_rows=1500, seed=0)
test = split_data(df, target="default", test_size=0.2, seed=0, task="binary")[1]
X, y = test.drop(columns=["default"]), test["default"]
for m in models:
    compute_metrics(m, X, y, task="binary")
    p = m.predict(X)
    for g in ("F", "M"): (p[(test.sex == g).to_numpy()] == 1).mean()
compute_metrics(DummyClassifier(strategy="prior").fit(X, y), X, y, task="binary")
'''


def train_store(d:Path) -> None:
    "Two versions of `credit` trained by the real train pipeline (params/ci.yaml), version 1 champion; a copy kept as *.orig."
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{d}/mlflow.db", "OMP_NUM_THREADS": "1"}
    for iters in (30, 60):
        subprocess.run([str(BIN / "mlkit"), "run", "train", "-p", str(ROOT / "params" / "ci.yaml"), "--set", "model_name=credit",
                        "--set", f"model.hyperparams.max_iter={iters}"], cwd=d, env=env, check=True, capture_output=True)
    subprocess.run([str(BIN / "mlkit"), "promote", "credit", "--version", "1", "--force", "--reason", "bench set-up"], cwd=d, env=env,
                   check=True, capture_output=True)
    shutil.copy(d / "mlflow.db", d / "mlflow.db.orig")


def model_files(d:Path) -> list[str]:
    "Local paths of the two versions' model.skops files (downloaded once, outside the timing)."
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{d}/mlflow.db"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    import mlflow
    out = []
    for v in (2, 1):
        path = Path(mlflow.artifacts.download_artifacts(f"models:/credit/{v}", dst_path=str(d / f"v{v}")))
        out.append(str(next(path.rglob("model.skops"))))
    return out


def timed(cmd, d:Path, restore:bool, warm:dict|None=None) -> float:
    if restore: shutil.copy(d / "mlflow.db.orig", d / "mlflow.db")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{d}/mlflow.db", "OMP_NUM_THREADS": "1",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", **(warm or {})}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode not in (0, 1): raise SystemExit(f"{cmd} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return dt


PHASES = r'''
import time, sys, functools, json
out, t0 = {}, time.perf_counter()
def phase(name, f):
    t = time.perf_counter(); r = f(); out[name] = out.get(name, 0) + time.perf_counter() - t; return r
def timed(mod, fn, name):
    f = getattr(mod, fn)
    @functools.wraps(f)
    def g(*a, **k):
        t = time.perf_counter()
        try: return f(*a, **k)
        finally: out[name] = out.get(name, 0) + time.perf_counter() - t
    setattr(mod, fn, g)
phase("import pandas, sklearn, skops, mlkit.promote", lambda: __import__("mlkit.promote") and __import__("skops.io"))
phase("import mlflow + open the store", lambda: __import__("mlkit.registry").registry.get_client().search_registered_models())
import mlkit.tracking as tr, mlkit.rescore as rs, mlkit.promote as pr
for mod, fn, name in [(tr, "load_model_meta", "model metadata (MLmodel: download + YAML)"), (tr, "load_sklearn_model", "model (download + YAML + skops)"),
                      (rs, "build_eval_data", "evaluation data"), (rs, "_score", "predictions + metrics"), (rs, "baseline_scores", "baseline"),
                      (rs, "fairness_slices", "fairness slices"), (pr, "pick_challenger", "choose + annotate the challenger"),
                      (pr, "_record", "alias move + history"), (pr, "_card", "model card")]:
    timed(mod, fn, name)
import mlflow, collections
calls = collections.Counter()
for fn in [f for f in dir(mlflow.MlflowClient) if not f.startswith("_")]:
    orig = getattr(mlflow.MlflowClient, fn)
    if callable(orig):
        def counted(*a, _f=orig, _n=fn, **k): calls[_n] += 1; return _f(*a, **k)
        setattr(mlflow.MlflowClient, fn, counted)
from mlkit.cli import main
phase("whole promotion (main)", lambda: main(["promote", "credit", "--version", "2"]))
out["whole process"] = time.perf_counter() - t0
out["MLflow client calls"] = f"{sum(calls.values())}: " + ", ".join(f"{n} {c}" for n, c in calls.most_common(8))
print(json.dumps(out), file=sys.stderr)
'''
YAML = r'''
import sys, time, yaml
text = open(sys.argv[1]).read()
def best(loader): return min((lambda t0: (yaml.load(text, Loader=loader), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(5))
print(f"{len(text)} {best(yaml.SafeLoader):.4f} {best(yaml.CSafeLoader):.4f}")
'''


def phases(d:Path) -> None:
    "Where one promotion's time goes, phase by phase, in a fresh process (no profiler overhead)."
    import json
    shutil.copy(d / "mlflow.db.orig", d / "mlflow.db")
    r = subprocess.run([sys.executable, "-c", PHASES], cwd=d, capture_output=True, text=True,
                       env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{d}/mlflow.db", "OMP_NUM_THREADS": "1"})
    for name, t in json.loads(r.stderr.strip().splitlines()[-1]).items():
        print(f"  {t:6.2f} s  {name}" if isinstance(t, float) else f"  {name}: {t}")
    mlmodel = next((d / "v2").rglob("MLmodel"))
    size, py, c = subprocess.run([sys.executable, "-c", YAML, str(mlmodel)], capture_output=True, text=True).stdout.split()
    print(f"  one MLmodel ({int(size):,} bytes, the mlkit profile inside) parses in {float(py):.3f} s with yaml.SafeLoader, "
          f"{float(c):.3f} s with yaml.CSafeLoader; a promotion parses 4 of them (2 per model: metadata, then the model)")


def profile(d:Path) -> None:
    "cProfile of one promotion in a fresh process (includes the imports), top 30 by cumulative time, into DIR/promote.prof.txt."
    shutil.copy(d / "mlflow.db.orig", d / "mlflow.db")
    code = ("import cProfile, pstats, io, sys\nfrom mlkit.cli import main\npr = cProfile.Profile(); pr.enable()\n"
            "main(['promote', 'credit', '--version', '2'])\npr.disable(); s = io.StringIO()\n"
            "pstats.Stats(pr, stream=s).sort_stats('cumulative').print_stats(30); open('promote.prof.txt', 'w').write(s.getvalue())")
    subprocess.run([sys.executable, "-c", code], cwd=d, env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{d}/mlflow.db"},
                   capture_output=True, check=True)
    print(f"  profile of one promotion: {d / 'promote.prof.txt'}")


if __name__ == "__main__":
    args = sys.argv[1:]
    store = Path(args[args.index("--store") + 1]) if "--store" in args else None
    n = int(next((a for a in args if a.isdigit()), "5"))
    d = store or Path(tempfile.mkdtemp(prefix="bench-promote-"))
    if not (d / "mlflow.db.orig").exists():
        print(f"training two models with the train pipeline in {d} (about a minute each) ...", flush=True); train_store(d)
    files = model_files(d)
    work_cmd, promote_cmd = [sys.executable, "-c", WORK, *files], [str(BIN / "mlkit"), "promote", "credit", "--version", "2"]
    sys.path.insert(0, str(Path(__file__).parent))
    from _util import report, start_warm, stop_warm
    warm = start_warm(d, {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
    timed(work_cmd, d, False); timed(promote_cmd, d, True)                  # warm the file cache
    work, promote, hot = [], [], []
    for _ in range(n):
        work.append(timed(work_cmd, d, False)); promote.append(timed(promote_cmd, d, True)); hot.append(timed(promote_cmd, d, True, warm))
    stop_warm(warm, os.environ)
    b, c = report("mlkit promote", "the work in one process", work, "mlkit promote credit --version 2", promote, goal="≤ work + 2 s")
    print(f"  {'PASS' if c <= b + 2 else 'FAIL'}: promote {c:.2f} s, work {b:.2f} s, overhead {c - b:+.2f} s (goal ≤ +2 s); "
          f"all promote runs: {', '.join(f'{x:.2f}' for x in promote)}; all work runs: {', '.join(f'{x:.2f}' for x in work)}")
    b, c = report("mlkit promote, warm", "the work in one process", work, "the same through `mlkit warm`", hot, goal="≤ work + 2 s")
    print(f"  {'PASS' if c <= b + 2 else 'FAIL'}: promote (warm) {c:.2f} s, work {b:.2f} s, overhead {c - b:+.2f} s (goal ≤ +2 s); "
          f"all runs: {', '.join(f'{x:.2f}' for x in hot)}")
    print("one promotion, phase by phase:"); phases(d)
    profile(d)
