"""Data-side costs that a training run pays before any fitting: generating the bundled demo (goal: 5,000 rows in < 0.5 s, so it can
be generated on every run instead of stored), the header-only precheck the runner does before a kernel starts (against reading the
whole file with pandas), and the leak check on the training split (against one cross-validated fit of the default model).
Usage: python bench/bench_data.py [repeats]"""
import statistics, sys, tempfile, time
from pathlib import Path


def timed(f, n):
    "Wall-clock seconds of `n` calls of `f`."
    out = []
    for _ in range(n):
        t0 = time.perf_counter(); f(); out.append(time.perf_counter() - t0)
    return out


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    sys.path.insert(0, str(Path(__file__).parent))
    from _util import report
    from mlkit.checks import warn_leaks
    from mlkit.data import load_data, make_credit_data, precheck_data
    make_credit_data(100)
    gen = timed(lambda: make_credit_data(5000, seed=1), n)
    print(f"make_credit_data(5000): median {statistics.median(gen):.3f} s; goal < 0.5 s: "
          f"{'PASS' if statistics.median(gen) < 0.5 else 'FAIL'}")
    big = make_credit_data(200_000, seed=2)
    path = Path(tempfile.mkdtemp()) / "big.csv"
    big.to_csv(path, index=False)
    named = {"data.target": ["default"], "data.sensitive": ["sex"], "data.drop_columns": ["application_date"]}
    report("precheck of a 200,000-row CSV", "load_data (pandas, whole file)", timed(lambda: load_data(path), n),
           "precheck_data (header only)", timed(lambda: precheck_data(path, named=named), n))
    from mlkit.checks import infer_schema
    from mlkit.evaluate import cross_validate_model
    from mlkit.models import make_model
    train = make_credit_data(5000, seed=3)
    schema = infer_schema(train, target="default", quiet=True)
    cv = lambda: cross_validate_model(make_model(schema, task="binary", seed=0), train.drop(columns="default"), train["default"],
                                      task="binary", folds=3)
    report("leak check of the 5,000-row credit training split", "3-fold CV of the default model", timed(cv, max(1, n // 2)),
           "warn_leaks (15 columns)", timed(lambda: warn_leaks(train, target="default", task="binary", quiet=True), n))
    full = make_credit_data(5000, seed=4)
    X5, y5 = full.drop(columns="default"), full["default"]
    hgb = lambda: cross_validate_model(make_model(infer_schema(full, target="default", quiet=True), task="binary", seed=0), X5, y5,
                                       task="binary", folds=5)
    t = statistics.median(timed(hgb, max(1, n // 2)))
    print(f"5-fold CV of the default model on 5,000 rows (was a wall-clock assert in tests/test_evaluate.py, < 30 s): {t:.2f} s "
          f"{'PASS' if t < 30 else 'FAIL'}")
