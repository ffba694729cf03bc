"""The serving image: the Dockerfile against what the README documents, its entrypoint (a token is required), and — with a
container engine and MLKIT_TEST_IMAGE=1 — a real build and run with podman.

The build needs a base image, and no container registry is reachable here: the test makes one from Debian's packages
(debootstrap: bookworm with python3.11 and its venv module, like python:3.11-slim) and builds the Dockerfile on it with
`--build-arg BASE_IMAGE=...`. About 2 minutes for the base (kept in podman's storage) and 2-5 for the build (1.3 GB, pip
installs from the package index), hence opt-in."""
import fnmatch, json, os, re, shlex, shutil, subprocess, time
from pathlib import Path
import pytest
from conftest import BIN, ROOT, mlkit_cmd
from ops_tools import free_port, wait_for

DOCKERFILE, ENTRYPOINT = ROOT / "Dockerfile", ROOT / "deploy" / "docker" / "entrypoint.sh"


def dockerfile() -> dict:
    "The Dockerfile's instructions: {'ENV': {...}, 'EXPOSE': [...], 'USER': ..., 'ENTRYPOINT': [...], 'COPY': [[src..., dst]], ...}."
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = {"ENV": {}, "EXPOSE": [], "COPY": [], "ARG": {}, "RUN": []}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"): continue
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "ENV": out["ENV"].update(kv.split("=", 1) for kv in shlex.split(rest))
        elif op == "ARG": k, _, v = rest.partition("="); out["ARG"][k] = v
        elif op == "EXPOSE": out["EXPOSE"] += [p.split("/")[0] for p in rest.split()]
        elif op == "COPY": out["COPY"].append([a for a in shlex.split(rest) if not a.startswith("--")])
        elif op == "RUN": out["RUN"].append(rest)
        elif op in ("ENTRYPOINT", "CMD") and rest.startswith("["): out[op] = json.loads(rest)
        else: out[op] = rest
    return out


def readme_docker_commands() -> dict:
    "`docker build` and `docker run` commands of the README, as argument lists."
    text = (ROOT / "README.md").read_text()
    cmds = [shlex.split(m.replace("\\\n", " ")) for m in re.findall(r"`(docker (?:build|run)[^`]*)`", text)]
    return {"build": [c for c in cmds if c[1] == "build"], "run": [c for c in cmds if c[1] == "run"]}


def _ignored(path:str) -> bool:
    pats = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    parts = Path(path).parts
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.lstrip("*/")) or any(fnmatch.fnmatch(x, p.strip("*/")) for x in parts)
               for p in pats if not p.startswith("!"))


def test_dockerfile_matches_readme():
    df, readme = dockerfile(), readme_docker_commands()
    assert readme["build"] and readme["run"], "the README documents `docker build` and `docker run`"
    tag = readme["build"][0][readme["build"][0].index("-t") + 1]
    read_by_image = DOCKERFILE.read_text() + ENTRYPOINT.read_text()
    for run in readme["run"]:
        assert run[-1] == tag, f"`docker run` uses image {run[-1]}, `docker build` tags {tag}"
        ports = [run[i + 1] for i, a in enumerate(run) if a == "-p"]
        envs = [run[i + 1].split("=")[0] for i, a in enumerate(run) if a == "-e"]
        assert ports and all(p.split(":")[-1] in df["EXPOSE"] for p in ports), (ports, df["EXPOSE"])
        for var in envs:
            assert var in read_by_image or var.startswith("MLFLOW_"), f"README passes -e {var}, which the image does not read"
        assert "MLKIT_SERVE_TOKEN" in envs, "the image refuses to serve without a token: the README's docker run must pass one"
    assert df["EXPOSE"] == [df["ENV"]["MLKIT_PORT"]], "the exposed port is the one the service binds"
    assert df["USER"] not in ("root", "0") and "useradd" in " ".join(df["RUN"]), "the image runs as an unprivileged user"
    assert df["ENV"]["MLKIT_HOST"] == "0.0.0.0" and "MLKIT_SERVE_TOKEN" not in df["ENV"], "no token baked into the image"
    assert df["ENTRYPOINT"][-1] == "/usr/local/bin/mlkit-entrypoint"
    assert ["deploy/docker/entrypoint.sh", "/usr/local/bin/mlkit-entrypoint"] in df["COPY"]
    assert "/ready" in df["HEALTHCHECK"] and df["ENV"]["MLKIT_PORT"] in ("8000",)
    for *srcs, _ in df["COPY"]:
        for src in srcs:
            assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
            assert not _ignored(src), f"COPY {src}: excluded by .dockerignore"


def test_entrypoint_flags_exist_in_mlkit_serve():
    flags = set(re.findall(r"(--[a-z][a-z-]+)", ENTRYPOINT.read_text().split("exec mlkit serve", 1)[1]))
    helptext = subprocess.run(mlkit_cmd("serve", "--help"), capture_output=True, text=True, check=True).stdout
    assert flags and flags <= set(re.findall(r"(--[a-z][a-z-]+)", helptext)), flags


