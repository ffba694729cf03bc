"""`mlkit new`: the project it writes (offline, from the template shipped inside mlkit), every bad input, and — in a fresh venv —
a project that installs with `pip install -e .`, passes its own `.ci/run`, trains with its custom transformer and is served.

`python tests/test_new.py --refresh` rewrites the template's generated modules from its notebooks (run it after editing them)."""
import filecmp, json, os, re, shutil, socket, subprocess, sys, tempfile, time, zipfile
from pathlib import Path
import pytest
from conftest import BIN, ROOT, mlkit_cmd, run_mlkit

TEMPLATE = ROOT / "mlkit" / "templates" / "project"
LAYOUT = {".ci/run", ".github/workflows/ci.yml", ".gitignore", "MANIFEST.in", "README.md", "pytest.ini", "settings.ini", "setup.py",
          "data/credit.csv", "nbs/00_features.ipynb", "nbs/01_paths.ipynb", "nbs/pipelines/.notest", "nbs/pipelines/train.ipynb",
          "params/train.yaml", "tests/test_features.py", "tests/test_notebooks.py", "tests/test_train.py",
          "{p}/__init__.py", "{p}/_modidx.py", "{p}/features.py", "{p}/paths.py"}


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and ".git" not in p.relative_to(d).parts}


def _offline(cmd):
    "`cmd` in a network namespace with only loopback (no route out), where `unshare -n` works; else None."
    if not shutil.which("unshare") or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0: return None
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "sh", *map(str, cmd)]


# --- the project it writes ------------------------------------------------------------------------------------------------------

def test_new_writes_the_whole_layout_with_the_package_filled_in(tmp_path):
    r = run_mlkit("new", tmp_path / "credit-scoring", timeout=60)
    assert r.returncode == 0, r.stderr
    d = tmp_path / "credit-scoring"
    assert _files(d) == {f.format(p="credit_scoring") for f in LAYOUT}
    assert "package credit_scoring" in r.stdout and f"cd {d}" in r.stdout and 'pip install "$MLKIT" -e ".[dev]"' in r.stdout
    settings = (d / "settings.ini").read_text()
    assert "lib_name = credit_scoring" in settings and "lib_path = credit_scoring" in settings
    assert re.search(r"^trusted_modules = credit_scoring$", settings, re.M)           # what serve/score/monitor trust here
    assert "allowed_cell_metadata_keys = tags" in settings                             # the `parameters` tag survives nbdev_clean
    left = [f for f in _files(d) if re.search(r"\{\{(package|project)\}\}", (d / f).read_text(errors="ignore"))]
    assert not left, f"placeholders left in {left}"
    assert os.access(d / ".ci" / "run", os.X_OK)
    assert "from credit_scoring.features import RatioFeatures" in (d / "nbs" / "pipelines" / "train.ipynb").read_text()
    tags = [c["metadata"].get("tags") for c in json.loads((d / "nbs" / "pipelines" / "train.ipynb").read_text())["cells"]]
    assert tags.count(["parameters"]) == 1
    assert "# %% ../nbs/00_features.ipynb" in (d / "credit_scoring" / "features.py").read_text()


