"""Helpers of the operations tests (tests/test_ops_*.py): external tools, cached tool venvs, servers on 127.0.0.1."""
import fcntl, json, os, shutil, socket, subprocess, sys, time
from pathlib import Path
import pytest
from conftest import mlkit_cmd

CACHE_ROOT = Path(os.environ.get("MLKIT_TEST_CACHE", Path.home() / ".cache" / "mlkit-test"))
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def need_binary(name:str, apt:str) -> str:
    "The path of the executable `name`; skipped with the install command when it is missing, but a failure under CI."
    path = shutil.which(name)
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):     # Debian's package, as PostgreSQL's (tests/servers.py)
        subprocess.run(["apt-get", "install", "-y", "-q", apt], capture_output=True, timeout=900)
        path = shutil.which(name)
    if path: return path
    msg = f"'{name}' is not installed: apt-get install -y {apt}"
    if os.environ.get("CI"): pytest.fail(msg + " (CI must install it in .ci/run)")
    pytest.skip(msg)


def tool_venv(name:str, requirements:list[str]) -> Path:
    """A venv holding `requirements`, built once under ~/.cache/mlkit-test/<name>-py<X.Y> and reused; returns its bin folder.
    For tools that are not mlkit dependencies (the folder name should carry their versions, so a new pin builds a new venv)."""
    dest = CACHE_ROOT / f"{name}-py{PY}"
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / f"{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / "ready.json").exists():          # absent after an interrupted or failed build: start again
            shutil.rmtree(dest, ignore_errors=True)
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-m", "venv", dest], check=True)
            r = subprocess.run([dest / "bin" / "pip", "install", "-q", *requirements], capture_output=True, text=True)
            if r.returncode:
                msg = f"pip install {' '.join(requirements)} failed:\n{r.stderr[-2000:]}"
                if os.environ.get("CI"): pytest.fail(msg)
                pytest.skip(msg)
            (dest / "ready.json").write_text(json.dumps({"requirements": requirements, "install_s": round(time.monotonic() - t0, 1)}))
    return dest / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, *, timeout:float=180, interval:float=0.2, what:str="condition"):
    "Call `check()` until it returns a truthy value (returned) or `timeout` seconds pass (AssertionError with the last error)."
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            if (v := check()): return v
        except Exception as e:             # not up yet: keep polling, remember why
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f": {last!r}" if last else ""))


def start(cmd, *, log:Path, env=None, cwd=None) -> subprocess.Popen:
    "Start a server process writing to `log`; stop it with `stop`."
    f = open(log, "w")
    return subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=cwd)


def stop(p:subprocess.Popen):
    "Stop a process started by `start` (SIGTERM, then SIGKILL after 10 s)."
    if p.poll() is None:
        p.terminate()
        try: p.wait(10)
        except subprocess.TimeoutExpired: p.kill(); p.wait(5)


def start_serve(store:dict, *, port:int, log:Path, token:str|None=None, extra=()) -> subprocess.Popen:
    "A real `mlkit serve` of `store`'s champion on 127.0.0.1:`port`."
    env = {"MLFLOW_TRACKING_URI": store["uri"], "MLKIT_SERVE_TOKEN": token or ""}
    return start(mlkit_cmd("serve", "--model", "models:/credit@champion", "--port", port, "--log-dir", "none", *extra),
                 log=log, env=env, cwd=store["dir"])
