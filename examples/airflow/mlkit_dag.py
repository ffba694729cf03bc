"""mlkit on Apache Airflow (3.x): validate → train → promote → monitor, and on a drift alert retrain → promote.

Every task calls the mlkit command line and decides by its exit code, so the DAG holds no ML logic of its own:
  validate            `mlkit params NAME -p FILE` for each params file: a typo fails the run before anything trains
  train, retrain      `mlkit run train -p FILE` (retrain: on the labelled new data); the new version is read from its output
  promote,            `mlkit promote NAME --version V`: 0 → `champion_moved`; 1 (the gate refused) → `champion_kept`,
  promote_retrained     a decision, not a failure: the run goes on and the refusal shows in the graph and the log
  monitor             `mlkit monitor --input BATCH` (or the serving log): 0 → `healthy`; 3 (drift alert) → `retrain`
Any other exit code fails its task (2 = bad input).

Configuration: the DAG's params (the "Trigger DAG" form, or `airflow dags trigger mlkit --conf '{"batch": "..."}'`), whose
defaults come from the workers' environment: MLKIT_WORKDIR, MLKIT_MODEL_NAME, MLKIT_TRAIN_PARAMS, MLKIT_PROMOTE_PARAMS,
MLKIT_MONITOR_PARAMS, MLKIT_BATCH, MLKIT_LABELS; MLKIT_BIN names the mlkit executable (default: `mlkit` on PATH) and
MLKIT_DAG_SCHEDULE a schedule such as `@daily` (default: none). The tracking store is MLFLOW_TRACKING_URI, as for any mlkit
command. Copy this file into the dags folder of an Airflow whose workers have mlkit installed; Airflow itself stays out of
mlkit's dependencies. `python mlkit_dag.py` runs it once, in-process, with `dag.test()`.
"""
from __future__ import annotations

import os, re, shlex, subprocess

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Param, TriggerRule, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

MLKIT = os.environ.get("MLKIT_BIN", "mlkit")
_env = os.environ.get


def _sets(items) -> list[str]:
    "`--set KEY=VALUE` arguments for a list of overrides."
    return [a for kv in items or [] for a in ("--set", kv)]


def _mlkit(*args, ok=(0,), quiet=False) -> tuple[int, str]:
    """Run `mlkit ARGS` in the run's working folder, its output going to the task log (with `quiet`, only when it fails);
    fail the task on an exit code not in `ok`. Returns the exit code and the output."""
    workdir = get_current_context()["params"]["workdir"]
    cmd = [MLKIT, *map(str, args)]
    print("$ " + shlex.join(cmd), flush=True)
    try:
        p = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except (FileNotFoundError, NotADirectoryError):
        if not os.path.isdir(workdir):
            raise AirflowFailException(f"workdir '{workdir}' is not a folder: set the DAG param workdir (or MLKIT_WORKDIR)") from None
        raise AirflowFailException(f"'{MLKIT}' not found: install mlkit on the Airflow workers or set MLKIT_BIN to its path") from None
    lines = []
    try:
        for line in p.stdout:
            if not quiet: print(line, end="", flush=True)
            lines.append(line)
        rc = p.wait()
    except BaseException:       # the task is being stopped (timeout, marked failed): stop mlkit too, which records its run as KILLED
        p.terminate()
        try: p.wait(60)
        except subprocess.TimeoutExpired: p.kill()
        raise
    if rc not in ok:
        if quiet: print("".join(lines), end="", flush=True)
        last = next((l.strip() for l in reversed(lines) if l.strip()), "(no output)")
        raise AirflowFailException(f"`{shlex.join(cmd)}` exited {rc}: {last}")
    return rc, "".join(lines)


def _trained_version(out:str, name:str) -> str:
    "The version number `mlkit run train` registered, from its output."
    m = re.search(rf"registered: {re.escape(name)} version (\d+)", out)
    if not m: raise AirflowFailException(f"the training run registered no version of '{name}': set model_name in the train params")
    return m.group(1)


def _promote(version:str, moved:str, kept:str) -> str:
    "`mlkit promote`: the task id of the branch to follow (`moved` on 0, `kept` on 1 = refused by the gate)."
    p = get_current_context()["params"]
    rc, _ = _mlkit("promote", p["model_name"], "--version", version, "-p", p["promote_params"], *_sets(p["promote_sets"]), ok=(0, 1))
    if rc == 1: print(f"WARNING: the gate refused {p['model_name']} v{version}; champion unchanged (see `mlkit history {p['model_name']}`)")
    return moved if rc == 0 else kept


