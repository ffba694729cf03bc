"""Batch-scoring benchmark: `mlkit.score.score_file` (Parquet in, chunked, checked, Parquet out) against in-process
`predict_proba` on the whole frame already in memory; and peak memory (RSS, each case in a fresh process) by chunk size.

    python bench/bench_score.py [--rows 200000]        # about 1.5 minutes
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

CASE = r'''
import json, os, resource, sys, time
os.environ["OMP_NUM_THREADS"] = "1"
import pandas as pd, skops.io as sio
from mlkit.payload import ServedModel
from mlkit.score import score_file
d, case, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = sio.load(f"{d}/model.skops", trusted=sio.get_untrusted_types(file=f"{d}/model.skops"))
schema = json.load(open(f"{d}/schema.json"))
sm = ServedModel(m, schema=schema, name="credit", version="1", compile=False)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if case == "whole":
    X = pd.read_parquet(f"{d}/in.parquet")
    t = time.perf_counter()
    m.predict_proba(X[sm.inputs]); rows = len(X)
else:
    rows = score_file(sm, f"{d}/in.parquet", f"{d}/out{chunk}.parquet", chunksize=chunk, progress=False)["rows"]
secs = time.perf_counter() - t
print(json.dumps({"rows_per_s": rows / secs, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "base_mb": base / 1024}))
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    a = ap.parse_args()
    import skops.io as sio
    from mlkit import data as md, models as mm
    d = Path(tempfile.mkdtemp(prefix="bench_score_"))
    df = md.make_credit_data(5000, seed=0).drop(columns=["application_date"])
    schema = md.infer_schema(df, target="default", id_column="id")
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
