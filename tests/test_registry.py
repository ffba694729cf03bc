"""Alias moves that stay consistent across machines: racing promotions and rollbacks from separate processes that share nothing but
the store — a real `mlflow server` (basic auth, PostgreSQL) and, faster, a SQLite file — and a mover that died half-way.

Each round, two long-lived worker processes wait for the same start signal, read the champion and move it (promote to another
version; every fourth round one of them rolls back instead). After every round: the alias is where the last history entry says, the
entries are numbered 1..n without gap or duplicate, each entry starts where the previous one ended, and every loser was told why."""
import json, os, subprocess, sys, time
from pathlib import Path

import pytest

ROUNDS = 20

WORKER = r"""
import json, os, sys, time
from pathlib import Path
from mlkit import history, registry as reg
name, me, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
reg.find_model(name)                              # connect (and check the server) before the first round
print("ready", flush=True)
for rnd in range(int(sys.argv[4])):
    go = folder / f"go-{rnd}"
    while not go.exists(): time.sleep(0.001)      # both workers leave this loop within a millisecond or two
    current = str(getattr(reg.get_alias(name), "version", None))
    others = sorted({"1", "2", "3"} - {current})
    try:
        if me == 1 and rnd % 4 == 3: e = history.rollback_champion(name, reason=f"round {rnd}")
        else: e = reg.move_champion(name, others[me % len(others)], expected_from=None if current == "None" else current,
                                    verdict="passed", reason=f"round {rnd} by worker {me}")
        out = {"won": True, "seq": e["seq"], "action": e["action"]}
    except reg.ChampionChanged as x: out = {"won": False, "error": str(x), "kind": "ChampionChanged"}
    except reg.RegistryError as x: out = {"won": False, "error": str(x), "kind": type(x).__name__}
    (folder / f"tmp-{rnd}-{me}").write_text(json.dumps(out))
    (folder / f"tmp-{rnd}-{me}").rename(folder / f"done-{rnd}-{me}.json")   # appears whole: the parent never reads half a file
"""


def make_versions(client, name, n=3):
    "Registered model `name` with `n` versions (of one tiny run; the registry tests need versions, not models)."
    exp = client.create_experiment(f"{name}-exp")
    run = client.create_run(exp)
    client.log_text(run.info.run_id, "flavors: {}\n", "model/MLmodel")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    for _ in range(n): client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)


def wait_for(paths, procs, timeout=120):
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        for pr in procs:
            if pr.poll() is not None: raise AssertionError(f"worker exited {pr.returncode}: {pr.stderr.read()[-3000:]}")
        if time.monotonic() > deadline: raise AssertionError(f"no result after {timeout} s: {[str(p) for p in paths if not p.exists()]}")
        time.sleep(0.01)


def check_consistent(client, name):
    from mlkit.registry import read_history
    h = read_history(name)
    assert [e["seq"] for e in h] == list(range(1, len(h) + 1)), [e["seq"] for e in h]
    for prev, cur in zip(h, h[1:]): assert cur["from_version"] == prev["to_version"], (prev, cur)
    assert str(client.get_registered_model(name).aliases.get("champion")) == h[-1]["to_version"]
    assert not [m.name for m in client.search_registered_models() if ".mlkit-move." in m.name]   # no claim left behind
    return h


def race(tmp_path, env, client, name, rounds=ROUNDS):
    "Run `rounds` racing rounds between two worker processes; returns (history, how many rounds had exactly one winner)."
    from mlkit import registry
    make_versions(client, name)
    registry.move_champion(name, 1, expected_from=None)
    full = {**os.environ, **env, "MLKIT_USER": "racer"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, name, str(i), str(tmp_path), str(rounds)], env=full, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in (0, 1)]
    contested = 0
    try:
        for p in procs: assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for rnd in range(rounds):
            before = len(registry.read_history(name))
            (tmp_path / f"go-{rnd}").touch()
            outs = [tmp_path / f"done-{rnd}-{i}.json" for i in (0, 1)]
            wait_for(outs, procs)
            res = [json.loads(p.read_text()) for p in outs]
            h = check_consistent(client, name)
            winners = [r for r in res if r["won"]]
            assert len(h) == before + len(winners), (res, h[before:])          # no entry lost, none duplicated
            assert sorted(r["seq"] for r in winners) == list(range(before + 1, len(h) + 1))
            for r in res:
                if not r["won"]:                                                # the loser is told it lost, and to whom
                    assert r["kind"] == "ChampionChanged" and "racer" in r["error"] and "history #" in r["error"], r
            contested += len(winners) == 1
    finally:
        for p in procs:
            if p.poll() is None: p.kill()
            p.wait(timeout=30)
    return registry.read_history(name), contested


