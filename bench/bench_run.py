"""`mlkit run` against what it runs, each pair in the same round (interleaved), every command a new process:

  train       `mlkit run train -p params/ci.yaml` (a new project folder: no store yet)  vs  a plain scikit-learn script doing the same
              fits, cross-validation, holdout metrics, permutation importance and partial dependence, without tracking or plots
              (goal: ≤ 1.5× the script)
  overhead    the same `mlkit run train`  vs  the train notebook's own cells as one Python process (tracking included, store already
              created)  (goal: < 2 s)
  notebook    `mlkit run research.ipynb`, a notebook nobody wrote for mlkit (numpy, sklearn, autolog, log_metric, a figure)  vs  its
              cells as one Python process (store already created)  (goal: < 3 s, issue 9; < 2 s, issue 12)
  reused      a second identical `mlkit run train -p params/ci.yaml` in the same folder  (goal: < 2 s, pointing at the first run)
  warm        the same `mlkit run train` in a new folder, through a warm process (`mlkit warm`, started once before the rounds: the
              interactive loop)  vs  the same plain script (goal: ≤ 1.5×). Its CPU is the warm process's child's, not counted here.

Medians over the rounds, ratios and differences, CPU seconds (user + sys of the command and its children) and the load average
measured around each round. Usage: python bench/bench_run.py [ROUNDS] [--only train,notebook,...]
"""
import json, os, resource, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).parent))
from bench_train import notebook_as_script
sys.path.insert(0, str(ROOT / "tests"))
from notebooks import RESEARCH, notebook_text   # the research notebook the contract tests run

CI = ROOT / "params" / "ci.yaml"

PLAIN_TRAIN = '''
import numpy as np, pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.inspection import permutation_importance
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, brier_score_loss, f1_score,
                             log_loss, precision_score, recall_score, roc_auc_score)
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.base import clone

df = pd.read_csv("credit.csv").drop(columns=["id", "application_date"])
y, X = df.pop("default"), df
X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
num = [c for c in X if pd.api.types.is_numeric_dtype(X[c])]
cat = [c for c in X if c not in num]
model = Pipeline([("preprocess", ColumnTransformer([
                      ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), num),
                      ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                            OneHotEncoder(handle_unknown="ignore", sparse_output=False)), cat)])),
                  ("estimator", HistGradientBoostingClassifier(max_iter=30, random_state=0))])

def metrics(m, X, y):
    p = m.predict_proba(X)[:, 1]; yp = m.predict(X)
    return {"roc_auc": roc_auc_score(y, p), "pr_auc": average_precision_score(y, p), "accuracy": accuracy_score(y, yp),
            "balanced_accuracy": balanced_accuracy_score(y, yp), "f1": f1_score(y, yp, zero_division=0),
            "precision": precision_score(y, yp, zero_division=0), "recall": recall_score(y, yp, zero_division=0),
            "log_loss": log_loss(y, p), "brier": brier_score_loss(y, p)}

folds = [metrics(clone(model).fit(X_tr.iloc[a], y_tr.iloc[a]), X_tr.iloc[b], y_tr.iloc[b])
         for a, b in StratifiedKFold(3, shuffle=True, random_state=0).split(X_tr, y_tr)]
cv = {k: (np.mean([f[k] for f in folds]), np.std([f[k] for f in folds])) for k in folds[0]}
model.fit(X_tr, y_tr)
test = metrics(model, X_te, y_te)
imp = permutation_importance(model, X_te, y_te, n_repeats=2, random_state=0, scoring=lambda m, X, y: roc_auc_score(y, m.predict_proba(X)[:, 1]))
top = X_te.columns[np.argsort(-imp.importances_mean)[:3]]
for col in top:                                   # partial dependence: one predict over stacked copies per feature
    if col in num:
        grid = np.nanquantile(X_te[col], np.linspace(0.05, 0.95, 20))
        Xr = pd.concat([X_te] * len(grid), ignore_index=True); Xr[col] = np.repeat(grid, len(X_te))
        model.predict_proba(Xr)
print(test["roc_auc"], cv["roc_auc"])
'''

