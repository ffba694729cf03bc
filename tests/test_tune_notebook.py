"""`mlkit tune NOTEBOOK`: an Optuna search over the parameters of a research notebook nobody wrote for mlkit.

Real components only: the `mlkit` console script, worker processes running the notebook's cells, a real SQLite MLflow store and
the default Optuna journal beside it, both in tmp_path. Every test here starts the console script, so all are slow."""
import math, re
from pathlib import Path

import nbformat
import pytest

from conftest import run_mlkit

pytestmark = pytest.mark.slow

SPACE = "alpha: {type: float, low: 0.01, high: 10, log: true}\ndepth: {type: int, low: 1, high: 6}\n"


def write_research(path, *, params="alpha = 1.0\ndepth = 3\nlabel = 'x'", log=True, figure=False):
    "A plain research notebook: a `parameters` cell, some work, the metric logged with plain mlflow; no kernelspec."
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}) if params else nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell("import math, mlflow"),
                nbformat.v4.new_code_cell("rmse = (math.log10(alpha) - 0.3) ** 2 + (depth - 4) ** 2 / 10 + 0.5")]
    if figure: nb.cells.append(nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([1, depth]); plt.show()"))
    if log: nb.cells.append(nbformat.v4.new_code_cell("mlflow.log_metric('rmse', rmse)\nmlflow.log_metric('size', depth * 2)"))
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def project(tmp_path):
    "(folder, env): a research notebook, a space file and a fresh SQLite MLflow store, all in tmp_path."
    write_research(tmp_path / "research.ipynb")
    (tmp_path / "space.yaml").write_text(SPACE)
    return tmp_path, {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}


def runs(tmp_path, experiment="mlkit"):
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def assert_refused(r, *patterns, code=2):
    "A refusal a user can act on: the exit code, the message, no traceback."
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    for p in patterns: assert re.search(p, r.stderr), r.stderr


def test_tunes_a_research_notebook_over_its_own_parameters(project):
    d, env = project
    write_research(d / "research.ipynb", figure=True)
    r = run_mlkit("tune", "research.ipynb", "--space", "space.yaml", "--metric", "rmse", "--direction", "minimize",
                  "--n-trials", "4", "--workers", "2", "--set", "parameters.label=tuned", cwd=d, env=env)
    assert r.returncode == 0, r.stderr
    parent_id = re.search(r"^run: (\w+)$", r.stdout, re.M).group(1)
    all_runs = {x.info.run_id: x for x in runs(d)}
    parent = all_runs[parent_id]
    import mlflow
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    trials = [x for x in all_runs.values() if x.data.tags.get("mlflow.parentRunId") == parent_id]
    assert parent.info.status == "FINISHED" and parent.data.tags["mlkit.objective"] == "minimize rmse"
    assert len(trials) == 4 and {t.info.status for t in trials} == {"FINISHED"}
    for t in trials:  # the trial's suggested parameters, inside the ranges; the notebook's own metrics in its run
        alpha, depth = float(t.data.params["alpha"]), int(t.data.params["depth"])
        assert 0.01 <= alpha <= 10 and 1 <= depth <= 6, t.data.params
        assert math.isclose(t.data.metrics["rmse"], (math.log10(alpha) - 0.3) ** 2 + (depth - 4) ** 2 / 10 + 0.5)
        assert t.data.metrics["size"] == depth * 2
        assert [a.path for a in client.list_artifacts(t.info.run_id, "figures")] == ["figures/cell03-1.png"]  # as `mlkit run`
    best = min(trials, key=lambda t: t.data.metrics["rmse"])
    assert parent.data.metrics["best_rmse"] == best.data.metrics["rmse"]
    assert parent.data.params["best.alpha"] == best.data.params["alpha"]
    assert parent.data.params["parameters.label"] == "tuned"
    assert f"best rmse {best.data.metrics['rmse']:.4f}" in r.stdout and "run the best configuration: mlkit run research.ipynb" in r.stdout
    assert (d / "optuna.journal").is_file()  # the default storage: a journal beside mlflow.db
    assert not any(x.info.status == "RUNNING" for x in all_runs.values())

    # the same command continues the study: 2 more trials, 6 nested runs in all across the two searches
    r2 = run_mlkit("tune", "research.ipynb", "--space", "space.yaml", "--metric", "rmse", "--direction", "minimize",
                   "--n-trials", "2", cwd=d, env=env)
    assert r2.returncode == 0, r2.stderr
    assert len([x for x in runs(d) if x.data.tags.get("mlflow.parentRunId")]) == 6


def test_a_metric_the_notebook_never_logs_fails_each_trial_with_the_reason(project):
    d, env = project
    r = run_mlkit("tune", "research.ipynb", "--space", "space.yaml", "--metric", "val_auc", "--direction", "maximize",
                  "--n-trials", "2", cwd=d, env=env)
    assert_refused(r, r"no trial completed \(2 failed", r"without logging the objective 'val_auc' \(it logged: \['rmse', 'size'\]\)")
    all_runs = runs(d)
    trials = [x for x in all_runs if x.data.tags.get("mlflow.parentRunId")]
    assert len(trials) == 2 and {t.info.status for t in trials} == {"FAILED"}
    assert all("val_auc" in t.data.tags["mlkit.error"] for t in trials)
    assert {x.info.status for x in all_runs if not x.data.tags.get("mlflow.parentRunId")} == {"FAILED"}  # the search's run


REFUSED = [
    ("alpah: {type: float, low: 0.1, high: 1}\n", [], r"unknown parameter 'alpah' — did you mean 'alpha'\?"),
    ("depth: {type: int, low: 9, high: 2}\n", [], r"low \(9\) is greater than high \(2\)"),
    ("depth: {type: float, low: 1, high: 2}\n", [], r"parameter 'depth' expects int"),
    ("alpha: {low: 1, high: 2}\n", [], r"needs type: int, float"),
    ("- alpha\n", [], r"search space file 'space.yaml' must hold a mapping"),
    (SPACE, ["--set", "parameters.alpah=2"], r"unknown parameter 'alpah'"),
    (SPACE, ["--direction", "auto"], r"does not know whether 'my_rmse' gets better up or down"),
]


@pytest.mark.parametrize("space,flags,message", REFUSED, ids=["undeclared", "low>high", "wrong-type", "no-type", "not-mapping",
                                                              "undeclared-fixed", "direction-auto"])
def test_bad_search_is_refused_before_anything_runs(project, space, flags, message):
    d, env = project
    (d / "space.yaml").write_text(space)
    metric = ["--metric", "my_rmse"] if "--direction" in flags else ["--metric", "rmse", "--direction", "minimize"]
    r = run_mlkit("tune", "research.ipynb", "--space", "space.yaml", *metric, *flags, cwd=d, env=env)
    assert_refused(r, message)
    assert runs(d) == [] and not (d / "optuna.journal").exists()  # no run, no study


def test_other_refusals(project):
    d, env = project
    write_research(d / "plain.ipynb", params=None)
    cases = [(["research.ipynb", "--space", "nope.yaml", "--metric", "rmse"], r"search space file 'nope.yaml' not found"),
             (["plain.ipynb", "--space", "space.yaml", "--metric", "rmse"], r"has no cell tagged 'parameters'"),
             (["missing.ipynb", "--space", "space.yaml", "--metric", "rmse"], r"notebook 'missing.ipynb' not found"),
             (["research.ipynb", "--space", "space.yaml"], r"search.metric is not set"),
             (["--space", "space.yaml"], r"--space is the search space of a notebook of your own")]
    for args, message in cases:
        assert_refused(run_mlkit("tune", *args, cwd=d, env=env), message)
    assert runs(d) == [] and not (d / "optuna.journal").exists()


def test_values_logged_with_a_step_prune_trailing_trials(project):
    d, env = project
    write_research(d / "steps.ipynb", params="alpha = 1.0\ndepth = 1", log=False)
    nb = nbformat.read(str(d / "steps.ipynb"), as_version=4)  # the objective reported at 3 steps: depth each time
    nb.cells.append(nbformat.v4.new_code_cell("import mlkit\nfor k in range(3): mlkit.log_metric('rmse', float(depth), step=k)"))
    nbformat.write(nb, str(d / "steps.ipynb"))
    (d / "steps.yaml").write_text("depth: {type: categorical, choices: [1, 9]}\n")
    r = run_mlkit("tune", "steps.ipynb", "--space", "steps.yaml", "--metric", "rmse", "--direction", "minimize", "--n-trials", "6",
                  "--set", "search.sampler=random", "--set", "search.startup_trials=1", "--set", "search.pruner=median",
                  cwd=d, env=env)
    assert r.returncode == 0, r.stderr
    trials = sorted((x for x in runs(d) if x.data.tags.get("mlflow.parentRunId")), key=lambda t: int(t.data.tags["mlkit.trial_number"]))
    pruned = [t for t in trials if t.info.status == "KILLED"]
    assert pruned and all(t.data.params["depth"] == "9" for t in pruned), [(t.data.params, t.info.status) for t in trials]
    assert {t.data.tags["mlkit.trial_state"] for t in pruned} == {"pruned"}
    import mlflow
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])  # stopped at its first report: the later steps never ran
    assert {tuple(m.step for m in client.get_metric_history(t.info.run_id, "rmse")) for t in pruned} == {(0,)}
    assert f"{len(pruned)} pruned" in r.stdout
    assert {t.info.status for t in trials if t not in pruned} == {"FINISHED"}


