"""Real servers for the team-mode tests, on 127.0.0.1 only: a PostgreSQL cluster (Debian's binaries) and an `mlflow server`
with MLflow's own basic-auth app, backed by that PostgreSQL, serving artifacts from a folder.

Loaded from conftest with `pytest_plugins = ["servers"]`. Fixtures:
- `pg_server` (session): one PostgreSQL cluster; `pg_server.create_database()` gives a fresh database URL.
- `postgres` (function): the URL of a fresh, empty database on `pg_server` (user `postgres`, no password).
- `pg_cluster` (function): a private cluster for a test that stops or restarts PostgreSQL.
- `mlflow_server` (session): `mlflow server --app-name basic-auth` on `pg_server`; `.create_user()`, `.grant()`, `.env(user)`.
Servers are waited for on a condition (a query or `/health` answering), never for a fixed time."""
from __future__ import annotations
import os, pwd, secrets, shutil, signal, socket, subprocess, sys, tempfile, time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
PG_VERSIONS = "/usr/lib/postgresql"


def free_port() -> int:
    "A TCP port free on 127.0.0.1 right now."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, *, timeout:float, what:str, proc=None, log:Path|None=None, every:float=0.1):
    "Poll `check()` until it returns a true value (returned); fail naming `what` (with the log tail) at the deadline or when `proc` exits."
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            got = check()
            if got: return got
        except Exception as e: last = e  # not up yet
        if proc is not None and proc.poll() is not None: break
        time.sleep(every)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    state = f"exited with {proc.returncode}" if proc is not None and proc.poll() is not None else f"not ready after {timeout:.0f} s"
    raise RuntimeError(f"{what} {state}; last error: {last!r}\n{tail}")


