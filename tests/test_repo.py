"""The repository is consistent: generated code and README match their notebooks, notebooks are clean, params files validate."""
import filecmp, shutil, subprocess, sys
from pathlib import Path
import pytest
from conftest import ROOT, BIN

PARAMS_SCHEMA = {"train": "train", "ci": "train", "tune": "tune", "promote": "promote", "monitor": "monitor"}


def _copy_project(dst: Path):
    for name in ("settings.ini", "setup.py", "README.md"):
        shutil.copy(ROOT / name, dst / name)
    shutil.copytree(ROOT / "nbs", dst / "nbs", symlinks=True, ignore=shutil.ignore_patterns("mlruns", "mlflow.db", ".ipynb_checkpoints"))
    shutil.copytree(ROOT / "mlkit", dst / "mlkit", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))


def test_export_changes_nothing(tmp_path):
    _copy_project(tmp_path)
    subprocess.run([str(BIN / "nbdev_export")], cwd=tmp_path, check=True, capture_output=True)
    generated = sorted(p.name for p in (tmp_path / "mlkit").glob("*.py"))
    assert "core.py" in generated and "cli.py" in generated
    _, mismatch, errors = filecmp.cmpfiles(ROOT / "mlkit", tmp_path / "mlkit", generated, shallow=False)
    assert not mismatch and not errors, f"mlkit/ differs from the notebooks for {mismatch + errors}: run nbdev_export and commit"


def test_notebooks_are_clean(tmp_path):
    _copy_project(tmp_path)
    subprocess.run([str(BIN / "nbdev_clean")], cwd=tmp_path, check=True, capture_output=True)
    nbs = sorted(p.relative_to(ROOT / "nbs") for p in (ROOT / "nbs").rglob("*.ipynb") if ".ipynb_checkpoints" not in str(p))
    dirty = [str(p) for p in nbs if (ROOT / "nbs" / p).read_bytes() != (tmp_path / "nbs" / p).read_bytes()]
    assert not dirty, f"notebooks not clean: {dirty}; run nbdev_clean and commit"


def test_readme_is_current(tmp_path):
    out = subprocess.run([str(BIN / "jupyter"), "nbconvert", "--to", "markdown", "--stdout", str(ROOT / "nbs" / "index.ipynb")],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == (ROOT / "README.md").read_text().strip(), "README.md is stale: regenerate it from nbs/index.ipynb (see README)"


@pytest.mark.parametrize("path", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_params_files_validate(path):
    from mlkit.config import load_params
    pipeline = PARAMS_SCHEMA.get(path.stem)
    assert pipeline, f"params/{path.name} has no known pipeline: add it to PARAMS_SCHEMA"
    load_params(pipeline, path)
    comments = sum(1 for line in path.read_text().splitlines() if line.strip().startswith("#"))
    keys = sum(1 for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#") and ":" in line)
    assert comments >= keys * 0.6, f"params/{path.name}: document every field with a comment"


@pytest.mark.parametrize("nb", sorted((ROOT / "nbs" / "pipelines").glob("*.ipynb")), ids=lambda p: p.stem)
def test_pipeline_parameters_are_one_checked_dict(nb):
    "A pipeline's parameters cell is one `params` dict of overrides that its schema accepts: defaults live only in the schema."
    import ast
    from mlkit.config import SCHEMAS, get_schema
    from mlkit.runner import DEDICATED, notebook_parameters
    declared = notebook_parameters(nb)
    if nb.stem in DEDICATED: return  # a worker notebook with its own parameters, started by its own command
    assert list(declared) == ["params"], f"{nb.name}: the parameters cell must declare only `params = {{...}}`, not {sorted(declared)}"
    overrides = ast.literal_eval(declared["params"]["default"])
    if nb.stem in SCHEMAS: get_schema(nb.stem).model_validate(overrides)


def test_import_is_light():
    code = "import sys, mlkit, mlkit.cli; bad = [m for m in ('nbdev', 'jupyterlab', 'mlflow', 'pandas', 'papermill') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"import mlkit / mlkit.cli pulled in {out}"


def _runtime_closure(requirements:list[str]) -> set[str]:
    "The distributions `pip install .` brings: the requirements and, recursively, what they require (extras they name included)."
    from importlib.metadata import PackageNotFoundError, requires
    from packaging.requirements import Requirement
    norm = lambda n: n.lower().replace("_", "-")
    todo, seen = [Requirement(r) for r in requirements], set()
    while todo:
        r = todo.pop()
        if norm(r.name) in seen: continue
        seen.add(norm(r.name))
        try: deps = requires(r.name) or []
        except PackageNotFoundError: continue
        for d in map(Requirement, deps):
            env = [{"extra": e} for e in (r.extras or {""})]
            if d.marker is None or any(d.marker.evaluate(e) for e in env): todo.append(d)
    return seen


def test_every_module_the_package_imports_is_installed_by_pip_install_dot():
    "`pip install -e .` (the README's first command) must bring every third-party module mlkit/*.py imports, not only `.[dev]`."
    import ast, configparser
    from importlib.metadata import packages_distributions
    cfg = configparser.ConfigParser(); cfg.read(ROOT / "settings.ini")
    closure, owners = _runtime_closure(cfg["DEFAULT"]["requirements"].split()), packages_distributions()
    missing = {}
    for f in sorted((ROOT / "mlkit").glob("*.py")):
        for n in ast.walk(ast.parse(f.read_text())):
            mods = [a.name for a in n.names] if isinstance(n, ast.Import) else \
                   [n.module] if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module else []
            for top in {m.split(".")[0] for m in mods} - set(sys.stdlib_module_names) - {"mlkit"}:
                dists = {d.lower().replace("_", "-") for d in owners.get(top, [top])}
                if not dists & closure: missing.setdefault(top, []).append(f.name)
    assert not missing, f"imported by mlkit but not installed by `pip install .` (add to requirements in settings.ini): {missing}"
