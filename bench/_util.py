"""Small helpers shared by the benchmarks: timing medians and a uniform report line."""
import statistics, subprocess, time


def time_cmd(cmd, n=5, **kw):
    "Wall-clock seconds of each of `n` runs of `cmd` (a list)."
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, **kw)
        out.append(time.perf_counter() - t0)
    return out


def report(name, baseline_name, baseline, candidate_name, candidate, unit="s", goal=None):
    "Print medians of both series, their ratio and difference, and the goal."
    b, c = statistics.median(baseline), statistics.median(candidate)
    print(f"{name}: {candidate_name} {c:.3f}{unit} (median of {len(candidate)}) vs {baseline_name} {b:.3f}{unit} "
          f"(median of {len(baseline)}) → ratio {c / b:.2f}, difference {c - b:+.3f}{unit}" + (f"; goal: {goal}" if goal else ""))
    return b, c


def start_warm(folder, env):
    """Start a warm process (`mlkit warm`) for commands run with environment `env`, its socket in `folder`; returns the variables that
    send a command through it. Started with `env` itself, so that its import-time variables are the commands'."""
    import os, sys
    from pathlib import Path
    w = {"MLKIT_WARM": "1", "MLKIT_WARM_SOCKET": str(Path(folder) / "warm.sock")}
    subprocess.run([str(Path(sys.executable).parent / "mlkit"), "warm", "--idle", "1800"], env={**env, **w}, check=True, capture_output=True)
    return w


def stop_warm(w, env):
    import sys
    from pathlib import Path
    subprocess.run([str(Path(sys.executable).parent / "mlkit"), "warm", "--stop"], env={**env, **w}, capture_output=True)
