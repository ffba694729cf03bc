"""`mlkit --help` against `mlflow --help`, wall time. Goal: mlkit under 0.3 s."""
import statistics, sys
from pathlib import Path
from _util import report, time_cmd

BIN = Path(sys.executable).parent
if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    for sub in ([], ["serve"]):
        mlflow_t = time_cmd([str(BIN / "mlflow"), *sub[:0], "--help"], n)
        mlkit_t = time_cmd([str(BIN / "mlkit"), *sub, "--help"], n)
        _, c = report(f"`{' '.join(['mlkit', *sub, '--help'])}`", "mlflow --help", mlflow_t, "mlkit", mlkit_t, goal="mlkit < 0.3 s")
        print(f"  {'PASS' if c < 0.3 else 'FAIL'}: {c:.3f} s")
