"""The CI files for scheduled monitoring: .github/workflows/monitor.yml and image.yml, examples/gitlab-ci/.gitlab-ci.yml.
Checked against the published schemas with check-jsonschema's vendored copies (offline: run in a network namespace with no
network when this machine allows one), and their exit-code handling run for real: the monitor steps' own shell scripts
against a real `mlkit monitor` on a shifted batch."""
import os, shutil, subprocess
import pytest, yaml
from conftest import BIN, ROOT, run_mlkit
from ops_tools import tool_venv

GITHUB = [ROOT / ".github" / "workflows" / "monitor.yml", ROOT / ".github" / "workflows" / "image.yml"]
GITLAB = ROOT / "examples" / "gitlab-ci" / ".gitlab-ci.yml"


def _offline() -> list:
    "A command prefix running without any network (a new network namespace), when this machine allows it."
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "--net", "true"], capture_output=True).returncode == 0: return [unshare, "--net"]
    return []


@pytest.fixture(scope="module")
def check_jsonschema():
    exe = tool_venv("check-jsonschema-0.39.0", ["check-jsonschema==0.39.0"]) / "check-jsonschema"
    return lambda schema, *files: subprocess.run([*_offline(), exe, "--builtin-schema", schema, *files], capture_output=True, text=True)


@pytest.mark.slow
def test_workflows_match_the_published_schemas(check_jsonschema, tmp_path):
    r = check_jsonschema("vendor.github-workflows", *GITHUB)
    assert r.returncode == 0, r.stdout + r.stderr
    r = check_jsonschema("vendor.gitlab-ci", GITLAB)
    assert r.returncode == 0, r.stdout + r.stderr
    # the check does fail: a misspelt key in each
    (tmp_path / "gh.yml").write_text(GITHUB[0].read_text().replace("runs-on:", "runs_on:", 1))
    (tmp_path / "gl.yml").write_text(GITLAB.read_text().replace("allow_failure:", "allow_failures:", 1))
    assert check_jsonschema("vendor.github-workflows", tmp_path / "gh.yml").returncode == 1
    assert check_jsonschema("vendor.gitlab-ci", tmp_path / "gl.yml").returncode == 1


def test_scripts_are_plain_strings_and_take_no_expressions():
    gl = yaml.safe_load(GITLAB.read_text())
    for name, job in gl.items():
        if isinstance(job, dict) and "script" in job:
            # an unquoted `key: value` inside a script line turns it into a mapping, which GitLab rejects
            assert all(isinstance(line, str) for line in job["script"]), name
    for wf in GITHUB:
        for job, spec in yaml.safe_load(wf.read_text())["jobs"].items():
            for step in spec["steps"]:
                # ${{ }} inside run: is pasted into the script before it runs (script injection): values go through env:
                assert "${{" not in step.get("run", ""), f"{wf.name} {job}: {step.get('name', step['run'][:40])}"


def test_monitor_steps_cover_the_pipeline():
    gh = yaml.safe_load(GITHUB[0].read_text())
    assert set(gh["jobs"]) == {"validate", "train", "monitor", "retrain"}
    assert gh["jobs"]["retrain"]["if"].count("alert") == 1 and "schedule" in gh[True]    # PyYAML reads the key `on` as True
    gl = yaml.safe_load(GITLAB.read_text())
    assert gl["stages"] == ["validate", "train", "promote", "monitor", "retrain"]
    assert gl["monitor"]["allow_failure"]["exit_codes"] == [3] and gl["promote"]["allow_failure"]["exit_codes"] == [1]


def _gh_step(job:str, name_start:str) -> str:
    steps = yaml.safe_load(GITHUB[0].read_text())["jobs"][job]["steps"]
    return next(s["run"] for s in steps if s.get("name", "").startswith(name_start))


@pytest.fixture
def alert_batch(trained_copy):
    "The private store with credit v1 as champion, params/ in the working folder (as in a checkout), and a shifted batch."
    import mlflow
    mlflow.MlflowClient().set_registered_model_alias("credit", "champion", "1")
    shutil.copytree(ROOT / "params", trained_copy["dir"] / "params")
    run_mlkit("demo-data", "shifted.csv", "--rows", 600, "--seed", 7, "--shift", "covariate", cwd=trained_copy["dir"], check=True)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_TRACKING_URI": trained_copy["uri"],
           "MLKIT_MODEL_NAME": "credit", "MLKIT_BATCH": "shifted.csv"}
    return trained_copy["dir"], env


@pytest.mark.slow
def test_github_monitor_step_turns_exit_3_into_the_alert_output(alert_batch):
    d, env = alert_batch
    out = d / "github_output"
    r = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", _gh_step("monitor", "Monitor")], cwd=d,
                       env=env | {"GITHUB_OUTPUT": str(out)}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]                    # an alert is not a failed job...
    assert out.read_text().strip() == "verdict=alert"                                # ...it is the output `retrain` runs on
    assert "::warning::drift alert on shifted.csv" in r.stdout
    # any other exit code fails the step, with its code
    r = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", _gh_step("monitor", "Monitor")], cwd=d,
                       env=env | {"GITHUB_OUTPUT": str(out), "MLKIT_BATCH": "missing.csv"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "::error::mlkit monitor exited 2" in r.stdout, r.stdout + r.stderr


@pytest.mark.slow
def test_gitlab_monitor_job_hands_the_verdict_to_retrain(alert_batch):
    d, env = alert_batch
    script = "\n".join(yaml.safe_load(GITLAB.read_text())["monitor"]["script"])
    r = subprocess.run(["sh", "-e", "-c", script], cwd=d, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]                    # allow_failure: exit_codes [3] → a warning
    assert (d / "monitor.env").read_text().strip() == "VERDICT=alert"                # the dotenv report `retrain` reads