def test_new_into_an_empty_folder_or_a_fresh_clone(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "clone" / ".git").mkdir(parents=True)
    (tmp_path / "clone" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    for name in ("empty", "clone"):
        r = run_mlkit("new", tmp_path / name, "--package", f"{name}_pkg", timeout=60)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / name / f"{name}_pkg" / "features.py").is_file()
    assert (tmp_path / "clone" / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"   # the clone's own files untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []               # no temporary folder left behind


def test_new_needs_no_network(tmp_path):
    "The template is inside the installed package: nothing is downloaded (nbdev_new, by contrast, fails offline)."
    cmd = _offline(mlkit_cmd("new", tmp_path / "offline"))
    if cmd is None: pytest.skip("`unshare -n` is not available here to cut the network")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert _files(tmp_path / "offline") == {f.format(p="offline") for f in LAYOUT}


BAD_NAMES = [
    ("Churn-Model", "package name 'Churn-Model' is not a Python identifier (ASCII letters, digits and '_', not starting with a digit): "
                    "it contains ['-']; use --package churn_model"),
    ("Churn", "package name 'Churn' has uppercase letters: Python package names are lowercase (PEP 8); use --package churn"),
    ("2024_churn", "it starts with a digit; use --package project_2024_churn"),
    ("class", "package name 'class' is a Python keyword: `import class` would not parse; use --package class_project"),
    ("json", "package name 'json' hides Python's standard module `json`; use --package json_project"),
    ("mlkit", "package name 'mlkit' hides the installed module `mlkit` ("),
    ("sklearn", "package name 'sklearn' hides the installed module `sklearn` ("),
    ("tests", "package name 'tests' is the name of the project's own `tests` folder; use --package tests_project"),
]


@pytest.mark.parametrize("package, message", [pytest.param(p, m, id=p) for p, m in BAD_NAMES])
def test_an_invalid_package_name_is_refused_with_the_reason_and_a_fix(tmp_path, package, message):
    r = run_mlkit("new", tmp_path / "proj", "--package", package, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "proj").exists()


def test_a_folder_name_that_gives_no_valid_package_says_how_to_name_it(tmp_path):
    r = run_mlkit("new", tmp_path / "json", timeout=60)
    assert r.returncode == 2
    assert f"the folder name 'json' gives the package name 'json', which hides Python's standard module `json`; " \
           f"name the package: mlkit new {tmp_path / 'json'} --package json_project" in r.stderr, r.stderr
    assert not (tmp_path / "json").exists()


def test_a_folder_that_is_not_empty_is_refused_and_left_as_it_was(tmp_path):
    d = tmp_path / "work"; d.mkdir()
    (d / "analysis.ipynb").write_text("{}")
    (d / "data").mkdir()
    r = run_mlkit("new", d, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"folder {d} is not empty (analysis.ipynb, data/): mlkit new writes only into a new or empty folder" in r.stderr, r.stderr
    assert "give it a new folder's path (it is created), or empty this one" in r.stderr
    assert sorted(p.name for p in d.iterdir()) == ["analysis.ipynb", "data"]
    f = tmp_path / "notes.txt"; f.write_text("x")
    r = run_mlkit("new", f, timeout=60)
    assert r.returncode == 2 and f"{f} is a file, not a folder" in r.stderr and f.read_text() == "x"


# --- the template inside mlkit ----------------------------------------------------------------------------------------------------

def _render(dst: Path, package="zzpkg", project="zzproj") -> Path:
    from mlkit.project import render_template
    dst.mkdir(parents=True)
    render_template(dst, package=package, project=project)
    return dst


def test_the_template_s_modules_are_what_nbdev_export_makes_of_its_notebooks(tmp_path):
    "For any package name (nbdev aligns `_modidx.py` by the names' lengths): a new project's nbdev_export and nbdev_clean change nothing."
    for package in ("p", "a_much_longer_package_name"):
        d = _render(tmp_path / package, package=package)
        before = {f: (d / f).read_bytes() for f in _files(d)}
        for tool in ("nbdev_export", "nbdev_clean"):
            subprocess.run([str(BIN / tool)], cwd=d, check=True, capture_output=True, timeout=120)
        changed = sorted(f for f in _files(d) if before.get(f) != (d / f).read_bytes())
        assert not changed, f"the template's {changed} differ from its notebooks: run `python tests/test_new.py --refresh`"


def test_mlkit_s_own_nbdev_tools_never_touch_the_template(tmp_path):
    "nbdev walks every *.py under mlkit/ (adding __init__.py files, indexing modules): the template holds none, only *.py.tmpl."
    assert not [p for p in TEMPLATE.rglob("*.py")], "name the template's Python files *.py.tmpl"
    for name in ("settings.ini", "setup.py", "README.md"): shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "nbs", tmp_path / "nbs", symlinks=True, ignore=shutil.ignore_patterns("mlruns", "mlflow.db", ".ipynb_checkpoints"))
    shutil.copytree(ROOT / "mlkit", tmp_path / "mlkit", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for tool in ("nbdev_export", "nbdev_clean"):
        subprocess.run([str(BIN / tool)], cwd=tmp_path, check=True, capture_output=True, timeout=300)
    copy = tmp_path / "mlkit" / "templates" / "project"
    assert _files(copy) == _files(TEMPLATE)
    _, differ, errors = filecmp.cmpfiles(TEMPLATE, copy, sorted(_files(TEMPLATE)), shallow=False)
    assert not differ and not errors, differ + errors
    assert "templates" not in (tmp_path / "mlkit" / "_modidx.py").read_text()


@pytest.mark.slow
def test_the_wheel_ships_the_template(tmp_path):
    subprocess.run([str(BIN / "pip"), "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)], check=True, capture_output=True,
                   timeout=600)
    [wheel] = tmp_path.glob("mlkit-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {n.removeprefix("mlkit/templates/project/") for n in z.namelist() if n.startswith("mlkit/templates/project/")}
        mode = z.getinfo("mlkit/templates/project/dot-ci/run").external_attr >> 16
    assert shipped == _files(TEMPLATE)
    assert mode & 0o111, "the wheel lost .ci/run's executable bit (new_project sets it anyway)"


# --- end to end: a fresh venv, offline after the install -------------------------------------------------------------------------

def _clean_env(**extra):
    "This environment without the test venv's traces (a fresh shell, as a user has it), plus `extra`."
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "MLFLOW_TRACKING_URI", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != BIN)
    return env | {"OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"} | extra


def _run(cmd, *, cwd, env, timeout, what):
    "Run `cmd`, fail with its output unless it exits 0; prints its wall and CPU time (the machine may be shared: CPU is the steadier)."
    import resource
    t0, c0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"[timing] {what}: {time.monotonic() - t0:.1f} s wall, {c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime:.1f} s CPU")
    assert r.returncode == 0, f"{what} exited {r.returncode}\nstdout:\n{r.stdout[-6000:]}\nstderr:\n{r.stderr[-6000:]}"
    return r


def _share_dependencies(venv:Path) -> None:
    "Let `venv` import what this test venv has installed (a .pth line after its own site-packages): no download, same versions."
    import sysconfig
    [site] = (venv / "lib").glob("python*/site-packages")
    (site / "zz-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")


def _pinned(*names) -> list[str]:
    "`name==version` of each package as installed here."
    from importlib.metadata import version
    return [f"{n}=={version(n)}" for n in names]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _wait_ready(url, proc, timeout=120):
    import httpx
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None: raise AssertionError(f"server exited {proc.returncode}:\n{proc.stderr.read()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200: return
        except httpx.HTTPError: pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout}s")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_new_project_installs_in_a_fresh_venv_passes_its_ci_trains_with_its_transformer_and_is_served(tmp_path):
    """The README's path for a project of your own. Depends on loading-side trust (`trusted_modules` in the project's settings.ini):
    without it mlkit.log_model refuses the model holding credit_scoring.features.RatioFeatures."""
    import httpx, pandas as pd
    d = tmp_path / "credit-scoring"
    _run(mlkit_cmd("new", d), cwd=tmp_path, env=_clean_env(), timeout=60, what="mlkit new")
    # the README's first command (the registry is used here, nothing else after it): a fresh venv, mlkit from this checkout, the project
    _run([sys.executable, "-m", "venv", ".venv"], cwd=d, env=_clean_env(), timeout=120, what="python -m venv")
    venv = d / ".venv" / "bin"
    if os.environ.get("MLKIT_TEST_FRESH_INSTALL") == "1":   # the whole resolution from the index (minutes: ~1 GB of dependencies)
        # --no-compile: skip byte-compiling the dependencies up front (about half of pip's CPU here); imports compile what they use
        _run([venv / "pip", "install", "-q", "--no-compile", ROOT, "-e", ".[dev]"], cwd=d, env=_clean_env(), timeout=1200,
             what="pip install mlkit -e .[dev]")
    else:   # the same two installs, resolved against this venv's dependencies (a .pth line; `.ci/run` itself tests the resolution)
        _share_dependencies(venv.parent)
        _run([venv / "pip", "install", "-q", "--no-deps", "--no-build-isolation", ROOT, "-e", "."], cwd=d, env=_clean_env(),
             timeout=600, what="pip install --no-deps mlkit -e .")
        _run([venv / "pip", "install", "-q", "--no-deps", "--ignore-installed", *_pinned("nbdev", "pytest")], cwd=d,
             env=_clean_env(), timeout=600, what="pip install nbdev pytest (their console scripts)")
        _run([venv / "pip", "check"], cwd=d, env=_clean_env(), timeout=120, what="pip check")
    r = _run([venv / "python", "-c", "import mlkit; print(mlkit.__file__)"], cwd=tmp_path, env=_clean_env(), timeout=60, what="import mlkit")
    assert Path(r.stdout.strip()).is_relative_to(venv.parent), r.stdout            # an installed copy, not this checkout
    # offline from here on where the network can be cut: the project's own CI, then a training run into its own store
    offline = (lambda cmd: _offline(cmd) or cmd)
    r = _run(offline([d / ".ci" / "run"]), cwd=d, env=_clean_env(CI="true"), timeout=1200, what=".ci/run (nbdev_test, pytest incl. slow)")
    assert re.search(r"\b\d+ passed\b", r.stdout) and " failed" not in r.stdout, r.stdout[-3000:]
    assert (d / "executed" / "train.ipynb").is_file()
    r = _run(offline([venv / "mlkit", "run", "nbs/pipelines/train.ipynb"]), cwd=d, env=_clean_env(), timeout=900, what="mlkit run train")
    assert "FINISHED" in r.stdout and "registered: credit_scoring version 1" in r.stdout, r.stdout
    # the installed (not editable) mlkit has the template too
    _run([venv / "mlkit", "new", tmp_path / "second"], cwd=tmp_path, env=_clean_env(), timeout=60, what="mlkit new (installed wheel)")
    assert _files(tmp_path / "second") == {f.format(p="second") for f in LAYOUT}
    # served from the project's folder, whose settings.ini trusts credit_scoring; a real request on 127.0.0.1
    port = _free_port()
    proc = subprocess.Popen([str(venv / "mlkit"), "serve", "--model", "models:/credit_scoring/1", "--port", str(port), "--log-dir", "none"],
                            cwd=d, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        _wait_ready(f"http://127.0.0.1:{port}/ready", proc)
        print(f"[timing] mlkit serve to /ready: {time.monotonic() - t0:.1f} s")
        rows = pd.read_csv(d / "data" / "credit.csv").drop(columns=["id", "default"]).head(3)
        records = json.loads(rows.to_json(orient="records"))
        resp = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"dataframe_records": records}, timeout=30)
        assert resp.status_code == 200, resp.text
        assert len(resp.json()["predictions"]) == 3 and set(resp.json()["predictions"]) <= {0, 1}
        assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).json()["model_version"] == "1"
    finally:
        proc.terminate()
        try: proc.wait(timeout=30)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
    # elsewhere (no settings.ini declaring the package) the same model is refused, naming the setting that allows it
    elsewhere = tmp_path / "elsewhere"; elsewhere.mkdir()
    r = subprocess.run([str(venv / "mlkit"), "serve", "--model", "models:/credit_scoring/1", "--port", str(_free_port())], cwd=elsewhere,
                       env=_clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{d}/mlflow.db"), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "credit_scoring.features.RatioFeatures" in r.stderr and "trusted_modules" in r.stderr, r.stderr


# --- maintenance ----------------------------------------------------------------------------------------------------------------

def refresh_template_modules() -> list[str]:
    "Rewrite the template's generated modules ({{package}}/*.py.tmpl) from its notebooks with nbdev_export; returns their names."
    with tempfile.TemporaryDirectory() as t:
        d = _render(Path(t) / "zzproj")
        for f in (d / "zzpkg").glob("*.py"):
            if f.name != "__init__.py": f.unlink()
        subprocess.run([str(BIN / "nbdev_export")], cwd=d, check=True, capture_output=True)
        out = []
        for f in sorted((d / "zzpkg").glob("*.py")):
            text = f.read_text().replace("zzpkg", "{{package}}").replace("zzproj", "{{project}}")
            (TEMPLATE / "{{package}}" / f"{f.name}.tmpl").write_text(text); out.append(f.name)
        return out


if __name__ == "__main__" and "--refresh" in sys.argv:
    print("rewrote", refresh_template_modules())