def test_a_killed_worker_loses_no_completed_trial_and_leaves_nothing_running(project):
    "Issue 9's done-when: 2 workers on a research notebook, one killed mid-trial; the budget is finished and the record is whole."
    import os, signal, subprocess
    from conftest import mlkit_cmd
    from test_tune import fresh_claim, journal_study, wait_for
    d, env = project
    write_research(d / "research.ipynb", params="alpha = 1.0\ndepth = 3\nlabel = 'x'\nimport time; time.sleep(0.7)")
    proc = subprocess.Popen(mlkit_cmd("tune", "research.ipynb", "--space", "space.yaml", "--metric", "rmse", "--direction",
                                      "minimize", "--n-trials", "8", "--workers", "2"), cwd=d, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    name = "mlkit-research-tune"
    try:
        victim, complete_before = wait_for(lambda: fresh_claim(d, name, within=0.4), proc=proc, timeout=240,
                                           what="a worker claiming its second trial")
        os.kill(victim.system_attrs["mlkit:heartbeat"]["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None: proc.kill(); proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    study = journal_study(d, name)
    by_number = {t.number: t for t in study.trials}
    assert len(study.trials) == 8 and not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    assert by_number[victim.number].state.name == "FAIL" and "died" in by_number[victim.number].user_attrs["error"]
    assert all(by_number[n].state.name == "COMPLETE" for n in complete_before)
    all_runs = runs(d)
    assert not [x for x in all_runs if x.info.status == "RUNNING"]
    parent_id = re.search(r"^run: (\w+)$", out, re.M).group(1)
    trials = [x for x in all_runs if x.data.tags.get("mlflow.parentRunId") == parent_id]
    assert len(trials) == 8 and sorted(x.info.status for x in trials).count("FAILED") == 1, [x.info.status for x in trials]