@dag(dag_id="mlkit", schedule=_env("MLKIT_DAG_SCHEDULE") or None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
     catchup=False, max_active_runs=1, tags=["mlkit"], doc_md=__doc__,
     params={
         "workdir": Param(_env("MLKIT_WORKDIR", "."), type="string", description="folder the commands run in (relative paths start here)"),
         "model_name": Param(_env("MLKIT_MODEL_NAME", "credit"), type="string", description="registered model"),
         "train_params": Param(_env("MLKIT_TRAIN_PARAMS", "params/train.yaml"), type="string"),
         "promote_params": Param(_env("MLKIT_PROMOTE_PARAMS", "params/promote.yaml"), type="string"),
         "monitor_params": Param(_env("MLKIT_MONITOR_PARAMS", "params/monitor.yaml"), type="string"),
         "batch": Param(_env("MLKIT_BATCH", ""), type="string", description="new batch to monitor (CSV/Parquet); empty = the serving prediction log"),
         "log_dir": Param(_env("MLKIT_LOG_DIR", "prediction_log"), type="string", description="prediction log, when batch is empty"),
         "since": Param("24h", type="string", description="window of the prediction log"),
         "labels": Param(_env("MLKIT_LABELS", ""), type="string", description="labelled new data, trained on after an alert"),
         "train_sets": Param([], type="array", description="--set KEY=VALUE overrides of the training runs"),
         "promote_sets": Param([], type="array", description="--set overrides of the gate"),
         "monitor_sets": Param([], type="array", description="--set overrides of monitoring"),
     })
def mlkit_pipeline():
    @task
    def validate():
        "Check every params file the run will use against its schema: a typo stops here, in a second."
        p = get_current_context()["params"]
        _mlkit("params", "train", "-p", p["train_params"], "--set", f"model_name={p['model_name']}", *_sets(p["train_sets"]),
               quiet=True)
        _mlkit("params", "promote", "-p", p["promote_params"], *_sets(p["promote_sets"]), quiet=True)
        _mlkit("params", "monitor", "-p", p["monitor_params"], *_sets(p["monitor_sets"]), quiet=True)

    @task
    def train() -> str:
        p = get_current_context()["params"]
        _, out = _mlkit("run", "train", "-p", p["train_params"], "--set", f"model_name={p['model_name']}", *_sets(p["train_sets"]))
        return _trained_version(out, p["model_name"])

    @task.branch
    def promote(version:str) -> str: return _promote(version, "champion_moved", "champion_kept")

    @task.branch(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def monitor() -> str:
        p = get_current_context()["params"]
        batch = ["--input", p["batch"]] if p["batch"] else ["--from-log", p["log_dir"], "--since", p["since"]]
        rc, _ = _mlkit("monitor", "-p", p["monitor_params"], "--model", f"models:/{p['model_name']}@champion", *batch,
                       *_sets(p["monitor_sets"]), ok=(0, 3))
        return "healthy" if rc == 0 else "retrain"

    @task
    def retrain() -> str:
        p = get_current_context()["params"]
        if not p["labels"]: raise AirflowFailException("drift alert, but no labelled data to retrain on: set the DAG param labels (or MLKIT_LABELS)")
        _, out = _mlkit("run", "train", "-p", p["train_params"], "--set", f"model_name={p['model_name']}",
                        "--set", f"data.source={p['labels']}", *_sets(p["train_sets"]))
        return _trained_version(out, p["model_name"])

    @task.branch
    def promote_retrained(version:str) -> str: return _promote(version, "retrained_champion_moved", "retrained_champion_kept")

    version = train()
    validate() >> version
    gate, checked = promote(version), monitor()
    gate >> [EmptyOperator(task_id="champion_moved"), EmptyOperator(task_id="champion_kept")] >> checked
    checked >> EmptyOperator(task_id="healthy")
    new_version = retrain()
    checked >> new_version
    promote_retrained(new_version) >> [EmptyOperator(task_id="retrained_champion_moved"),
                                       EmptyOperator(task_id="retrained_champion_kept")]

dag_object = mlkit_pipeline()

if __name__ == "__main__":
    dag_object.test()
