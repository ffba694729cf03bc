"""`mlkit warm`: a command forked from the warm process is the same command run cold — output, exit code, the MLflow record, signals,
a killed caller — and whatever the warm process cannot honour runs cold, with a note."""
import os, signal, subprocess, time
from pathlib import Path
import pytest
from conftest import ROOT, mlkit_cmd, run_mlkit
from notebooks import notebook_text as _notebook
from test_contract import SLEEPER, _client, _runs, _wait
from mlkit import warm as W

pytestmark = pytest.mark.slow   # each warm process imports everything first (about 7 s)


def _start_warm(d, idle=600):
    env = {"MLKIT_WARM": "1", "MLKIT_WARM_SOCKET": str(d / "warm.sock")}
    r = run_mlkit("warm", "--idle", idle, env=env, timeout=300)
    assert r.returncode == 0 and "ready in" in r.stdout, r.stdout + r.stderr
    return {"env": env, "sock": d / "warm.sock"}


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    w = _start_warm(tmp_path_factory.mktemp("warm"))
    yield w
    run_mlkit("warm", "--stop", env=w["env"])


def _served(w): return W.status(w["sock"])["served"]


def _record(d):
    c = _client(d)
    [(run_id, status)] = _runs(d)
    r = c.get_run(run_id)
    arts = sorted(a.path for top in c.list_artifacts(run_id) for a in ([top] if not top.is_dir else c.list_artifacts(run_id, top.path)))
    return status, r.data.params, r.data.metrics, r.data.tags, arts


def test_a_training_run_through_the_warm_process_records_what_a_cold_one_does(warm, tmp_path):
    (tmp_path / "warm").mkdir(); (tmp_path / "cold").mkdir()
    before = _served(warm)
    uri = lambda d: {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / d}/mlflow.db"}
    hot = run_mlkit("run", "train", "-p", ROOT / "params" / "ci.yaml", cwd=tmp_path / "warm", env={**warm["env"], **uri("warm")})
    cold = run_mlkit("run", "train", "-p", ROOT / "params" / "ci.yaml", cwd=tmp_path / "cold", env=uri("cold"))
    assert (hot.returncode, cold.returncode) == (0, 0), hot.stderr + cold.stderr
    assert _served(warm) == before + 1                      # the first went through the warm process, the second did not
    assert "registered: credit-ci version 1" in hot.stdout and hot.stderr == cold.stderr
    (hs, hp, hm, ht, ha), (cs, cp, cm, ct, ca) = _record(tmp_path / "warm"), _record(tmp_path / "cold")
    assert (hs, cs) == ("FINISHED", "FINISHED")
    assert hp == cp and hm == cm and ha == ca               # same params, the same metric values (seeded), the same artifacts
    volatile = {"mlflow.runName", "mlkit.pid", "mlkit.pid_start", "mlkit.cwd", "mlkit.started", "mlkit.duration_s"}
    assert (Path(ht["mlkit.cwd"]).name, Path(ct["mlkit.cwd"]).name) == ("warm", "cold")   # each ran in its caller's folder
    assert set(ht) == set(ct) and {k: v for k, v in ht.items() if k not in volatile and "time" not in k} == \
           {k: v for k, v in ct.items() if k not in volatile and "time" not in k}
    assert int(ht["mlkit.pid"]) != W.status(warm["sock"])["pid"]   # a child did the work, not the warm process itself


@pytest.mark.parametrize("args,code,says", [(["promote", "nosuch"], 2, "error: no registered model 'nosuch'"),
                                            (["run", "nosuch"], 2, "unknown pipeline 'nosuch'"),
                                            (["--bogus"], 2, "unrecognized arguments: --bogus"),
                                            (["pipelines"], 0, "train")])
def test_output_and_exit_codes_are_the_cold_ones(warm, tmp_path, args, code, says):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    before = _served(warm)
    hot, cold = run_mlkit(*args, cwd=tmp_path, env={**warm["env"], **env}), run_mlkit(*args, cwd=tmp_path, env=env)
    assert (hot.returncode, hot.stdout, hot.stderr) == (cold.returncode, cold.stdout, cold.stderr) and hot.returncode == code
    assert says in hot.stdout + hot.stderr and "Traceback" not in hot.stderr
    assert _served(warm) == before + 1


