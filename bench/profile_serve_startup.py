"""Where `mlkit serve`'s start-up goes: the method behind the start-up work in issue 12.

Three views, on a model trained and registered here (or --store DIR holding a credit@champion):
  stages   wall seconds of each step of the start-up path, each in a fresh process, imports first (`python -X importtime`
           attributes them further: see --importtime);
  overlap  `load_served_model(overlap=False)` against `overlap=True` (MLflow in a helper process while skops imports);
  profile  cProfile of make_app in one process, top functions by cumulative time (--profile).

    python bench/profile_serve_startup.py [--profile] [--importtime]
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

STAGES = r'''
import sys, time, json
T = [time.perf_counter()]; names = []
def mark(n): T.append(time.perf_counter()); names.append(n)
import mlkit.serve; mark("import mlkit.serve (pandas, pydantic, fastcore)")
import fastapi, uvicorn, prometheus_client; mark("import fastapi, uvicorn, prometheus_client")
import sklearn.pipeline, sklearn.compose, sklearn.ensemble; mark("import scikit-learn")
import skops.io; mark("import skops.io (lists every estimator)")
import mlflow; mark("import mlflow")
from mlkit.tracking import load_model_meta, load_sklearn_model
mlflow.MlflowClient().search_registered_models(max_results=1); mark("open the MLflow store")
meta = load_model_meta("models:/credit@champion"); mark("resolve the alias, read the model's metadata")
pipe = load_sklearn_model(f"models:/credit/{meta['version']}"); mark("download and load the skops file")
from mlkit.payload import ServedModel
from mlkit.runtime import _lineage
_lineage(meta["run_id"]); mark("lineage tags")
m = ServedModel(pipe, schema=meta["schema"], name="credit", version=meta["version"]); mark("compile and verify the fast path")
mlkit.serve.make_app(m, reload_interval=0); mark("make_app")
print(json.dumps(list(zip(names, [b - a for a, b in zip(T, T[1:])]))))
'''

LOAD = r'''
import sys, time
t = time.perf_counter()
from mlkit.runtime import load_served_model
m = load_served_model("models:/credit@champion", overlap=sys.argv[1] == "1")
print(time.perf_counter() - t)
'''

PROFILE = r'''
import cProfile, pstats
pr = cProfile.Profile(); pr.enable()
from mlkit.serve import make_app
from mlkit.runtime import load_served_model
make_app(load_served_model("models:/credit@champion"), reload_interval=0)
pr.disable()
pstats.Stats(pr).sort_stats("cumulative").print_stats(40)
'''


def run(code, *args, env):
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env)
    if r.returncode: raise SystemExit(r.stderr)
    return r.stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", help="folder holding mlflow.db with credit@champion (default: train one in a temporary folder)")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of make_app")
    ap.add_argument("--importtime", action="store_true", help="also print the 25 slowest imports (python -X importtime)")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    d = Path(a.store or tempfile.mkdtemp(prefix="profile_serve_"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{d}/mlflow.db", "OMP_NUM_THREADS": "1"}
    if not a.store:
        sys.path.insert(0, str(Path(__file__).parent))
        os.environ.update(env); os.chdir(d)
        from bench_serve import train
        train(d)
    stages = [json.loads(run(STAGES, env=env)) for _ in range(a.repeat)]
    print(f"start-up stages, median of {a.repeat} fresh processes (wall s):")
    for i, (name, _) in enumerate(stages[0]):
        vals = sorted(s[i][1] for s in stages)
        print(f"  {name:48s} {vals[len(vals) // 2]:6.2f}")
    print(f"  {'total':48s} {sorted(sum(v for _, v in s) for s in stages)[a.repeat // 2]:6.2f}")
    for flag in ("0", "1"):
        ts = sorted(float(run(LOAD, flag, env=env)) for _ in range(a.repeat))
        print(f"load_served_model(overlap={flag == '1'}) in a fresh process: median {ts[len(ts) // 2]:.2f} s {[round(t, 2) for t in ts]}")
    if a.importtime:
        r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import mlkit.serve, skops.io, fastapi, uvicorn"],
                           capture_output=True, text=True, env=env)
        rows = sorted((int(l.split("|")[1]), l.split("|")[2].rstrip()) for l in r.stderr.splitlines() if l.startswith("import time:") and "|" in l
                      and l.split("|")[1].strip().isdigit())
        print("\nslowest imports (cumulative µs):")
        for us, name in rows[-25:][::-1]: print(f"  {us / 1e6:6.2f} s {name}")
    if a.profile: print(run(PROFILE, env=env))


if __name__ == "__main__":
    main()