@pytest.fixture
def sqlite_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    import mlflow
    mlflow.set_tracking_uri(uri)
    return {"MLFLOW_TRACKING_URI": uri}, mlflow.MlflowClient(uri)


@pytest.fixture
def server_store(mlflow_server, monkeypatch):
    monkeypatch.delenv("MLKIT_USER", raising=False)
    env = mlflow_server.env(mlflow_server.admin[0])
    for k, v in env.items(): monkeypatch.setenv(k, v)
    import mlflow
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return env, mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])


@pytest.mark.slow
def test_racing_moves_on_sqlite(sqlite_store, tmp_path):
    env, client = sqlite_store
    (tmp_path / "race").mkdir()
    h, contested = race(tmp_path / "race", env, client, "race-sqlite")
    assert len(h) >= ROUNDS + 1
    print(f"sqlite: {len(h)} entries, {contested}/{ROUNDS} rounds with one winner")


@pytest.mark.slow
def test_racing_moves_on_a_tracking_server(server_store, tmp_path):
    env, client = server_store
    (tmp_path / "race").mkdir()
    h, contested = race(tmp_path / "race", env, client, "race-server")
    assert len(h) >= ROUNDS + 1 and {e["action"] for e in h} >= {"promote", "rollback"}
    print(f"server: {len(h)} entries, {contested}/{ROUNDS} rounds with one winner")


CRASH = r"""
import os, sys
from mlkit import history, registry as reg
name = sys.argv[1]
rm = reg.find_model(name)
seq = len(reg.read_history(name)) + 1
entry = {"seq": seq, "who": "crasher", "when": reg._now(), "action": "promote", "from_version": "1", "to_version": "3", "challenger": "3"}
assert reg._claim(name, seq, entry)
if sys.argv[2] == "after-alias": reg.get_client().set_registered_model_alias(name, "champion", "3")
os._exit(9)                                    # dies holding the claim: no history entry, no clean-up
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["before-alias", "after-alias"])
def test_a_mover_that_died_half_way_is_recorded_and_does_not_block(server_store, where, monkeypatch):
    env, client = server_store
    from mlkit import registry
    name = f"crash-{where}"
    make_versions(client, name)
    registry.move_champion(name, 1, expected_from=None)
    r = subprocess.run([sys.executable, "-c", CRASH, name, where], env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 9, r.stderr
    monkeypatch.setenv("MLKIT_MOVE_LEASE", "3")
    if where == "before-alias":                 # the crashed promotion never moved the alias: recorded as aborted, ours goes through
        registry.move_champion(name, 2, expected_from=1, verdict="passed")
        assert [e["action"] for e in registry.read_history(name)] == ["promote", "aborted", "promote"]
        assert "crasher's promote to v3 claimed entry #2 but did not finish" in registry.read_history(name)[1]["reason"]
    else:                                       # it did: its entry is recorded as claimed, and ours was evaluated against a stale champion
        with pytest.raises(registry.ChampionChanged, match=r"is now version 3, not 1 .*crasher promote v1 → v3"):
            registry.move_champion(name, 2, expected_from=1, verdict="passed")
        h = registry.read_history(name)
        assert [(e["action"], e["to_version"], e.get("recovered_by")) for e in h] == [("promote", "1", None), ("promote", "3", "admin")]
    check_consistent(client, name)


@pytest.mark.slow
def test_a_user_without_permission_cannot_move_the_champion_nor_block_others(mlflow_server, server_store, monkeypatch):
    env, client = server_store
    from mlkit import registry
    from mlkit.core import TrackingError
    make_versions(client, "guarded")
    registry.move_champion("guarded", 1, expected_from=None)
    reader = mlflow_server.create_user("reader-" + os.urandom(3).hex())
    for k, v in reader.items(): monkeypatch.setenv(k, v)
    with pytest.raises(TrackingError, match=r"set registered model alias 'guarded': user 'reader-\w+' has no permission .*\(403 Forbidden\)"):
        registry.move_champion("guarded", 2, expected_from=1)
    for k, v in env.items(): monkeypatch.setenv(k, v)
    assert registry.move_champion("guarded", 2, expected_from=1)["seq"] == 2   # its claim was dropped: nobody waits for a lease
    check_consistent(client, "guarded")
