"""Kubernetes manifests (deploy/k8s/): valid against the Kubernetes schema (kubernetes-validate, offline, strict), wired together
(ports, probes, Secret, ConfigMap, autoscaler, the monitoring CronJob's command), and the probes answered by a real `mlkit serve`
started by the image's entrypoint with the Deployment's environment."""
import copy, os, re, subprocess
import pytest, yaml
from conftest import BIN, ROOT, mlkit_cmd, run_mlkit
from ops_tools import free_port, start, stop, tool_venv, wait_for

K8S = ROOT / "deploy" / "k8s"
VALIDATOR = "kubernetes-validate==1.37.0"


def manifests() -> dict:
    "{(kind, name): document} of every manifest in deploy/k8s."
    docs = [d for f in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.fixture(scope="module")
def validate():
    "Run kubernetes-validate (from a cached venv: not an mlkit dependency) on files; returns the CompletedProcess."
    exe = tool_venv("kubernetes-validate-1.37.0", [VALIDATOR]) / "kubernetes-validate"
    return lambda *files: subprocess.run([exe, "--strict", *files], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_manifests_are_valid_kubernetes(validate):
    files = sorted(K8S.glob("*.yaml"))
    r = validate(*files)
    assert r.returncode == 0, r.stdout + r.stderr
    passed = set(re.findall(r"passed for resource (\w+)/([\w-]+)", r.stdout + r.stderr))
    assert passed == {(k.lower(), n) for k, n in manifests()}, r.stdout + r.stderr
    assert {k for k, _ in manifests()} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "CronJob", "ConfigMap", "PersistentVolumeClaim"}


@pytest.mark.slow
@pytest.mark.parametrize("breakage", ["string port", "unknown field", "no selector", "bad probe"])
def test_validator_rejects_broken_manifests(validate, tmp_path, breakage):
    dep = copy.deepcopy(manifests()[("Deployment", "mlkit-serve")])
    c = dep["spec"]["template"]["spec"]["containers"][0]
    if breakage == "string port": c["ports"][0]["containerPort"] = "eight thousand"
    elif breakage == "unknown field": c["readinessProbes"] = c.pop("readinessProbe")
    elif breakage == "no selector": del dep["spec"]["selector"]
    else: c["livenessProbe"]["httpGet"]["port"] = {"name": "http"}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(dep))
    r = validate(tmp_path / "broken.yaml")
    assert r.returncode != 0, f"kubernetes-validate accepted a Deployment with a {breakage}: {r.stdout}"


def _container(doc):
    spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]["template"]["spec"]
    return spec, spec["containers"][0]


def test_manifests_fit_together_and_with_the_image():
    m = manifests()
    dep, svc, hpa, cron, cm = (m[("Deployment", "mlkit-serve")], m[("Service", "mlkit-serve")], m[("HorizontalPodAutoscaler", "mlkit-serve")],
                               m[("CronJob", "mlkit-monitor")], m[("ConfigMap", "mlkit")])
    spec, c = _container(dep)
    env = {e["name"]: e for e in c["env"]}
    port = {p["name"]: p["containerPort"] for p in c["ports"]}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^EXPOSE {port['http']}$", dockerfile, re.M) and env["MLKIT_PORT"]["value"] == str(port["http"])
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert env["MLKIT_SERVE_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "mlkit-serve", "key": "token"}
    for d in (dep, cron):
        s, cc = _container(d)
        assert cc["resources"]["requests"] and cc["resources"]["limits"], d["metadata"]["name"]
        assert s["securityContext"]["runAsNonRoot"] and cc["securityContext"]["readOnlyRootFilesystem"]
        vols = {v["name"] for v in s["volumes"]}
        assert {v["name"] for v in cc["volumeMounts"]} <= vols
        refs = [e["valueFrom"]["configMapKeyRef"]["key"] for e in cc.get("env", []) if "configMapKeyRef" in e.get("valueFrom", {})]
        assert set(refs) <= set(cm["data"]), refs
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] in port
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mlkit-serve"}
    assert hpa["spec"]["minReplicas"] >= 2 and c["resources"]["requests"]["cpu"]       # utilisation needs a CPU request
    # the CronJob runs `mlkit monitor` with flags it has; exit codes 2 and 3 end the Job without a retry
    _, mc = _container(cron)
    assert mc["command"][:2] == ["mlkit", "monitor"]
    helptext = subprocess.run(mlkit_cmd("monitor", "--help"), capture_output=True, text=True, check=True).stdout
    flags = {a for a in mc["command"] + mc.get("args", []) if a.startswith("-")}
    assert flags <= set(re.findall(r"(--?[a-z][a-z-]*)", helptext)), flags
    rules = cron["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and set(rules[0]["onExitCodes"]["values"]) == {2, 3}


def test_configmap_monitor_params_are_valid(tmp_path):
    cm = manifests()[("ConfigMap", "mlkit")]
    (tmp_path / "monitor.yaml").write_text(cm["data"]["monitor.yaml"])
    r = run_mlkit("params", "monitor", "-p", tmp_path / "monitor.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    (tmp_path / "typo.yaml").write_text(cm["data"]["monitor.yaml"].replace("min_rows", "min_row"))
    assert run_mlkit("params", "monitor", "-p", tmp_path / "typo.yaml").returncode != 0     # the same check does catch a typo


@pytest.mark.slow
def test_probes_answer_on_a_real_serve(trained_copy, tmp_path):
    "The image's entrypoint with the Deployment's environment: the probes' paths answer on the named port, without a token."
    import httpx, mlflow
    mlflow.MlflowClient().set_registered_model_alias("credit", "champion", "1")
    _, c = _container(manifests()[("Deployment", "mlkit-serve")])
    env = {e["name"]: e.get("value") for e in c["env"]}
    token, port = "probe-test-token", free_port()
    env |= {"MLKIT_SERVE_TOKEN": token, "MLFLOW_TRACKING_URI": trained_copy["uri"], "MLKIT_MODEL_URI": "models:/credit@champion",
            "MLKIT_LOG_DIR": str(tmp_path / "prediction_log"),
            # loopback only in tests; the Deployment's port is a named one, checked equal to MLKIT_PORT above
            "MLKIT_HOST": "127.0.0.1", "MLKIT_PORT": str(port)}
    p = start(["sh", ROOT / "deploy" / "docker" / "entrypoint.sh"], log=tmp_path / "serve.log",
              env=env | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}, cwd=tmp_path)
    try:
        ports = {pp["name"]: port for pp in c["ports"]}                       # the named port → where the entrypoint bound it
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = c[probe]["httpGet"]
            url = f"http://127.0.0.1:{ports[get['port']]}{get['path']}"
            wait_for(lambda: httpx.get(url, timeout=c[probe].get("timeoutSeconds", 1) + 1).status_code == 200,   # no token: as kubelet
                     timeout=120, what=f"{probe} {get['path']} to answer 200")
        assert httpx.get(f"http://127.0.0.1:{port}/ready").json()["ready"] is True
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 401
    finally:
        stop(p)
    assert "auth on" in (tmp_path / "serve.log").read_text()
