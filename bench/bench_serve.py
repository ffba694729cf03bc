"""Serving benchmark: `mlkit serve` against `mlflow models serve --env-manager local`, same model, same payloads, same run.

Measures (each with its baseline in the same run; ratios first, absolute figures beside them):
  1. ready: seconds from start to the first 200 of /ready (mlkit) or /ping (mlflow), alternating, median of --starts each;
     goal mlkit <= 0.4x mlflow. Also mlkit through a warm process (`mlkit warm`, started once: not counted).
  2. single-row latency: p50 of one keep-alive client (http.client, one TCP connection) against mlkit's compiled in-process
     predict on the same row; goal <= +1 ms.
  3. the four load cells (1 row / 100 rows x 1 / 16 clients) with `wrk` (Debian package; keep-alive, 2 threads), alternating
     between the servers; goal: mlkit >= 3x mlflow's req/s and a lower p99 in every cell. Without wrk: a Python httpx fallback.

Machine noise hits both servers alike (alternating, same run): compare the ratios. The single-row figures also give CPU time per
request (the server process's utime+stime from /proc over the timed requests; the in-process predict's thread time), which a
busy neighbour hardly moves. Start-up is profiled by `bench/profile_serve_startup.py`.

Where a single request's time goes (--breakdown): the same row through nested layers in one process, interleaved in rounds of
100 (wall and CPU medians): the compiled predict; the handler's own work (parse the JSON, check and coerce the columns, predict,
encode the answer); the whole ASGI app called directly (Guard, auth, metrics, prediction log, batcher, route) with and without the
prediction log. HTTP minus "app" is the server (uvicorn: HTTP parsing, the event loop, the socket).

    python bench/bench_serve.py [--seconds 6] [--starts 3]          # about 3 minutes on a quiet 2-core machine
    python bench/bench_serve.py --breakdown                         # about 1 minute
    python bench/bench_serve.py --only ready,single                 # a subset: ready, single, cells
"""
import argparse, http.client, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def wait(url, proc, timeout=180):
    "Seconds until `url` answers 200 (polled every 20 ms)."
    import httpx
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None: raise SystemExit(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200: return time.perf_counter() - t0
        except httpx.HTTPError: pass
        time.sleep(0.02)
    raise SystemExit(f"{url} not ready")


def train(d):
    "The credit model as `mlkit run train` builds it (HistGradientBoosting, 100 iterations), logged and registered as credit@champion."
    import mlflow
    from mlkit import checks, data as md, models as mm, tracking
    df = md.make_credit_data(5000, seed=0).drop(columns=["application_date"])
    schema = checks.infer_schema(df, target="default", id_column="id")
    X, y = df.drop(columns=["default", "id"]), df["default"]
    m = mm.make_model(schema, task="binary", seed=0).fit(X, y)
    with tracking.start_run(pipeline="train", experiment="bench"):
        info = tracking.log_model(m, X_sample=X, schema=schema, task="binary", model_name="credit")
    mlflow.MlflowClient().set_registered_model_alias("credit", "champion", info.registered_model_version)
    return m, schema, X


COMMANDS = {
    "mlkit": lambda port, d: [str(BIN / "mlkit"), "serve", "--model", "models:/credit@champion", "--port", str(port), "--log-dir", str(d / "plog")],
    "mlflow": lambda port, d: [str(BIN / "mlflow"), "models", "serve", "-m", "models:/credit@champion", "--env-manager", "local",
                               "-p", str(port), "-h", "127.0.0.1"]}
PROBE = {"mlkit": "/ready", "mlflow": "/ping"}


def start(name, d, env):
    port = free_port()
    proc = subprocess.Popen(COMMANDS[name](port, d), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, port, wait(f"http://127.0.0.1:{port}{PROBE[name]}", proc)


def stop(proc):
    proc.terminate()
    try: proc.wait(15)
    except subprocess.TimeoutExpired: proc.kill(); proc.wait()


def run_wrk(url, body_file, clients, seconds):
    lua = body_file.with_suffix(".lua")
    lua.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = io.open("{body_file}"):read("*a")\n')
    out = subprocess.run(["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{seconds}s", "--latency", "-s", str(lua), url],
                         capture_output=True, text=True).stdout
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    pct = {p: float(v) * unit[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": pct["50"], "p99": pct["99"], "non2xx": int(bad.group(1)) if bad else 0}


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
    return {"rps": len(lat) / seconds, "p50": lat[len(lat) // 2], "p99": lat[int(len(lat) * 0.99)], "non2xx": bad[0]}


def cpu_seconds(pid):
    "utime + stime of process `pid` and its threads, in seconds (Linux /proc)."
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def http_p50(port, body, n=400, pid=None):
    "p50 ms of `n` sequential POSTs over one keep-alive connection (http.client: little client overhead); with `pid`, also the\n    server's CPU ms per request."
    conn, ts = http.client.HTTPConnection("127.0.0.1", port), []
    for i in range(n + 20):
        if i == 20 and pid: c0 = cpu_seconds(pid)
        t = time.perf_counter()
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse(); r.read()
        if i >= 20: ts.append((time.perf_counter() - t) * 1e3)
        assert r.status == 200, r.status
    conn.close()
    return (statistics.median(ts), (cpu_seconds(pid) - c0) / n * 1e3) if pid else statistics.median(ts)


def inprocess_p50(m, schema, row, n=400):
    "p50 ms of mlkit's compiled predict (ServedModel.predict, verified FastPath) on the same row, in this process."
    from mlkit.payload import ServedModel
    sm = ServedModel(m, schema=schema, name="credit")
    cols = {c: [v] for c, v in row.items()}
    for _ in range(20): sm.predict(cols, 1)
    ts, cs = [], []
    for _ in range(n):
        t, c = time.perf_counter(), time.thread_time(); sm.predict(cols, 1)
        ts.append((time.perf_counter() - t) * 1e3); cs.append((time.thread_time() - c) * 1e3)
    return statistics.median(ts), statistics.median(cs), sm.fast is not None


def breakdown(m, schema, row, d, rounds=12):
    "Wall and CPU medians (ms) of one row through nested layers, in one process, interleaved in rounds of 100 calls."
    import asyncio
    from contextlib import AsyncExitStack
    from mlkit.payload import ServedModel, parse_payload, _kind
    from mlkit.serve import make_app, _inference_params
    sm = ServedModel(m, schema=schema, name="credit", version="1")
    body, cols1 = json.dumps({"dataframe_records": [row]}).encode(), {c: [v] for c, v in row.items()}
    strs = [c for c, s in sm.specs.items() if _kind(s) != "numeric"]
    def handler():
        cols, n, params = parse_payload(body, "application/json", str_columns=strs, example=sm.example)
        _inference_params(params, sm, "mlflow")
        cols, _ = sm.conform(cols, n, policy="mlflow")
        json.dumps({"predictions": sm.predict(cols, n)[0].tolist()})
    apps = {"ASGI app, no prediction log": make_app(sm, reload_interval=0),
            "ASGI app (as served)": make_app(sm, reload_interval=0, log_dir=d / "plog-breakdown")}
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    async def call(app):
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": "/invocations", "raw_path": b"/invocations", "query_string": b"", "root_path": "", "headers": headers,
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
        sent = []
        async def receive(): return {"type": "http.request", "body": body, "more_body": False}
        async def send(msg): sent.append(msg)
        await app(scope, receive, send)
        assert sent[0]["status"] == 200, sent
    async def run():
        res = {k: [] for k in ("compiled predict", "handler work", *apps)}
        async with AsyncExitStack() as st:
            for a in apps.values(): await st.enter_async_context(a.router.lifespan_context(a))
            for r in range(rounds):
                for k in res:
                    for _ in range(100):
                        w, c = time.perf_counter(), time.thread_time()
                        if k in apps: await call(apps[k])
                        else: sm.predict(cols1, 1) if k == "compiled predict" else handler()
                        if r: res[k].append(((time.perf_counter() - w) * 1e3, (time.thread_time() - c) * 1e3))
        return {k: (statistics.median(x for x, _ in v), statistics.median(y for _, y in v)) for k, v in res.items()}
    out = asyncio.run(run())
    base = out["compiled predict"]
    print(f"breakdown of one row, in process ({rounds - 1} rounds of 100 after a warm-up round; medians, ms):")
    for k, (w, c) in out.items(): print(f"  {k:30s} wall {w:6.3f} ({w - base[0]:+.3f})   cpu {c:6.3f} ({c - base[1]:+.3f})")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=6, help="seconds per load cell (default 6)")
    ap.add_argument("--starts", type=int, default=3, help="start-ups of each server for the ready time (default 3)")
    ap.add_argument("--only", default="ready,single,cells", help="comma-separated parts: ready, single, cells (default all)")
    ap.add_argument("--breakdown", action="store_true", help="only the in-process breakdown of a single request")
    a = ap.parse_args()
    parts = set(a.only.split(","))
    os.environ.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    d = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    os.chdir(d)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{d}/mlflow.db"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}
    env.pop("MLKIT_SERVE_TOKEN", None)
    m, schema, X = train(d)
    for n in (1, 100):
        (d / f"rows{n}.json").write_text(json.dumps({"dataframe_split": json.loads(X.sample(n, random_state=n).to_json(orient="split", index=False))}))
    row = json.loads(X.sample(1, random_state=1).to_json(orient="records"))[0]
    if a.breakdown: return breakdown(m, schema, row, d)
    procs, ready, hp = {}, {"mlkit": [], "mlflow": []}, None
    try:
        # 1. ready time, alternating
        if "ready" in parts:
            sys.path.insert(0, str(Path(__file__).parent))
            from _util import start_warm, stop_warm
            warm, ready["mlkit, warm"] = start_warm(d, env), []
        for _ in range(a.starts if "ready" in parts else 0):
            for k in ("mlflow", "mlkit", "mlkit, warm"):
                proc, port, secs = start(k.split(",")[0], d, {**env, **warm} if "warm" in k else env); ready[k].append(secs); stop(proc)
        if "ready" in parts:
            stop_warm(warm, env)
            rk, rf, rw = statistics.median(ready["mlkit"]), statistics.median(ready["mlflow"]), statistics.median(ready["mlkit, warm"])
            print(f"ready: ratio x{rk / rf:.2f} (goal <= 0.4) — mlkit {rk:.2f} s, mlflow {rf:.2f} s (medians of {a.starts}; "
              f"mlkit {[round(x, 2) for x in ready['mlkit']]}, mlflow {[round(x, 2) for x in ready['mlflow']]})", flush=True)
            print(f"ready through a warm process (`mlkit warm`, started once): ratio x{rw / rf:.2f} (goal <= 0.4) — {rw:.2f} s "
                  f"({[round(x, 2) for x in ready['mlkit, warm']]})", flush=True)
        if not parts & {"single", "cells"}: return
        for k in ("mlkit", "mlflow"):
            proc, port, _ = start(k, d, env); procs[k] = (proc, port)
        urls = {k: f"http://127.0.0.1:{p}/invocations" for k, (_, p) in procs.items()}
        import httpx
        same = httpx.post(urls["mlkit"], content=(d / "rows100.json").read_bytes(), headers={"Content-Type": "application/json"}).json() == \
               httpx.post(urls["mlflow"], content=(d / "rows100.json").read_bytes(), headers={"Content-Type": "application/json"}).json()
        # 2. single row: HTTP against in-process compiled predict
        body = json.dumps({"dataframe_records": [row]})
        for _ in range(3 if "single" in parts else 0):  # alternating, three times: the machine's noise moves both sides
            (hp, hc), (ip, ic, compiled) = http_p50(procs["mlkit"][1], body, pid=procs["mlkit"][0].pid), inprocess_p50(m, schema, row)
            print(f"single row p50: HTTP over in-process {hp - ip:+.2f} ms (goal <= +1 ms) — HTTP {hp:.2f} ms, in-process compiled "
                  f"predict {ip:.2f} ms (compiled: {compiled}); CPU per request: server {hc:.2f} ms, predict {ic:.2f} ms ({hc - ic:+.2f}); "
                  f"mlflow HTTP {http_p50(procs['mlflow'][1], body, 100):.2f} ms", flush=True)
        if "cells" not in parts: return
        # 3. the four cells
        gen = run_wrk if shutil.which("wrk") else run_py
        for u in urls.values(): gen(u, d / "rows1.json", 1, 1)  # warm up
        print(f"\nload generator: {'wrk' if gen is run_wrk else 'python httpx threads'}; {a.seconds} s per cell; same predictions on 100 rows: {same}")
        print(f"{'payload':>8} {'clients':>7} | {'ratio req/s':>11} {'ratio p99':>9} | {'mlkit req/s':>11} {'p50':>7} {'p99':>7} | "
              f"{'mlflow req/s':>12} {'p50':>7} {'p99':>7} | non-2xx")
        cells = []
        for n in (1, 100):
            for c in (1, 16):
                res = {k: gen(urls[k], d / f"rows{n}.json", c, a.seconds) for k in ("mlflow", "mlkit")}
                k_, f_ = res["mlkit"], res["mlflow"]
                print(f"{n:>5} rw {c:>7} | x{k_['rps'] / f_['rps']:>10.2f} x{k_['p99'] / f_['p99']:>8.2f} | {k_['rps']:>11.1f} {k_['p50']:>7.2f} "
                      f"{k_['p99']:>7.2f} | {f_['rps']:>12.1f} {f_['p50']:>7.2f} {f_['p99']:>7.2f} | {k_['non2xx']}/{f_['non2xx']}", flush=True)
                cells.append({"rows": n, "clients": c, **{f"{k}_{m_}": round(v, 2) for k, r in res.items() for m_, v in r.items()}})
        print(json.dumps({"ready_s": {"mlkit": ready["mlkit"], "mlflow": ready["mlflow"]}, "cells": cells}))
    finally:
        for proc, _ in procs.values(): stop(proc)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
