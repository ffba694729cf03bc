"""DVC-aware lineage against a real `dvc init` repository with a local DVC remote: the run's tags name DVC's content hash and the
git revision of the `.dvc` / `dvc.lock` record, and `checkout_data` brings a recorded version back (from the cache, or the remote)."""
import hashlib, os, shutil, subprocess, sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
DVC = Path(sys.executable).parent / "dvc"


def md5(p): return hashlib.md5(Path(p).read_bytes()).hexdigest()


def sh(repo, *args):
    r = subprocess.run([str(a) for a in args], cwd=repo, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
    return r.stdout.strip()


@pytest.fixture
def repo(tmp_path):
    "A git + DVC project with a local remote; data/raw.csv added with `dvc add` and pushed, as version 1."
    if not DVC.exists() and not shutil.which("dvc"):
        if os.environ.get("CI") == "true": pytest.fail("dvc is not installed (it is a dev requirement: pip install -e '.[dev]')")
        pytest.skip("dvc is not installed (pip install dvc)")
    dvc = str(DVC) if DVC.exists() else "dvc"
    root, remote = tmp_path / "project", tmp_path / "remote"
    root.mkdir(); remote.mkdir()
    sh(root, "git", "init", "-q"); sh(root, "git", "config", "user.email", "t@e.st"); sh(root, "git", "config", "user.name", "t")
    sh(root, dvc, "init", "-q"); sh(root, dvc, "remote", "add", "-d", "local", remote)
    (root / "data").mkdir(); (root / "data" / "raw.csv").write_text("id,x\n1,2\n2,3\n")
    sh(root, dvc, "add", "-q", "data/raw.csv"); sh(root, "git", "add", "-A"); sh(root, "git", "commit", "-qm", "data v1")
    sh(root, dvc, "push", "-q")
    return root, dvc


def test_tags_name_the_dvc_version_and_checkout_brings_it_back(repo, monkeypatch):
    from mlkit.lineage import checkout_data, data_lineage, lineage_tags
    from mlkit.config import TrainParams
    root, dvc = repo
    raw = root / "data" / "raw.csv"
    v1 = data_lineage(raw)
    assert v1["mlkit.data.dvc_md5"] == md5(raw) and v1["mlkit.data.dvc_hash"] == "md5"
    assert v1["mlkit.data.path"] == "data/raw.csv" and v1["mlkit.data.dvc_file"] == "data/raw.csv.dvc"
    assert v1["mlkit.data.dvc_rev"] == sh(root, "git", "rev-parse", "HEAD") and v1["mlkit.data.dvc_file_dirty"] == "false"
    assert v1["mlkit.data.dvc_in_sync"] == "true"
    monkeypatch.chdir(root)                           # a train run on that file records the same tags (from params' data.source)
    tags = lineage_tags(pipeline="train", params=TrainParams(data={"source": "data/raw.csv"}))
    assert {k: v for k, v in tags.items() if k.startswith("mlkit.data.")} == v1

    # version 2: edited, `dvc add`ed, committed and pushed
    raw.write_text("id,x\n1,2\n2,3\n3,5\n")
    assert data_lineage(raw)["mlkit.data.dvc_in_sync"] == "false"   # edited but not re-added: not the recorded version
    sh(root, dvc, "add", "-q", "data/raw.csv"); sh(root, "git", "commit", "-qam", "data v2"); sh(root, dvc, "push", "-q")
    v2 = data_lineage(raw)
    assert v2["mlkit.data.dvc_md5"] != v1["mlkit.data.dvc_md5"] and v2["mlkit.data.dvc_rev"] != v1["mlkit.data.dvc_rev"]

    # back to version 1 from the local cache: the .dvc file goes back to its recorded revision, the data to its content
    assert checkout_data(v1, root=root) == raw and md5(raw) == v1["mlkit.data.dvc_md5"]
    assert data_lineage(raw)["mlkit.data.dvc_md5"] == v1["mlkit.data.dvc_md5"]

    # version 2 again with an empty cache and no data file: only the remote has it
    shutil.rmtree(root / ".dvc" / "cache"); raw.unlink()
    assert checkout_data(v2, root=root) == raw and md5(raw) == v2["mlkit.data.dvc_md5"]


def test_stage_outputs_are_found_in_dvc_lock(repo):
    from mlkit.lineage import data_lineage
    root, dvc = repo
    (root / "dvc.yaml").write_text("stages:\n  clean:\n    wdir: data\n    cmd: python -c \"open('clean.csv','w').write(open('raw.csv').read().upper())\"\n"
                                   "    deps: [raw.csv]\n    outs: [clean.csv]\n")
    sh(root, dvc, "repro", "-q"); sh(root, "git", "add", "-A"); sh(root, "git", "commit", "-qm", "stage")
    t = data_lineage(root / "data" / "clean.csv")
    assert t["mlkit.data.dvc_stage"] == "clean" and t["mlkit.data.dvc_file"] == "dvc.lock"
    assert t["mlkit.data.dvc_md5"] == md5(root / "data" / "clean.csv") and t["mlkit.data.dvc_rev"] == sh(root, "git", "rev-parse", "HEAD")


def test_checkout_names_what_is_missing(repo, tmp_path):
    from mlkit.core import DataError
    from mlkit.lineage import checkout_data, data_lineage
    root, dvc = repo
    tags = data_lineage(root / "data" / "raw.csv")
    shutil.rmtree(root / ".dvc" / "cache"); (root / "data" / "raw.csv").unlink()
    sh(root, dvc, "remote", "modify", "local", "url", tmp_path / "empty-remote")   # the remote lost the data
    with pytest.raises(DataError, match=r"dvc could not restore data/raw.csv \([0-9a-f]{32}\): .*check the DVC remote"):
        checkout_data(tags, root=root)
    with pytest.raises(DataError, match="cannot check out data/raw.csv.dvc at revision 0000000000"):
        checkout_data({**tags, "mlkit.data.dvc_md5": "f" * 32, "mlkit.data.dvc_rev": "0" * 40}, root=root)
