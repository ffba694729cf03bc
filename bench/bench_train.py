"""`mlkit run train` (papermill kernel + tracking of the executed notebook) against the same code — the train notebook's own cells —
executed as one plain Python process on the same data and params. Both start cold (a new process each). The difference is mlkit's
fixed overhead per pipeline run. Goal: under 3 s."""
import json, os, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).parent))
from _util import report


def notebook_as_script(nb_path, inject:dict) -> str:
    "The notebook's code cells as one script, the injected parameters (`{name: value}`) after its parameters cell (as papermill does)."
    nb = json.loads(Path(nb_path).read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    i = next(i for i, c in enumerate(c for c in nb["cells"] if c["cell_type"] == "code") if "parameters" in c.get("metadata", {}).get("tags", []))
    injected = "".join(f"{k} = {v!r}\n" for k, v in inject.items())
    return "from IPython.display import display\n" + "\n".join(code[:i + 1] + [injected] + code[i + 1:])


def one(cmd, cwd):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db", "MPLBACKEND": "Agg"}
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    params_file = ROOT / "params" / "ci.yaml"
    from mlkit.config import load_params
    params = load_params("train", params_file).model_dump(mode="json")
    params["model_name"] = None
    script = notebook_as_script(ROOT / "nbs" / "pipelines" / "train.ipynb", {"params": params})
    base, cand = [], []
    for i in range(n + 1):  # the first pair warms file caches and is dropped
        d1, d2 = tempfile.mkdtemp(), tempfile.mkdtemp()
        (Path(d1) / "train_script.py").write_text(script)
        b = one([sys.executable, "train_script.py"], d1)
        c = one([str(BIN / "mlkit"), "run", "train", "-p", str(params_file), "--set", "model_name=null"], d2)
        if i: base.append(b); cand.append(c)
    b, c = report("train pipeline", "same cells in one python process", base, "mlkit run train", cand, goal="overhead < 3 s")
    print(f"  fixed overhead {c - b:.2f} s → {'PASS' if c - b < 3 else 'FAIL'}")
