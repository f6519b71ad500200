import json
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


def test_run_with_loss_recovered_writes_eval_json_and_the_report_shows_it(tmp_path):
    """`train.loss_recovered=true`: the adapter's masked-LM evaluator scores the trained SAE -> eval.json -> report."""
    import json
    import re

    out = tmp_path / "run"
    res = _run("run", f"out={out}", "adapter=esm2_demo", "data=fasta_demo", "data.limit=6", "labels=protein_sequence",
               "harvest.hooks=[layer3]", "train.loss_recovered=true", "train.loss_recovered_items=3",
               "sae.d_sae=256", "sae.k=8", "trainer.batch_size=256", "trainer.epochs=4", "trainer.warmup_steps=5",
               "trainer.progress=false", "analysis.n_perm=5", "analysis.progress=false", "report.n_cards=2")
    sae_dir, = (out / "train").glob("*/cfg.json")
    ev = json.loads((sae_dir.parent / "eval.json").read_text())["masked_lm"]
    assert -1 < ev["loss_recovered"] < 1.5 and ev["loss_recovered"] == ev["recovered_zero"]
    assert ev["ce_clean"] < ev["ce_zero"] and ev["ce_sae_error"] == pytest.approx(ev["ce_clean"], abs=1e-4)
    assert ev["n_masked"] > 50  # 3 proteins, 15 % of their residues
    record = json.loads((out / "train" / "config.json").read_text())
    assert record["evaluators"]["masked_lm"].startswith("ProteinLossRecovered(hook='layer3', proteins=3, ")
    page = (out / "report" / "index.html").read_text()
    shown = re.search(r"Loss recovered \(masked_lm\): <b>(-?[0-9.]+)</b>", page)
    assert shown and float(shown.group(1)) == pytest.approx(ev["loss_recovered"], abs=1e-3)
    assert f"loss recovered (masked_lm, SAE spliced in vs zero-ablation): {ev['loss_recovered']:.3f}" in res.stdout


def test_train_several_hooks_in_one_pass_and_analyse_train_hook(tmp_path):
    from sciinterp.pipeline import _first_sae_of

    out = tmp_path / "run"
    _run("harvest", f"out={out}", "harvest.hooks=[hidden,out]")
    _run("train", f"out={out}", "harvest.hooks=[hidden,out]", "train.hooks=[hidden,out]", "train.hook=out",
         "sae.d_sae=16", "sae.k=2", "trainer.batch_size=64")
    paths = sorted(p.parent for p in (out / "train").glob("*/cfg.json"))
    cfgs = {p.name: json.loads((p / "cfg.json").read_text()) for p in paths}
    assert {n: (c["hook_name"], c["d_in"]) for n, c in cfgs.items()} == {
        "hidden-topk-16-k2": ("hidden", 16), "out-topk-16-k2": ("out", 8)}
    assert _first_sae_of(paths, "out").name == "out-topk-16-k2"  # what analyze/intervene pick by default
    bad = _run("train", f"out={tmp_path / 'bad'}", "harvest.hooks=[hidden,out]", "train.hooks=[hidden]",
               "train.hook=out", f"train.source={out / 'harvest' / 'store.zarr'}", check=False)
    assert bad.returncode != 0 and "train.hook='out' (the one analysed) must be one of train.hooks=['hidden']" in bad.log
