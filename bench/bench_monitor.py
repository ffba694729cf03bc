"""The monitoring job against its own work, on 1,000 and 1,000,000 rows (issue 12 goal: the job costs at most its work + 2 s).

Work (the baseline): read the batch and run `mlkit.drift.drift_report` on it — features, the model's predictions (one pass),
target drift and performance — with the model and its profile already in memory.
Candidate: `mlkit.monitor.run_monitor(params)` on the same batch file: loads the model and its profile from the MLflow store,
reads the batch, reports, records one MLflow run (params, metrics, tags, verdict.json, report.html, overlay PNGs).
Both run in this process, alternated, after one warm-up of each; medians, ratio and difference are printed.

With --cli, the same comparison in fresh processes: `mlkit monitor --model ... --input ...` (imports included) against a
`python -c` doing the work alone (imports, the model from its skops file, the profile from JSON, read + drift_report); and the
same command through a warm process (`mlkit warm`, started once, not counted).
With --profile, where `run_monitor`'s time goes on the largest batch (cProfile, cumulative).

    python bench/bench_monitor.py [--rows 1000 1000000] [--repeats 3] [--cli] [--profile]
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np, pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from _util import report, start_warm, stop_warm


def make_store(home: Path) -> dict:
    "A SQLite store in `home` holding the credit model the train pipeline would make (registered as credit v1)."
    import mlflow
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from mlkit import tracking
    from mlkit.checks import infer_schema
    from mlkit.data import make_credit_data
    from mlkit.evaluate import compute_metrics
    from mlkit.features import make_preprocessor
    from mlkit.profile import make_profile
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home}/mlflow.db"; tracking.configure()
    for e in ("bench", "mlkit-monitor"): mlflow.create_experiment(e, artifact_location=(home / e).as_uri())
    df = make_credit_data(5000, seed=0)
    schema = infer_schema(df, target="default", time_column="application_date")
    feats = [c for c in df.columns if c not in ("default", "id", "application_date")]
    tr, te = df.iloc[:4000], df.iloc[4000:]
    model = Pipeline([("preprocess", make_preprocessor(schema)),
                      ("estimator", HistGradientBoostingClassifier(max_iter=100, random_state=0))]).fit(tr[feats], tr["default"])
    profile = make_profile(tr[feats], schema=schema, model=model, X_pred=te[feats], target=tr["default"])
    metrics = {f"test_{k}": v for k, v in compute_metrics(model, te[feats], te["default"], task="binary").items()}
    mlflow.set_experiment("bench")
    with mlflow.start_run():
        tracking.log_model(model, X_sample=tr[feats], schema=schema, task="binary", profile=profile,
                           metrics={**metrics, "primary_metric": "roc_auc"}, model_name="credit")
    return {"uri": "models:/credit/1", "model": model, "profile": profile, "metrics": metrics}


def timed(f):
    t = time.perf_counter(); out = f(); return time.perf_counter() - t, out


def previous_steps(params):
    "The steps of the previous monitor notebook, in process: meta and model loaded apart (MLflow's model info, pure-Python YAML"
    " twice, two downloads), metrics, JSON, HTML and each PNG logged by separate calls (every overlay rendered twice)."
    import mlflow
    from mlkit import tracking
    from mlkit.monitor import read_batch, batch_labels, drift_report, report_payload, flagged_figures, report_html, report_metrics
    meta, model = tracking.load_model_meta(params.model), tracking.load_sklearn_model(params.model)
    batch = read_batch(params)
    y = batch_labels(batch, None, id_column="id", target=meta["schema"]["target"])
    rep = drift_report(batch, meta["profile"], params=params, model=model, y=y, task=meta["task"], holdout_metrics=meta["metrics"])
    tracking.start_run(pipeline="monitor", params=params)
    payload, figures = report_payload(rep, model=params.model), flagged_figures(rep, params.max_plots)
    tracking.log_metrics(report_metrics(rep)); tracking.log_json(payload, "monitor/verdict.json")
    mlflow.log_text(report_html(rep, figures=figures), "monitor/report.html")
    if figures: tracking.log_figures(figures, "monitor/plots")
    tracking.set_tags({"mlkit.monitor.verdict": rep.verdict}); mlflow.end_run()


def in_process(store, path, repeats):
    "(work, job, previous steps: seconds each; the job's last result) for the batch at `path`."
    from mlkit.drift import drift_report
    from mlkit.monitor import MonitorParams, run_monitor
    params = MonitorParams(model=store["uri"], input=str(path))
    def work():
        b = pd.read_parquet(path)
        return drift_report(b, store["profile"], params=params, model=store["model"], y=b["default"], task="binary",
                            holdout_metrics=store["metrics"])
    work(); run_monitor(params); previous_steps(params)                  # warm-up: imports, caches, the store's first queries
    w, j, o = [], [], []
    for _ in range(repeats):                                             # alternated, so that outside load hits all alike
        w.append(timed(work)[0])
        t, res = timed(lambda: run_monitor(params)); j.append(t)
        o.append(timed(lambda: previous_steps(params))[0])
    return w, j, o, res


WORK_SCRIPT = """
import json, sys, pandas as pd, skops.io as sio
from mlkit.drift import drift_report
model = sio.load(sys.argv[1], trusted=sio.get_untrusted_types(file=sys.argv[1]))
profile, metrics = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
b = pd.read_parquet(sys.argv[4])
drift_report(b, profile, model=model, y=b["default"], task="binary", holdout_metrics=metrics)
"""


WARM = {}   # the variables that send a command through the warm process started for --cli


def fresh_processes(store, home, path, repeats):
    "(work seconds, `mlkit monitor` seconds): both as new processes, imports included."
    import skops.io as sio
    (home / "model.skops").write_bytes(sio.dumps(store["model"]))
    (home / "profile.json").write_text(json.dumps(store["profile"])); (home / "metrics.json").write_text(json.dumps(store["metrics"]))
    work = [sys.executable, "-c", WORK_SCRIPT, str(home / "model.skops"), str(home / "profile.json"), str(home / "metrics.json"),
            str(path)]
    cli = [str(Path(sys.executable).parent / "mlkit"), "monitor", "--model", store["uri"], "--input", str(path)]
    w, c, h = [], [], []
    for _ in range(repeats):
        w.append(timed(lambda: subprocess.run(work, check=True, capture_output=True, cwd=home))[0])
        for out, env in ((c, os.environ), (h, {**os.environ, **WARM})):
            t, r = timed(lambda: subprocess.run(cli, capture_output=True, cwd=home, text=True, env=env)); out.append(t)
            if r.returncode not in (0, 3): raise SystemExit(f"mlkit monitor failed ({r.returncode}): {r.stderr[-2000:]}")
    return w, c, h


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cli", action="store_true", help="also compare fresh processes: `mlkit monitor` vs the work alone")
    ap.add_argument("--profile", action="store_true", help="print where run_monitor spends its time on the largest batch")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mlkit.data import make_credit_data
    home = Path(tempfile.mkdtemp(prefix="mlkit-bench-monitor-"))
    t, store = timed(lambda: make_store(home))
    print(f"setup: store + model (HistGradientBoosting, 5,000 rows) in {t:.1f} s, {home}")
    for n in a.rows:
        path = home / f"batch-{n}.parquet"
        make_credit_data(n, seed=1).to_parquet(path)
        w, j, o, res = in_process(store, path, a.repeats)
        report(f"{n:>9,} rows, in process", "work (read + drift_report)", w, "run_monitor", j, goal="job <= work + 2 s")
        report(f"{n:>9,} rows, in process", "the previous notebook's steps", o, "run_monitor", j)
        pair = statistics.median(b - a for a, b in zip(w, j))              # robust to load that drifts between repeats
        print(f"{'':>11}verdict {res.verdict}, {len(res.payload['alerts'])} alerts, {len(res.payload['tests'])} tests; "
              f"median of the paired differences job - work {pair:+.2f} s ({'PASS' if pair <= 2 else 'FAIL'}), "
              f"job - previous steps {statistics.median(b - a for a, b in zip(o, j)):+.2f} s")
        if a.cli:
            if not WARM: WARM.update(start_warm(home, dict(os.environ)))
            w, c, h = fresh_processes(store, home, path, a.repeats)
            report(f"{n:>9,} rows, new processes", "work alone (python -c)", w, "mlkit monitor", c, goal="command <= work + 2 s")
            print(f"{'':>11}median of the paired differences {statistics.median(b - a for a, b in zip(w, c)):+.2f} s")
            report(f"{n:>9,} rows, new processes", "work alone (python -c)", w, "mlkit monitor via mlkit warm", h, goal="command <= work + 2 s")
            print(f"{'':>11}median of the paired differences {statistics.median(b - a for a, b in zip(w, h)):+.2f} s")
    if WARM: stop_warm(WARM, dict(os.environ))
    if a.profile:
        import cProfile, pstats
        from mlkit.monitor import MonitorParams, run_monitor
        params = MonitorParams(model=store["uri"], input=str(home / f"batch-{max(a.rows)}.parquet"))
        cProfile.runctx("run_monitor(params)", globals(), {"run_monitor": run_monitor, "params": params}, str(home / "monitor.prof"))
        pstats.Stats(str(home / "monitor.prof")).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