def _entrypoint(*args, env=None, timeout=60):
    "Run the image's entrypoint here, with the image's environment (Dockerfile ENV) and mlkit on PATH."
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLKIT_SERVE")}
    image_env = {k: v for k, v in dockerfile()["ENV"].items() if k != "PATH"}
    full = base | image_env | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"} | (env or {})
    return subprocess.run(["sh", ENTRYPOINT, *args], env=full, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("token", [None, ""])
def test_entrypoint_refuses_to_serve_without_token(token):
    r = _entrypoint(env={} if token is None else {"MLKIT_SERVE_TOKEN": token})
    assert r.returncode == 2, r
    assert "MLKIT_SERVE_TOKEN is not set" in r.stderr and "0.0.0.0:8000" in r.stderr and "openssl rand" in r.stderr
    assert "MLKIT_SERVE_ALLOW_UNAUTHENTICATED=true" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1


def test_entrypoint_runs_other_commands():
    r = _entrypoint("mlkit", "--version", env={})
    assert r.returncode == 0 and re.search(r"\d+\.\d+", r.stdout + r.stderr), r


def test_entrypoint_opt_out_reaches_mlkit_serve():
    # explicitly allowed: no refusal, `mlkit serve` itself runs (and stops at once here, on a port that is not a number)
    r = _entrypoint(env={"MLKIT_SERVE_ALLOW_UNAUTHENTICATED": "true", "MLKIT_HOST": "127.0.0.1", "MLKIT_PORT": "not-a-port"})
    assert "serving WITHOUT authentication on 127.0.0.1:not-a-port" in r.stderr, r.stderr
    assert "mlkit serve: error: argument --port" in r.stderr and r.returncode == 2
    assert "MLKIT_SERVE_TOKEN is not set" not in r.stderr


# ---- a real build, with podman ----------------------------------------------------------------------------------------------
BASE = "localhost/mlkit-test-base:py3.11-bookworm"
# This machine's kernel/cgroup set-up (cgroup v1 + v2 hybrid, no CAP_SYS_RESOURCE): crun refuses hybrid cgroups, and raising
# RLIMIT_NOFILE/NPROC above the current hard limits is not permitted; runc with limits at or below them works.
PODMAN = ["--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]


_IMAGE_TEST = os.environ.get("MLKIT_TEST_IMAGE") == "1" and shutil.which("podman")


def _base_image(podman, tmp):
    "A python:3.11-slim stand-in from Debian's packages (no container registry is reachable here), kept in podman's storage."
    if subprocess.run([podman, "image", "exists", BASE]).returncode == 0: return BASE
    debootstrap = shutil.which("debootstrap") or pytest.skip("debootstrap is not installed (apt-get install -y debootstrap)")
    root = tmp / "rootfs"
    subprocess.run([debootstrap, "--variant=minbase", "--include=python3,python3-venv,libgomp1,ca-certificates", "bookworm", root,
                    "http://deb.debian.org/debian"], check=True, capture_output=True)
    shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
    subprocess.run([podman, "import", "--change", 'CMD ["/bin/bash"]', "-", BASE], stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()
    return BASE


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.skipif(not _IMAGE_TEST, reason="building the image takes minutes and 1.3 GB: set MLKIT_TEST_IMAGE=1 (needs podman, runc, "
                    "debootstrap); CI builds it in .github/workflows/image.yml")
def test_image_builds_and_serves(trained_store, tmp_path):
    podman = shutil.which("podman")
    t0 = time.monotonic()
    base = _base_image(podman, tmp_path)
    t1 = time.monotonic()
    # the package index is reached through this machine's TLS set-up: its CA bundle and a pip.conf naming it are mounted for the
    # build only (nothing of it stays in the image)
    (tmp_path / "pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    mounts = ["-v", "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro", "-v", f"{tmp_path / 'pip.conf'}:/etc/pip.conf:ro"]
    tag = "localhost/mlkit-serve:test"
    r = subprocess.run([podman, "build", "--format", "docker", *PODMAN, *LIMITS, *mounts, "--build-arg", f"BASE_IMAGE={base}", "-t", tag, ROOT],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    t2 = time.monotonic()
    print(f"\nbase image {t1 - t0:.0f} s, build {t2 - t1:.0f} s")
    run = [podman, "run", "--rm", *PODMAN, *LIMITS]
    # no token: refused at once, with the fix
    r = subprocess.run([*run, "--network", "none", tag], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "MLKIT_SERVE_TOKEN is not set" in r.stderr, r
    # with a token, read-only root: serves the store's model on loopback (host network, 127.0.0.1 only)
    # a copy of the store, world-writable for the image's user (uid 10001), mounted where its artifact paths point
    d = trained_store["dir"]
    copy = shutil.copytree(d, tmp_path / "store")
    subprocess.run(["chmod", "-R", "a+rwX", copy], check=True)
    port, token = free_port(), "t0ken-for-the-image-test"
    name = f"mlkit-test-{port}"
    env = {"MLFLOW_TRACKING_URI": trained_store["uri"], "MLKIT_MODEL_URI": "models:/credit/1", "MLKIT_HOST": "127.0.0.1",
           "MLKIT_PORT": str(port), "MLKIT_SERVE_TOKEN": token}
    p = subprocess.Popen([podman, "run", "--rm", "--name", name, *PODMAN, *LIMITS, "--network", "host", "--read-only", "--tmpfs", "/tmp",
                          "--tmpfs", "/home/mlkit:mode=1777", "-v", f"{copy}:{d}", *[a for k, v in env.items() for a in ("-e", f"{k}={v}")], tag],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import httpx
        ready = wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/ready").json(), timeout=180, what="the container's /ready")
        assert ready["ready"] and ready["model_version"] == "1"
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert subprocess.run([podman, "healthcheck", "run", name], capture_output=True).returncode == 0   # the HEALTHCHECK, run once
        assert subprocess.run([podman, "exec", name, "id", "-u"], capture_output=True, text=True).stdout.strip() == "10001"
    finally:
        subprocess.run([podman, "stop", "-t", "5", name], capture_output=True)
        out = p.communicate(timeout=60)[0]
    assert "auth on" in out, out
