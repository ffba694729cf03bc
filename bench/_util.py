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