def _start_slow(tmp_path, env):
    (tmp_path / "slow.ipynb").write_text(_notebook(SLEEPER))
    full = {**os.environ, **env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    p = subprocess.Popen(mlkit_cmd("run", "slow.ipynb", "--engine", "inprocess"), cwd=tmp_path, env=full, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    started = tmp_path / "started"
    _wait(lambda: (started.exists() and started.read_text().strip()) or p.poll() is not None, "the long cell to start")
    assert p.poll() is None, p.communicate()
    return p, int(started.read_text())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_to_the_caller_stops_the_command_as_it_would_stop_a_cold_one(warm, tmp_path, sig):
    p, cell_pid = _start_slow(tmp_path, warm["env"])
    assert cell_pid != p.pid                                # the cell runs in the forked child
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + sig and "Traceback" not in err, (p.returncode, err)
    [(run_id, status)] = _runs(tmp_path)
    assert status == "KILLED", err
    _wait(lambda: not Path(f"/proc/{cell_pid}").exists() or "Z" in Path(f"/proc/{cell_pid}/stat").read_text().rsplit(")", 1)[1][:3],
          "the child to end", timeout=60)


def test_a_killed_caller_leaves_no_run_running(warm, tmp_path):
    p, cell_pid = _start_slow(tmp_path, warm["env"])
    p.kill(); p.communicate(timeout=60)                     # kill -9: nothing of the caller can react
    _wait(lambda: _runs(tmp_path)[0][1] != "RUNNING", "the child to end its run", timeout=120)
    [(run_id, status)] = _runs(tmp_path)
    assert status == "KILLED" and "SIGTERM" in _client(tmp_path).get_run(run_id).data.tags["mlkit.error"]


def test_what_it_cannot_honour_runs_cold_with_a_note(warm, tmp_path):
    before = _served(warm)
    r = run_mlkit("--version", env={**warm["env"], "MPLBACKEND": "svg"})
    assert r.returncode == 0 and r.stdout.strip()
    assert "note: environment variables read at import differ: MPLBACKEND" in r.stderr and "running without the warm process" in r.stderr
    off = run_mlkit("--version", env={**warm["env"], "MLKIT_WARM": "0"})
    assert (off.returncode, off.stderr) == (0, "")
    assert _served(warm) == before                          # neither went through it


def test_it_stops_when_idle_and_when_mlkit_changes(tmp_path):
    (tmp_path / "a").mkdir(); (tmp_path / "b").mkdir()
    idle = _start_warm(tmp_path / "a", idle=2)
    _wait(lambda: not idle["sock"].exists(), "the idle warm process to stop", timeout=120)
    assert W.status(idle["sock"]) is None
    w = _start_warm(tmp_path / "b")
    code = Path(W.__file__).with_name("core.py")
    st = code.stat()
    try:
        os.utime(code, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # as an edit or a reinstall of mlkit would
        r = run_mlkit("--version", env=w["env"])
    finally: os.utime(code, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert r.returncode == 0 and "mlkit's code changed since the warm process started" in r.stderr
    _wait(lambda: not w["sock"].exists(), "the stale warm process to stop", timeout=60)
    assert run_mlkit("warm", "--status", env=w["env"]).returncode == 1


@pytest.mark.parametrize("garbage", [b"not json\n", b"[1, 2]\n", b'{"op": "run"}\n', b""])
def test_a_malformed_request_leaves_the_warm_process_serving(warm, garbage):
    import socket
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(warm["sock"])); s.sendall(garbage); s.shutdown(socket.SHUT_WR)
        s.recv(1 << 16)                                      # whatever it answers, or nothing: it closes
    assert W.status(warm["sock"])["pid"] > 0 and run_mlkit("pipelines", env=warm["env"]).returncode == 0
