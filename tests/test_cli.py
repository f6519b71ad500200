import os
import subprocess
import sys
from pathlib import Path

import pytest

from sciinterp.cli import main
from sciinterp.store import open_store

BIN = Path(sys.executable).parent / "sciinterp"
CMD = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "sciinterp.cli"]


def _run(*args, env=None, check=True):
    res = subprocess.run([*CMD, *args], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})  # fmt: skip
    res.log = res.stdout + res.stderr  # Hydra logs to stdout, tqdm to stderr
    if check:
        assert res.returncode == 0, res.log
    return res


def test_harvest_writes_store_skips_when_unchanged_and_force_redoes(tmp_path):
    out = tmp_path / "run"
    first = _run("harvest", f"out={out}")
    store = out / "harvest" / "store.zarr"
    ds = open_store(store)
    assert ds.sizes["token"] == 305 and ds.attrs["complete"]  # conf/data/fake.yaml: 8 sequences
    assert ds.attrs["config"]["hooks"] == ["hidden"] and ds.attrs["adapter"] == "fake"
    assert "stage: harvest" in (out / "config.yaml").read_text()  # resolved config of the run
    assert (out / "harvest" / "config.json").is_file()
    assert "harvested 305 tokens" in first.log
    stamp = (store / "zarr.json").stat().st_mtime_ns

    again = _run("harvest", f"out={out}")
    assert "up to date" in again.log and "harvested" not in again.log
    assert (store / "zarr.json").stat().st_mtime_ns == stamp

    changed = _run("harvest", f"out={out}", "harvest.chunk_rows=64", check=False)
    assert changed.returncode != 0 and "different config or inputs" in changed.log

    forced = _run("harvest", f"out={out}", "harvest.chunk_rows=64", "--force")
    assert "harvested 305 tokens" in forced.log
    assert (store / "zarr.json").stat().st_mtime_ns != stamp
    assert open_store(store).hidden.data.chunksize[0] == 64


def test_adapters_list_shows_status_and_explains_broken_plugins(tmp_path):
    dist = tmp_path / "broken_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[sciinterp.adapters]\nbroken_demo = broken_demo_missing:Adapter\n")
    res = _run("adapters", "list", env={"PYTHONPATH": str(tmp_path)})
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "TARGET", "PACKAGE"]
    rows = {ln.split()[0]: ln.split()[1] for ln in lines[1:] if ln and not ln.startswith(" ") and len(ln.split()) == 4}
    assert rows["fake"] == "ok" and rows["module"] == "ok" and rows["broken_demo"] == "broken"
    assert {"esm2", "sfno", "aurora"} <= set(rows)  # built-ins listed whether or not they load yet
    assert "No module named 'broken_demo_missing'" in res.stdout
    assert "adapters failed to load (" in res.stdout and "broken_demo" in lines[-1]


def test_usage_and_bad_arguments(capsys):
    assert main(["--help"]) == 0 and "sciinterp harvest|train" in capsys.readouterr().out
    assert main(["bogus"]) == 2 and "unknown stage 'bogus'" in capsys.readouterr().err
    assert main(["adapters", "remove"]) == 2 and "usage: sciinterp adapters list" in capsys.readouterr().err
