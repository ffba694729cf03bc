"""Serving benchmark: `mlkit serve` against `mlflow models serve --env-manager local`, same model, same payloads, same run.

Load generator: `wrk` (Debian package; keep-alive connections, 2 threads), falling back to a Python thread pool with httpx when wrk
is missing. Cells (1 row / 100 rows × 1 / 16 clients) alternate between the two servers so that machine noise hits both alike;
compare the ratios, not the absolute numbers. Also: single-row latency over HTTP against in-process predict on the same row.

    python bench/bench_serve.py [--seconds 6]          # about 2 minutes
"""
import argparse, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def wait(url, proc, timeout=90):
    import httpx
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None: raise SystemExit(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200: return time.time() - t0
        except httpx.HTTPError: pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready")


def train(d):
    "The credit model as `mlkit run train` builds it (HistGradientBoosting, 100 iterations), logged and registered as credit@champion."
    import mlflow
    from mlkit import data as md, models as mm, tracking
    df = md.make_credit_data(5000, seed=0).drop(columns=["application_date"])
    schema = md.infer_schema(df, target="default", id_column="id")
    X, y = df.drop(columns=["default", "id"]), df["default"]
    m = mm.make_model(schema, task="binary", seed=0).fit(X, y)
    with tracking.start_run(pipeline="train", experiment="bench"):
        info = tracking.log_model(m, X_sample=X, schema=schema, task="binary", model_name="credit")
    mlflow.MlflowClient().set_registered_model_alias("credit", "champion", info.registered_model_version)
    return m, X


def run_wrk(url, body_file, clients, seconds):
    lua = body_file.with_suffix(".lua")
    lua.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = io.open("{body_file}"):read("*a")\n')
    out = subprocess.run(["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{seconds}s", "--latency", "-s", str(lua), url],
                         capture_output=True, text=True).stdout
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    pct = {p: float(v) * unit[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": pct["50"], "p99": pct["99"], "non2xx": int(bad.group(1)) if bad else 0, "socket_errors": errs.group(1) if errs else ""}


def run_py(url, body_file, clients, seconds):
    import httpx
    from concurrent.futures import ThreadPoolExecutor
    body, lat, end, bad = body_file.read_bytes(), [], time.time() + seconds, [0]
    def loop(_):
        with httpx.Client(headers={"Content-Type": "application/json"}) as c:
            while time.time() < end:
                t = time.perf_counter(); r = c.post(url, content=body); lat.append((time.perf_counter() - t) * 1e3)
                bad[0] += r.status_code != 200
    with ThreadPoolExecutor(clients) as ex: list(ex.map(loop, range(clients)))
    lat.sort()
    return {"rps": len(lat) / seconds, "p50": lat[len(lat) // 2], "p99": lat[int(len(lat) * 0.99)], "non2xx": bad[0], "socket_errors": ""}


def inprocess(m, X, n=300):
    "p50 ms of pipeline.predict on one row (a DataFrame, as in any Python caller) and of mlkit's compiled path."
    from mlkit.payload import ServedModel
    from mlkit import data as md
    sm = ServedModel(m, schema=md.infer_schema(X.assign(default=0), target="default"), name="credit")
    row = X.head(1); cols = {c: [v] for c, v in json.loads(row.to_json(orient="records"))[0].items()}
    def p50(f):
        f(); ts = []
        for _ in range(n):
            t = time.perf_counter(); f(); ts.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ts)
    return {"pipeline.predict": p50(lambda: m.predict(row)), "compiled": p50(lambda: sm.predict(cols, 1))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=6, help="seconds per cell (default 6)")
    a = ap.parse_args()
    os.environ.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    d = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    os.chdir(d)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{d}/mlflow.db"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("MLKIT_SERVE_TOKEN", None)
    m, X = train(d)
    for n in (1, 100):
        (d / f"rows{n}.json").write_text(json.dumps({"dataframe_split": json.loads(X.sample(n, random_state=n).to_json(orient="split", index=False))}))
    gen = run_wrk if shutil.which("wrk") else run_py
    ports = {"mlkit": free_port(), "mlflow": free_port()}
    procs = {
        "mlkit": subprocess.Popen([str(BIN / "mlkit"), "serve", "--model", "models:/credit@champion", "--port", str(ports["mlkit"]), "--log-dir", str(d / "plog")],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
        "mlflow": subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", "models:/credit@champion", "--env-manager", "local", "-p", str(ports["mlflow"]),
                                    "-h", "127.0.0.1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)}
    try:
        for k, p in procs.items(): print(f"{k} ready in {wait(f'http://127.0.0.1:{ports[k]}/health', p):.1f} s", flush=True)
        urls = {k: f"http://127.0.0.1:{p}/invocations" for k, p in ports.items()}
        for k, u in urls.items():  # warm up, and check both answer the same
            gen(u, d / "rows1.json", 1, 1)
        import httpx
        same = httpx.post(urls["mlkit"], content=(d / "rows100.json").read_bytes(), headers={"Content-Type": "application/json"}).json() == \
               httpx.post(urls["mlflow"], content=(d / "rows100.json").read_bytes(), headers={"Content-Type": "application/json"}).json()
        print(f"load generator: {'wrk' if gen is run_wrk else 'python httpx threads'}; {a.seconds} s per cell; same predictions on 100 rows: {same}\n")
        print(f"{'payload':>8} {'clients':>7} | {'server':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} | ratio req/s, p99")
        rows = []
        for n in (1, 100):
            for c in (1, 16):
                res = {k: gen(urls[k], d / f"rows{n}.json", c, a.seconds) for k in ("mlflow", "mlkit")}
                for k, r in res.items():
                    extra = f"| x{res['mlkit']['rps'] / res['mlflow']['rps']:.2f}, x{res['mlkit']['p99'] / res['mlflow']['p99']:.2f}" if k == "mlkit" else ""
                    print(f"{n:>5} rw {c:>7} | {k:>6} {r['rps']:>8.1f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['non2xx']:>6} {extra}", flush=True)
                rows.append((n, c, res))
        # single-row latency: HTTP (1 client) against in-process predict on the same row
        body = (d / "rows1.json").read_bytes()
        with httpx.Client(headers={"Content-Type": "application/json"}) as cl:
            ts = []
            for _ in range(300):
                t = time.perf_counter(); cl.post(urls["mlkit"], content=body); ts.append((time.perf_counter() - t) * 1e3)
        http_p50, ip = statistics.median(ts), inprocess(m, X.sample(1, random_state=1))
        print(f"\nsingle row, p50: HTTP to mlkit serve {http_p50:.2f} ms (httpx client); in-process pipeline.predict {ip['pipeline.predict']:.2f} ms; "
              f"in-process compiled path {ip['compiled']:.2f} ms")
        print(f"added by HTTP over in-process pipeline.predict: {http_p50 - ip['pipeline.predict']:+.2f} ms; over the compiled path: {http_p50 - ip['compiled']:+.2f} ms")
        print(json.dumps({"cells": [{"rows": n, "clients": c, **{f"{k}_{m_}": round(v, 2) for k, r in res.items() for m_, v in r.items() if m_ != "socket_errors"}}
                                    for n, c, res in rows], "http_p50_ms": round(http_p50, 2), **{f"inprocess_{k}_ms": round(v, 2) for k, v in ip.items()}}))
    finally:
        for p in procs.values():
            p.terminate()
            try: p.wait(10)
            except subprocess.TimeoutExpired: p.kill()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
