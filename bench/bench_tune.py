"""Benchmark of `mlkit tune` on this machine (2 cores).

1. Throughput: trials per second with 1 and with 2 papermill workers on the same budget. Goal: ratio >= 1.7.
   Measured from the study's own timestamps (first trial start to last trial end), so that kernel start-up — paid once per
   worker, not per trial — is left out; the end-to-end wall time is printed too.
2. Overhead: storage (claim, suggest, report, tell, heartbeat) plus MLflow tracking (one nested run per trial) per trial, as a
   fraction of the time spent fitting. Goal: <= 5 %. Measured in-process with `run_worker`, which times both.
3. Stopping: seconds from SIGTERM to the exit of `mlkit tune --workers 2` stopped mid-trials (workers killed, trial runs
   ended, parent run KILLED). Goal: well under the 30 s a container runtime waits before SIGKILL.

Trials are CPU-bound (~1 s each: HistGradientBoosting, 3 folds, one thread) so that per-trial costs are not dwarfed by noise.
Other processes on the machine skew absolute numbers: read the ratios, and rerun on a quiet machine for final figures.

Run: python bench/bench_tune.py [--trials 10] [--rows 3000] [--stops 2]
"""
import argparse, os, signal, subprocess, sys, tempfile, time
from pathlib import Path


def make_params(experiment, *, trials, rows, storage, study):
    from mlkit.search import TuneParams
    return TuneParams(experiment=experiment, data={"n_rows": rows, "id_column": "id", "drop_columns": ["application_date"]},
                      evaluate={"cv_folds": 3, "plots": False, "explain": False},
                      search={"n_trials": trials, "pruner": "none", "refit": False, "storage": storage, "study_name": study,
                              "space": {"hist_gradient_boosting": {"learning_rate": {"type": "float", "low": 0.05, "high": 0.2, "log": True},
                                                                   "max_leaf_nodes": {"type": "int", "low": 15, "high": 31},
                                                                   "max_iter": 80, "early_stopping": False}}})


def throughput(study):
    "Trials per second between the first trial start and the last trial end."
    ts = [t for t in study.trials if t.datetime_start and t.datetime_complete]
    span = max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts)
    return len(ts) / span.total_seconds(), span.total_seconds()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--stops", type=int, default=2, help="SIGTERM stops to time (0: skip)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    os.chdir(work)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    import optuna, mlflow
    from mlkit.study import open_storage, prepare_study
    from mlkit.workers import run_worker
    from mlkit.tune import tune
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"journal:{work}/optuna.journal"
    client = mlflow.MlflowClient()
    client.search_experiments()  # create the MLflow tables before timing anything

    # --- 2. overhead per trial (in-process worker, tracked like a real worker)
    p = make_params("bench-overhead", trials=a.trials, rows=a.rows, storage=storage, study="overhead")
    prepare_study(storage=open_storage(storage), study_name="overhead", direction="maximize", metric="roc_auc", n_trials=a.trials)
    exp = client.create_experiment("bench-overhead")
    parent = client.create_run(exp, tags={"mlkit.pipeline": "tune"}).info.run_id
    s = run_worker(study_name="overhead", params=p, storage=storage, worker_id="bench-0", parent_run_id=parent)
    client.set_terminated(parent)
    fit, loop, n = s["fit_s"], s["loop_s"], s["trials"]
    overhead = (loop - fit) / n
    print(f"overhead (timed inside the worker): {n} trials, fitting {fit / n:.3f} s/trial, storage+tracking+sampling "
          f"{overhead * 1000:.1f} ms/trial = {overhead / (fit / n):.1%} of fitting time (goal <= 5 %)")
    # the same configurations again with no storage and no tracking at all: the wall-clock baseline
    from mlkit.training import prepare_training_data
    from mlkit.workers import evaluate_config
    from mlkit.core import limit_threads
    limit_threads(1)
    data = prepare_training_data(p)
    t0 = time.perf_counter()
    for t in optuna.load_study(study_name="overhead", storage=open_storage(storage)).trials:
        evaluate_config(optuna.trial.FixedTrial(t.params), params=p, data=data, metric="roc_auc")
    base = (time.perf_counter() - t0) / n
    print(f"overhead (wall clock vs. the same trials untracked): {loop / n:.3f} vs {base:.3f} s/trial = {(loop / n - base) / base:+.1%} "
          "(noisy on a loaded machine: compare with the line above)")

    # --- 1. throughput, 1 vs 2 papermill workers, same budget
    rates = {}
    for workers in (1, 2):
        name = f"throughput-{workers}"
        t0 = time.perf_counter()
        tune(make_params(f"bench-{workers}w", trials=a.trials, rows=a.rows, storage=storage, study=name), workers=workers, progress=False)
        wall = time.perf_counter() - t0
        rate, span = throughput(optuna.load_study(study_name=name, storage=open_storage(storage)))
        rates[workers] = rate
        print(f"{workers} worker(s): {a.trials} trials in {span:.1f} s of trials = {rate:.3f} trials/s (end to end {wall:.1f} s incl. start-up)")
    print(f"ratio 2 workers / 1 worker: {rates[2] / rates[1]:.2f} (goal >= 1.7)")

    # --- 3. SIGTERM mid-trials: time to a clean exit
    import yaml
    for i in range(a.stops):
        name, cfg = f"stop-{i}", work / f"stop-{i}.yaml"
        cfg.write_text(yaml.safe_dump(make_params(f"bench-stop-{i}", trials=a.trials, rows=a.rows, storage=storage,
                                                  study=name).model_dump(mode="json")))
        with open(work / f"stop-{i}.log", "w") as log:
            proc = subprocess.Popen([str(Path(sys.executable).parent / "mlkit"), "tune", "-p", str(cfg), "--workers", "2"],
                                    stdout=log, stderr=log)
        while proc.poll() is None:  # wait for one complete and one running trial
            try: trials = optuna.load_study(study_name=name, storage=open_storage(storage)).get_trials(deepcopy=False)
            except KeyError: trials = []
            if {"COMPLETE", "RUNNING"} <= {t.state.name for t in trials}: break
            time.sleep(0.05)
        t0 = time.perf_counter(); proc.send_signal(signal.SIGTERM); code = proc.wait(timeout=300)
        print(f"SIGTERM mid-trials → exit {code} in {time.perf_counter() - t0:.1f} s (2 workers)")
    print(f"(load average now: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores; results folder {work})")


if __name__ == "__main__":
    sys.exit(main())
