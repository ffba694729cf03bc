"""The run contract: any notebook run by `mlkit run` is one MLflow run — params, lineage, metrics, figures, notebook, status —
and a stop (SIGTERM, SIGHUP, SIGKILL) never leaves it RUNNING or without its partial notebook."""
import json, os, signal, sqlite3, subprocess, time
from pathlib import Path
import pytest
from conftest import mlkit_cmd, run_mlkit
from notebooks import RESEARCH, notebook_text as _notebook


def _runs(d):
    db = Path(d) / "mlflow.db"
    if not db.exists(): return []
    with sqlite3.connect(db) as con: return con.execute("select run_uuid, status from runs").fetchall()


def _wait(cond, what, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond(): return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _client(d):
    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{d}/mlflow.db")
    return mlflow.MlflowClient()


@pytest.mark.slow
def test_a_notebook_nobody_wrote_for_mlkit_is_recorded_whole(tmp_path):
    (tmp_path / "research.ipynb").write_text(_notebook(RESEARCH))           # saved without kernelspec metadata
    r = run_mlkit("run", "research.ipynb", "--set", "alpha=0.5", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert r.returncode == 0, r.stderr
    assert "FINISHED" in r.stdout and "r2" in r.stdout
    assert "IPKernelApp" not in r.stderr and "Traceback" not in r.stderr, r.stderr   # the kernel's chatter stays in its log
    [(run_id, status)] = _runs(tmp_path)
    c = _client(tmp_path)
    run = c.get_run(run_id)
    assert status == "FINISHED"
    assert {k: run.data.params[k] for k in ("alpha", "seed", "n")} == {"alpha": "0.5", "seed": "0", "n": "200"}
    assert run.data.metrics["r2"] > 0.9 and "training_score" in run.data.metrics            # plain log_metric and autolog, same run
    for t in ("mlkit.git_commit", "mlkit.git_dirty", "mlkit.params_hash", "mlkit.version", "mlkit.packages", "mlkit.host", "mlkit.pid"):
        assert run.data.tags.get(t), f"missing tag {t}"
    assert run.data.tags["mlkit.seed"] == "0" and run.data.tags["mlkit.pipeline"] == "research"
    arts = {a.path for p in ("notebook", "figures", "diag") for a in c.list_artifacts(run_id, p)}
    assert {"notebook/research.ipynb", "notebook/kernel.log", "figures/cell03-1.png", "diag/fit.png"} <= arts, arts
    log = Path(c.download_artifacts(run_id, "notebook/kernel.log", str(tmp_path))).read_text()
    assert "Kernel is running" in log or log.strip() == "" or "IPKernelApp" in log


@pytest.mark.slow
def test_kernelspec_of_another_environment_runs_on_the_projects_kernel(tmp_path):
    (tmp_path / "nb.ipynb").write_text(_notebook(["k = 1", "import sys, mlflow; mlflow.log_param('python', sys.executable)"], kernelspec=True))
    r = run_mlkit("run", "nb.ipynb", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert r.returncode == 0, r.stderr
    [(run_id, _)] = _runs(tmp_path)
    from conftest import BIN
    assert Path(_client(tmp_path).get_run(run_id).data.params["python"]).parent == BIN


SLEEPER = ["minutes = 10", "import os, pathlib, time\npathlib.Path('started').write_text(str(os.getpid()))\ntime.sleep(60 * minutes)"]


def _start(tmp_path, *extra):
    (tmp_path / "slow.ipynb").write_text(_notebook(SLEEPER))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    return subprocess.Popen(mlkit_cmd("run", "slow.ipynb", *extra), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _gone(pid):
    try: os.kill(pid, 0)
    except ProcessLookupError: return True
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.slow
@pytest.mark.parametrize("sig,engine", [(signal.SIGTERM, "kernel"), (signal.SIGHUP, "kernel"), (signal.SIGTERM, "inprocess")])
def test_a_stopped_run_ends_killed_with_its_partial_notebook(tmp_path, sig, engine):
    p = _start(tmp_path, "--engine", engine)
    started = tmp_path / "started"   # the cell writes its pid there: wait for the pid itself, not for the file to exist
    _wait(lambda: (started.exists() and started.read_text().strip()) or p.poll() is not None, "the long cell to start")
    assert p.poll() is None, p.communicate()
    cell_pid = int(started.read_text())
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + sig, (p.returncode, err)
    assert "Traceback" not in err and "KILLED" in err, err
    [(run_id, status)] = _runs(tmp_path)
    assert status == "KILLED"
    c = _client(tmp_path)
    assert signal.Signals(sig).name in c.get_run(run_id).data.tags["mlkit.error"]
    nb = json.loads(Path(c.download_artifacts(run_id, "notebook/slow.ipynb", str(tmp_path))).read_text())
    assert any("started" in "".join(cell["source"]) for cell in nb["cells"])
    if engine == "kernel": _wait(lambda: _gone(cell_pid), "the kernel to exit", timeout=60)


@pytest.mark.slow
def test_a_killed_runner_leaves_a_run_the_next_run_ends(tmp_path):
    p = _start(tmp_path)
    _wait(lambda: (tmp_path / "started").exists() or p.poll() is not None, "the long cell to start")
    cell_pid = int((tmp_path / "started").read_text())
    p.kill(); p.communicate(timeout=60)
    os.kill(cell_pid, signal.SIGKILL)                       # the orphaned kernel goes too (as when a container is killed)
    [(first, status)] = _runs(tmp_path)
    assert status == "RUNNING"
    (tmp_path / "ok.ipynb").write_text(_notebook(["x = 1", "x"]))
    r = run_mlkit("run", "ok.ipynb", "--engine", "inprocess", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert r.returncode == 0, r.stderr
    statuses = dict(_runs(tmp_path))
    assert statuses[first] == "KILLED" and list(statuses.values()).count("FINISHED") == 1
    assert "stopped without ending it" in _client(tmp_path).get_run(first).data.tags["mlkit.error"]


@pytest.mark.slow
def test_in_process_contract(tmp_mlflow, tmp_path):
    "Quick tier: the same contract through the in-process engine, called as a library."
    import mlflow
    from mlkit.runner import run_notebook
    (tmp_path / "r.ipynb").write_text(_notebook(["alpha = 1.0", "import mlflow; mlflow.log_metric('twice', 2 * alpha)",
                                                 "import matplotlib.pyplot as plt; plt.plot([1, 2]); plt.show()", "raise RuntimeError('late')"]))
    res = run_notebook(tmp_path / "r.ipynb", sets=["alpha=4"], engine="inprocess")
    assert (res.status, res.metrics, res.error) == ("FAILED", {"twice": 8.0}, "cell 4 (raise RuntimeError('late')) raised RuntimeError: late")
    assert mlflow.active_run() is None
    c = mlflow.MlflowClient()
    assert c.get_run(res.run_id).data.params["alpha"] == "4" and c.get_run(res.run_id).info.status == "FAILED"
    assert [a.path for a in c.list_artifacts(res.run_id, "figures")] == ["figures/cell02-1.png"]