def pg_bindir() -> Path | None:
    "Folder of the newest installed PostgreSQL's binaries (Debian layout), or None."
    found = sorted(Path(PG_VERSIONS).glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _need_pg() -> Path:
    bindir = pg_bindir()
    if bindir is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], capture_output=True, timeout=900)
        bindir = pg_bindir()
    if bindir is None:
        if os.environ.get("CI") == "true": pytest.fail("PostgreSQL binaries not found in /usr/lib/postgresql/*/bin; install Debian's postgresql")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    return bindir


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port>. User `postgres` connects without a password (trust); other roles
    (made with `create_role`) must give theirs (scram-sha-256), so a password in a URL is really checked."""
    def __init__(self, root:Path|None=None):
        self.bindir = _need_pg()
        self.root = Path(root or tempfile.mkdtemp(prefix="mlkit-pg-"))
        self.data, self.log, self.port = self.root / "data", self.root / "server.log", free_port()
        self._as_pg = []
        if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user, in a folder it owns
            pw = pwd.getpwnam("postgres"); os.chown(self.root, pw.pw_uid, pw.pw_gid); self._as_pg = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8")
        hba = self.data / "pg_hba.conf"  # the superuser keeps password-less access from 127.0.0.1; every other role needs its password
        hba.write_text("host all postgres 127.0.0.1/32 trust\n" + hba.read_text())

    def _run(self, tool, *args, check=True, timeout=120):
        return subprocess.run([*self._as_pg, str(self.bindir / tool), *map(str, args)], check=check, capture_output=True, text=True, timeout=timeout)

    def start(self) -> "Postgres":
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o",
                  f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=200", "start")
        wait_until(self.ready, timeout=180, what="PostgreSQL", log=self.log)
        return self

    def ready(self) -> bool:
        return self._run("pg_isready", "-h", "127.0.0.1", "-p", self.port, check=False, timeout=10).returncode == 0

    def stop(self, mode:str="fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop", check=False, timeout=60)

    def restart(self, mode:str="fast") -> None:
        "Stop (dropping every connection) and start again on the same port."
        self.stop(mode); self.start()

    def sql(self, statement:str, db:str="postgres") -> str:
        r = self._run("psql", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-Atc", statement)
        return r.stdout.strip()

    def create_role(self, user:str, password:str) -> None:
        self.sql(f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'")

    def create_database(self, name:str|None=None, *, owner:str="postgres") -> str:
        "Create a database (a fresh name by default); returns its URL for `postgres` (SQLAlchemy style: postgresql://)."
        name = name or f"db_{secrets.token_hex(4)}"
        self._run("createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", "-O", owner, name)
        return self.url(name)

    def url(self, db:str, *, user:str="postgres", password:str|None=None, driver:str="") -> str:
        "`postgresql[+driver]://user[:password]@127.0.0.1:port/db`"
        auth = f"{user}:{password}" if password else user
        return f"postgresql{'+' + driver if driver else ''}://{auth}@127.0.0.1:{self.port}/{db}"

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class MlflowServer:
    """`mlflow server --app-name basic-auth` on 127.0.0.1:<free port>: tracking and registry in PostgreSQL database `mlflow`, users
    and permissions in database `mlflow_auth`, artifacts proxied by the server into `<root>/artifacts`. One worker, no job runner."""
    def __init__(self, pg:Postgres, root:Path, *, default_permission:str="READ"):
        self.pg, self.root, self.port = pg, Path(root), free_port()
        self.admin = ("admin", "adm-" + secrets.token_urlsafe(12))
        self.backend = pg.create_database("mlflow_" + secrets.token_hex(3)).replace("postgresql://", "postgresql+psycopg2://")
        auth_db = pg.create_database("mlflow_auth_" + secrets.token_hex(3)).replace("postgresql://", "postgresql+psycopg2://")
        self.artifacts, self.log = self.root / "artifacts", self.root / "mlflow-server.log"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.auth_ini = self.root / "basic_auth.ini"
        self.auth_ini.write_text(f"[mlflow]\ndefault_permission = {default_permission}\ndatabase_uri = {auth_db}\n"
                                 f"admin_username = {self.admin[0]}\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                                 # without this cache every request re-derives the PBKDF2 password hash: 1.2-1.9 s a request here
                                 "auth_cache_ttl_seconds = 60\n")
        self.proc, self.passwords = None, {self.admin[0]: self.admin[1]}

    @property
    def uri(self) -> str: return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                "--backend-store-uri", self.backend, "--artifacts-destination", str(self.artifacts), "--serve-artifacts"]

    def start(self, timeout:float=180) -> "MlflowServer":
        env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(self.auth_ini), "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin[1],
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
               "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"): env.pop(k, None)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command(), cwd=self.root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self.healthy, timeout=timeout, what="mlflow server", proc=self.proc, log=self.log, every=0.2)
        return self

    def healthy(self) -> bool:
        import requests
        return requests.get(f"{self.uri}/health", timeout=2).status_code == 200

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None: return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the server's own process group: gunicorn/uvicorn and its workers
        try: self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait(timeout=30)

    def _admin(self, method:str, path:str, **kw):
        import requests
        r = requests.request(method, f"{self.uri}{path}", auth=self.admin, timeout=30, **kw)
        if r.status_code != 200: raise RuntimeError(f"{method} {path} as admin: {r.status_code} {r.text[:500]}")
        return r.json() if r.content else {}

    def create_user(self, username:str, password:str|None=None) -> dict:
        "Create a (non-admin) user through the auth app's REST API; returns `env(username)` for it."
        password = password or "pw-" + secrets.token_urlsafe(12)
        self._admin("POST", "/api/2.0/mlflow/users/create", json={"username": username, "password": password})
        self.passwords[username] = password
        return self.env(username)

    def grant(self, username:str, resource_type:str, resource_id:str, permission:str) -> None:
        "Give `username` `permission` (READ, USE, EDIT, MANAGE) on a `registered_model` or `experiment` (by name / id)."
        self._admin("POST", "/api/3.0/mlflow/users/permissions/grant", json={"username": username, "resource_type": resource_type,
                                                                            "resource_id": str(resource_id), "permission": permission})

    def env(self, username:str, password:str|None=None) -> dict:
        "The environment that points mlkit (any MLflow client) at this server as `username`."
        return {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_TRACKING_USERNAME": username,
                "MLFLOW_TRACKING_PASSWORD": password or self.passwords[username]}


@pytest.fixture(scope="session")
def pg_server():
    "One PostgreSQL cluster for the session (about 2-3 s to initdb and start)."
    pg = Postgres().start()
    yield pg
    pg.destroy()


@pytest.fixture
def postgres(pg_server):
    "The URL of a fresh, empty database on the session's PostgreSQL (user `postgres`, no password)."
    return pg_server.create_database()


@pytest.fixture
def pg_cluster():
    "A private PostgreSQL cluster, for a test that stops or restarts the server."
    pg = Postgres().start()
    yield pg
    pg.destroy()


@pytest.fixture(scope="session")
def mlflow_server(pg_server, tmp_path_factory):
    "`mlflow server` with basic auth on the session's PostgreSQL (about 6-10 s to ready); admin credentials in `.admin`."
    server = MlflowServer(pg_server, tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()
