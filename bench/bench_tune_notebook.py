"""`mlkit tune NOTEBOOK`: what a trial costs beyond the notebook's own work, against one papermill execution per trial.

A research notebook whose cells do exactly 1 s of work (a busy loop on the clock) and log one metric. Measured in the same run:
  tune       `mlkit tune research.ipynb --n-trials N --workers 1`: each trial's wall time as Optuna records it (claim → tell,
             the notebook's cells with the trial's parameters injected, in the worker's own process) minus the 1 s of work
  papermill  the same notebook executed N times by papermill in one process (papermill imported once), each execution's wall
             time minus the 1 s of work: the kernel start and the notebook's imports, paid by every trial
Goal (issue 9): the overhead under 5 % of the trial. Usage: python bench/bench_tune_notebook.py [N]

`--profile [N]`: where a trial's overhead goes. The same search runs in this process (`tune_notebook(in_process=True)`, the
code path of a worker process) under cProfile, on a notebook whose cells do no work, so that everything measured is
overhead; prints the per-trial cost of the heaviest calls (cumulative time / N) and writes the stats to
/tmp/bench_tune_notebook.prof (read with `python -m pstats` or snakeviz).
"""
import os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import nbformat

BIN = Path(sys.executable).parent
WORK_S = 1.0
SPACE = "alpha: {type: float, low: 0.01, high: 10, log: true}\ndepth: {type: int, low: 1, high: 6}\n"


def research(path:Path, work_s:float=WORK_S) -> Path:
    "A notebook nobody wrote for mlkit: a parameters cell, `work_s` seconds of work, plain mlflow.log_metric."
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("alpha = 1.0\ndepth = 3", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import math, time\nimport mlflow"),
                nbformat.v4.new_code_cell(f"t0 = time.perf_counter()\nwhile time.perf_counter() - t0 < {work_s}: sum(range(1000))"),
                nbformat.v4.new_code_cell("rmse = (math.log10(alpha) - 0.3) ** 2 + (depth - 4) ** 2 / 10\nmlflow.log_metric('rmse', rmse)")]
    nbformat.write(nb, str(path))
    return path


def tune_trials(d:Path, n:int) -> tuple[list[float], float]:
    "(per-trial wall seconds, whole command seconds) of one `mlkit tune` with one worker."
    import optuna
    from optuna.storages.journal import JournalFileBackend
    (d / "space.yaml").write_text(SPACE)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{d}/mlflow.db", "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run([BIN / "mlkit", "tune", "research.ipynb", "--space", "space.yaml", "--metric", "rmse", "--direction", "minimize",
                    "--n-trials", str(n), "--workers", "1"], cwd=d, env=env, check=True, capture_output=True)
    whole = time.perf_counter() - t0
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(d / "optuna.journal")))
    study = optuna.load_study(study_name="mlkit-research-tune", storage=storage)
    return [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials], whole


def papermill_trials(d:Path, n:int) -> list[float]:
    "Wall seconds of each of `n` papermill executions of the notebook (one kernel each), papermill imported once."
    import papermill as pm
    out = []
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{d}/pm.db"
    try:
        for i in range(n + 1):                               # the first one creates the store: dropped
            t0 = time.perf_counter()
            pm.execute_notebook(str(d / "research.ipynb"), str(d / f"out{i}.ipynb"), parameters={"alpha": 0.5 + i, "depth": 2},
                                kernel_name="python3", language="python", progress_bar=False, cwd=str(d))
            out.append(time.perf_counter() - t0)
    finally:
        if env_uri is None: os.environ.pop("MLFLOW_TRACKING_URI", None)
        else: os.environ["MLFLOW_TRACKING_URI"] = env_uri
    return out[1:]


def profile(n:int, out:str="/tmp/bench_tune_notebook.prof"):
    "cProfile of `n` trials of a notebook that does no work, run in this process; prints the heaviest calls per trial."
    import cProfile, pstats
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as t:
        d = Path(t); research(d / "research.ipynb", work_s=0.0); (d / "space.yaml").write_text(SPACE)
        os.environ.update(MLFLOW_TRACKING_URI=f"sqlite:///{d}/mlflow.db", OMP_NUM_THREADS="1"); os.chdir(d)
        from mlkit.notebook_search import tune_notebook
        def search(trials:int, experiment:str|None=None):
            tune_notebook("research.ipynb", space="space.yaml", experiment=experiment, in_process=True, progress=False,
                          sets=["search.metric=rmse", "search.direction=minimize", f"search.n_trials={trials}"])
        search(2, "warm-up")        # the store, the imports and the shell exist: what follows is per-trial cost
        prof = cProfile.Profile(); t0 = time.perf_counter()
        prof.enable(); search(n)
        prof.disable()
        whole = time.perf_counter() - t0; os.chdir(here)
    prof.dump_stats(out)
    print(f"{n} trials of a no-work notebook in one process, profiled: {whole:.2f} s ({whole / n * 1000:.0f} ms a trial incl. "
          f"the search's start and summary); stats in {out}")
    st = pstats.Stats(out); st.sort_stats("cumulative")
    rows = sorted(((v[3] / n * 1000, f"{Path(k[0]).name}:{k[1]}({k[2]})") for k, v in st.stats.items()), reverse=True)
    for ms, name in rows[:45]: print(f"{ms:8.1f} ms/trial  {name}")


def main(n:int):
    with tempfile.TemporaryDirectory() as t:
        d = Path(t); research(d / "research.ipynb")
        pm = papermill_trials(d, max(3, n // 2))
        tr, whole = tune_trials(d, n)
    tune_over, pm_over = statistics.median(tr) - WORK_S, statistics.median(pm) - WORK_S
    print(f"per trial (medians): mlkit tune {statistics.median(tr):.3f} s (overhead {tune_over * 1000:.0f} ms = "
          f"{tune_over / statistics.median(tr):.1%} of the trial; goal < 5 %) vs papermill {statistics.median(pm):.3f} s "
          f"(overhead {pm_over * 1000:.0f} ms = {pm_over / statistics.median(pm):.1%}); ratio of overheads "
          f"{tune_over / pm_over:.3f}; {n} tune trials, {len(pm)} papermill executions, notebook work {WORK_S:.1f} s each")
    print(f"whole `mlkit tune` command: {whole:.1f} s for {n} trials ({whole / n:.2f} s a trial with start-up, study and refit-free "
          f"summary); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--profile"]
    (profile if "--profile" in sys.argv else main)(int(args[0]) if args else (20 if "--profile" in sys.argv else 8))
