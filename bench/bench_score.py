"""Batch-scoring benchmark, each against its baseline in the same run (ratios, absolute figures beside them):
  1. the command: `mlkit score` on 1,000 rows (CSV in, Parquet out) against `mlflow models predict --env-manager local` on the
     same file and model, alternating, median of --cli-runs each; goal mlkit <= 0.5x MLflow. Again through a warm process
     (`mlkit warm`, started once: its start is not counted).
  2. throughput: `mlkit.score.score_file` (Parquet in, chunked, checked, Parquet out) against in-process `predict_proba` on the
     whole frame already in memory, and peak memory (RSS, each case in a fresh process; the high-water mark is reset after the model loads) by chunk size.

    python bench/bench_score.py [--rows 200000] [--cli-runs 3] [--profile]   # about 3 minutes
  --profile: where one `mlkit score` spends its time (the slowest imports by `python -X importtime`, then cProfile of the CLI
  entry, cumulative), written beside the store (importtime.txt, score.prof.txt).
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

CASE = r'''
import json, os, sys, time
os.environ["OMP_NUM_THREADS"] = "1"
import pandas as pd, skops.io as sio
from mlkit.payload import ServedModel
from mlkit.score import score_file
d, case, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = sio.load(f"{d}/model.skops", trusted=sio.get_untrusted_types(file=f"{d}/model.skops"))
schema = json.load(open(f"{d}/schema.json"))
sm = ServedModel(m, schema=schema, name="credit", version="1", compile=False)
def vm(key):   # kB, from /proc/self/status
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key))
base = vm("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")   # reset the high-water mark: the imports and the model load reached a higher one
t = time.perf_counter()
if case == "whole":
    X = pd.read_parquet(f"{d}/in.parquet")
    t = time.perf_counter()
    m.predict_proba(X[sm.inputs]); rows = len(X)
else:
    rows = score_file(sm, f"{d}/in.parquet", f"{d}/out{chunk}.parquet", chunksize=chunk, progress=False)["rows"]
secs = time.perf_counter() - t
print(json.dumps({"rows_per_s": rows / secs, "peak_mb": vm("VmHWM:") / 1024, "base_mb": base / 1024}))
'''


def profile_cli(d:Path, env:dict, cmd:list) -> None:
    "The slowest imports (-X importtime) and a cProfile (cumulative, top 30) of one `mlkit score` run in `d`, printed and saved."
    entry = "import sys; from mlkit.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", entry, *cmd[1:]], cwd=d, env=env, capture_output=True, text=True)
    (d / "importtime.txt").write_text(r.stderr)
    rows = [l.split("|") for l in r.stderr.splitlines() if l.startswith("import time:") and l.count("|") == 2]
    top = sorted(((int(c), n.rstrip()) for _, c, n in rows if c.strip().isdigit()), reverse=True)[:15]
    print("slowest imports of one `mlkit score` (cumulative µs, nesting shown by indent):", *(f"  {c:>9} {n}" for c, n in top), sep="\n")
    code = ("import cProfile, pstats, io, sys\nfrom mlkit.cli import main\npr = cProfile.Profile(); pr.enable()\n"
            f"main({cmd[1:]!r})\npr.disable(); s = io.StringIO()\n"
            "pstats.Stats(pr, stream=s).sort_stats('cumulative').print_stats(30); open('score.prof.txt', 'w').write(s.getvalue())")
    subprocess.run([sys.executable, "-c", code], cwd=d, env=env, capture_output=True, check=True)
    print(f"cProfile of one `mlkit score` (imports included): {d / 'score.prof.txt'}\n", flush=True)


def cli_ratio(runs, profile=False):
    "Median seconds of `mlkit score` and `mlflow models predict` on the same 1,000 rows, alternating, and their ratio."
    import statistics
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_serve import BIN, train
    from mlkit import data as md
    d = Path(tempfile.mkdtemp(prefix="bench_score_cli_"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{d}/mlflow.db", "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}",
           "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}
    old = dict(os.environ); os.environ.update(env); cwd = os.getcwd(); os.chdir(d)
    try: train(d)
    finally: os.chdir(cwd); os.environ.clear(); os.environ.update(old)
    md.make_credit_data(1000, seed=3).drop(columns=["application_date", "default", "id"]).to_csv(d / "in.csv", index=False)
    cmds = {"mlkit": [str(BIN / "mlkit"), "score", "--model", "models:/credit@champion", "--input", "in.csv", "--output", "out.parquet"],
            "mlflow": [str(BIN / "mlflow"), "models", "predict", "-m", "models:/credit@champion", "-i", "in.csv", "-t", "csv",
                       "-o", "out.json", "--env-manager", "local"]}
    from _util import start_warm, stop_warm
    warm = start_warm(d, env)
    cmds["mlkit, warm"] = cmds["mlkit"]
    times = {k: [] for k in cmds}
    for _ in range(runs):
        for k, cmd in cmds.items():
            t = time.perf_counter(); r = subprocess.run(cmd, cwd=d, env={**env, **warm} if "warm" in k else env, capture_output=True, text=True)
            times[k].append(time.perf_counter() - t)
            if r.returncode: raise SystemExit(f"{k} failed: {r.stderr[-2000:]}")
    mk, mf = statistics.median(times["mlkit"]), statistics.median(times["mlflow"])
    print(f"mlkit score, 1,000 rows: ratio x{mk / mf:.2f} (goal <= 0.5) — mlkit {mk:.2f} s, mlflow models predict {mf:.2f} s "
          f"(medians of {runs}: {[round(t, 2) for t in times['mlkit']]} / {[round(t, 2) for t in times['mlflow']]})", flush=True)
    mw = statistics.median(times["mlkit, warm"]); stop_warm(warm, env)
    print(f"mlkit score, 1,000 rows, through a warm process (`mlkit warm`): ratio x{mw / mf:.2f} (goal <= 0.5) — {mw:.2f} s "
          f"({[round(t, 2) for t in times['mlkit, warm']]})\n", flush=True)
    if profile: profile_cli(d, env, cmds["mlkit"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cli-runs", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="also profile one `mlkit score` (imports and cProfile)")
    a = ap.parse_args()
    cli_ratio(a.cli_runs, a.profile)
    import skops.io as sio
    from mlkit import checks, data as md, models as mm
    d = Path(tempfile.mkdtemp(prefix="bench_score_"))
    df = md.make_credit_data(5000, seed=0).drop(columns=["application_date"])
    schema = checks.infer_schema(df, target="default", id_column="id")
    m = mm.make_model(schema, task="binary", seed=0).fit(df.drop(columns=["default", "id"]), df["default"])
    sio.dump(m, d / "model.skops"); (d / "schema.json").write_text(json.dumps(schema, default=str))
    big = md.make_credit_data(a.rows, seed=1).drop(columns=["application_date", "default"])
    big.to_parquet(d / "in.parquet", row_group_size=20_000)
    print(f"{a.rows} rows, {big.memory_usage(deep=True).sum() / 2**20:.0f} MB in memory as a DataFrame; Parquet row groups of 20000\n")
    print(f"{'case':>28} {'rows/s':>10} {'peak RSS MB':>12} {'over start MB':>14}")
    res = {}
    for case, chunk in [("whole", 0), ("chunked", 100_000), ("chunked", 20_000), ("chunked", 5_000)] * 2:  # two interleaved passes
        out = subprocess.run([sys.executable, "-c", CASE, str(d), case, str(chunk)], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if out.returncode: raise SystemExit(out.stderr)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        name = "in-process predict (whole)" if case == "whole" else f"mlkit score, chunk {chunk}"
        res.setdefault(name, []).append(r)
        print(f"{name:>28} {r['rows_per_s']:>10.0f} {r['peak_mb']:>12.0f} {r['peak_mb'] - r['base_mb']:>14.0f}", flush=True)
    base = max(r["rows_per_s"] for r in res["in-process predict (whole)"])
    print("\nthroughput ratio to in-process predict on the whole frame (best of two runs each; the machine is shared):")
    for k, v in res.items():
        if k.startswith("mlkit"): print(f"  {k}: x{max(r['rows_per_s'] for r in v) / base:.2f}, peak RSS over start {max(r['peak_mb'] - r['base_mb'] for r in v):.0f} MB")


if __name__ == "__main__":
    main()