def timed(cmd, cwd, env=None):
    "(wall seconds, CPU seconds of the command and its children, stdout)."
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", **(env or {})}
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0: raise SystemExit(f"{' '.join(map(str, cmd))} failed in {cwd}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), r.stdout


def migrated_store(d: Path, template: Path):
    "A store that already exists (as in a project that has run before): a copy of one made by MLflow itself."
    shutil.copy(template, d / "mlflow.db")


def main(rounds: int, only: set):
    work = Path(tempfile.mkdtemp(prefix="bench-run-"))
    from mlkit.config import load_params
    from mlkit.data import load_data
    p = load_params("train", CI)
    load_data(p.data.source, n_rows=p.data.n_rows, seed=p.seed).to_csv(work / "credit.csv", index=False)
    (work / "plain_train.py").write_text(PLAIN_TRAIN)
    (work / "research.ipynb").write_text(notebook_text(RESEARCH))
    inject = {"params": p.model_dump(mode="json")}
    (work / "train_cells.py").write_text(notebook_as_script(ROOT / "nbs" / "pipelines" / "train.ipynb", inject))
    (work / "research_cells.py").write_text(notebook_as_script(work / "research.ipynb", {}))
    tpl = work / "template"; tpl.mkdir()
    subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.MlflowClient('sqlite:///{tpl}/mlflow.db').search_experiments()"],
                   check=True, capture_output=True)
    res = {k: [] for k in ("script", "train", "cells", "reused", "nb_cells", "notebook", "warm")}
    warm_env = {"MLKIT_WARM": "1", "MLKIT_WARM_SOCKET": str(work / "warm.sock")}
    if "warm" in only:   # the environment `timed` gives every command, so that the warm process's imports are theirs
        subprocess.run([BIN / "mlkit", "warm", "--idle", "900"], env={**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", **warm_env},
                       check=True, capture_output=True)
    cpu = {k: [] for k in res}
    loads = []

    def new(name, i, store=False):
        d = work / f"{name}-{i}"; d.mkdir()
        if store: migrated_store(d, tpl / "mlflow.db")
        return d

    for i in range(rounds + 1):          # round 0 warms file caches and is dropped
        loads.append(os.getloadavg()[0])
        steps = []
        if only & {"train", "overhead", "reused"}:
            def train_pair(i=i):
                d = new("run", i)
                w, c, out = timed([BIN / "mlkit", "run", "train", "-p", CI], d)
                first = out.split()[1]
                rec = [("train", w, c)]
                if "reused" in only:
                    w2, c2, out2 = timed([BIN / "mlkit", "run", "train", "-p", CI], d)
                    assert "reused" in out2 and out2.split()[1] == first, out2
                    rec.append(("reused", w2, c2))
                return rec
            steps.append(train_pair)
        if "train" in only:
            def script(i=i):
                d = new("plain", i); shutil.copy(work / "credit.csv", d)
                return [("script", *timed([sys.executable, work / "plain_train.py"], d)[:2])]
            steps.append(script)
        if "overhead" in only:
            steps.append(lambda i=i: [("cells", *timed([sys.executable, work / "train_cells.py"], new("cells", i, store=True))[:2])])
        if "warm" in only:
            steps.append(lambda i=i: [("warm", *timed([BIN / "mlkit", "run", "train", "-p", CI], new("warm", i), env=warm_env)[:2])])
        if "notebook" in only:
            def nb_pair(i=i):
                d = new("nb", i); shutil.copy(work / "research.ipynb", d)
                return [("notebook", *timed([BIN / "mlkit", "run", "research.ipynb"], d)[:2])]
            steps.append(nb_pair)
            steps.append(lambda i=i: [("nb_cells", *timed([sys.executable, work / "research_cells.py"], new("nbc", i, store=True))[:2])])
        order = steps[i % len(steps):] + steps[:i % len(steps)] if steps else []
        for step in order:
            for name, w, c in step():
                if i: res[name].append(w); cpu[name].append(c)
        loads.append(os.getloadavg()[0])
        print(f"round {i}{' (warm-up, dropped)' if not i else ''}: " +
              ", ".join(f"{k} {v[-1]:.2f}s" for k, v in res.items() if v and i), file=sys.stderr)

    med = {k: statistics.median(v) for k, v in res.items() if v}
    mcpu = {k: statistics.median(v) for k, v in cpu.items() if v}
    print(f"\nmlkit run benchmarks: {rounds} rounds (medians), load average (1 min) {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} cores")
    print(f"{'measure':<34} {'mlkit':>8} {'baseline':>9} {'ratio':>6} {'diff':>7}   {'cpu mlkit/base':>15}  goal")
    def row(label, cand, base, goal, ok):
        b = med.get(base)
        print(f"{label:<34} {med[cand]:7.2f}s " + (f"{b:8.2f}s {med[cand] / b:6.2f} {med[cand] - b:+6.2f}s" if b else f"{'':>9} {'':>6} {'':>7}")
              + f"   {mcpu[cand]:6.2f}/" + (f"{mcpu[base]:.2f}s" if b else "-    ") + f"  {goal}: {'PASS' if ok else 'FAIL'}")
    if "train" in med and "script" in med:
        row("mlkit run train vs sklearn script", "train", "script", "≤ 1.5×", med["train"] <= 1.5 * med["script"])
    if "warm" in med and "script" in med:
        row("mlkit run train, warm, vs script", "warm", "script", "≤ 1.5×", med["warm"] <= 1.5 * med["script"])
    if "train" in med and "cells" in med:
        row("mlkit run train vs its cells", "train", "cells", "overhead < 2 s", med["train"] - med["cells"] < 2)
    if "notebook" in med:
        row("mlkit run research.ipynb vs cells", "notebook", "nb_cells", "overhead < 2 s (3 s)", med["notebook"] - med["nb_cells"] < 2)
    if "reused" in med:
        row("second identical mlkit run train", "reused", None, "< 2 s", med["reused"] < 2)
    if "warm" in only: subprocess.run([BIN / "mlkit", "warm", "--stop"], env={**os.environ, **warm_env}, capture_output=True)
    print(json.dumps({"medians": med, "cpu": mcpu, "load": [min(loads), max(loads)], "all": res}, default=float), file=sys.stderr)


if __name__ == "__main__":
    args = sys.argv[1:]
    only = {"train", "overhead", "notebook", "reused", "warm"}
    if "--only" in args:
        only = set(args[args.index("--only") + 1].split(",")); del args[args.index("--only"):args.index("--only") + 2]
    main(int(args[0]) if args else 3, only)
