"""Crash safety: kill -9 a harvesting process at random moments, then resume.

The child process harvests a slowed-down FakeAdapter (sleeps between batches and
before every chunk write, so kills land mid-write as well as between
flushes).  After every kill the store must open, hold a prefix of the items of
an uninterrupted run with identical values and coordinates, and the final
resumed run must equal the uninterrupted run row for row.
"""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sciinterp.harvest import harvest_to_store
from sciinterp.store import is_store, open_store, stored_items
from sciinterp.testing import FakeAdapter

LENGTHS = [3 + (7 * i) % 13 for i in range(48)]
HOOKS = ["hidden", "out"]
CHILD = r"""
import random, sys, time
import sciinterp.store as st
from sciinterp.harvest import harvest_to_store
from sciinterp.testing import FakeAdapter

path, seed, rank, world = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(seed)

class Slow(FakeAdapter):
    def harvest(self, data, hooks, *, skip=()):
        for b in super().harvest(data, hooks, skip=skip):
            time.sleep(rnd.uniform(0.03, 0.1))  # 16 batches: ~1 s, longer than most kill delays
            yield b

import sciinterp.store_chunks as sc
_write_chunk = sc.ChunkedArray._write_chunk
def slow_write_chunk(self, index, buf, filled):  # widen the window between chunk writes and the commit
    time.sleep(rnd.uniform(0, 0.01))
    _write_chunk(self, index, buf, filled)
sc.ChunkedArray._write_chunk = slow_write_chunk
print("start", flush=True)
harvest_to_store(Slow(items_per_batch=3), LENGTHS, ["hidden", "out"], path, chunk_rows=20, flush_rows=20,
                 part=(rank, world) if world > 1 else None, progress=False)
print("done", flush=True)
""".replace("LENGTHS", repr(LENGTHS))


def _spawn(tmp_path, path, seed, rank=0, world=1):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "error::UserWarning"}
    cmd = [sys.executable, str(script), str(path), str(seed), str(rank), str(world)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "start", proc.stderr.read()
    return proc


def _table(ds):
    """Rows keyed by (seq, position) -> (hidden, out) for order-free comparison."""
    keys = list(zip(ds.seq.values.astype(str), ds.position.values.tolist()))
    return keys, np.concatenate([ds.hidden.values, ds.out.values], axis=1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    harvest_to_store(FakeAdapter(items_per_batch=3), LENGTHS, HOOKS, path, chunk_rows=20, progress=False)
    return open_store(path).load()


def test_kill9_at_random_moments_then_resume_gives_every_token_once(tmp_path, reference):
    path = tmp_path / "s.zarr"
    rnd = random.Random(1234)
    n_ref = reference.sizes["token"]
    ref_items = [f"seq{i}" for i in range(len(LENGTHS))]
    seen_sizes = []
    for attempt in range(4):
        proc = _spawn(tmp_path, path, seed=attempt)
        time.sleep(rnd.uniform(0.05, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not is_store(path):  # killed before the store existed
            seen_sizes.append(0)
            continue
        ds = open_store(path)  # readable after any kill
        n = ds.sizes["token"]
        seen_sizes.append(n)
        items = stored_items(path)
        assert items == ref_items[: len(items)]  # a prefix of the items, in order
        assert n == sum(LENGTHS[: len(items)])  # whole items only
        np.testing.assert_array_equal(ds.hidden.values, reference.hidden.values[:n])
        np.testing.assert_array_equal(ds.out.values, reference.out.values[:n])
        np.testing.assert_array_equal(ds.seq.values, reference.seq.values[:n])
        np.testing.assert_array_equal(ds.position.values, reference.position.values[:n])
        assert not ds.attrs["complete"] or n == n_ref
    assert any(0 < s < n_ref for s in seen_sizes), f"no kill landed mid-harvest: {seen_sizes}"
    proc = _spawn(tmp_path, path, seed=99)  # resume to the end
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.strip() == "done", err
    ds = open_store(path)
    assert ds.attrs["complete"] and ds.sizes["token"] == n_ref
    keys, values = _table(ds)
    assert len(set(keys)) == n_ref  # nothing duplicated
    for name in ("hidden", "out", "seq", "position"):
        np.testing.assert_array_equal(ds[name].values, reference[name].values)


def test_two_processes_write_parts_that_read_as_one_store(tmp_path, reference):
    path = tmp_path / "parts"
    procs = [_spawn(tmp_path, path, seed=rank, rank=rank, world=2) for rank in range(2)]
    time.sleep(0.3)
    procs[1].send_signal(signal.SIGKILL)  # rank 1 dies once and is restarted
    procs[1].wait()
    procs[1] = _spawn(tmp_path, path, seed=7, rank=1, world=2)
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    ds = open_store(path)
    assert ds.attrs["complete"] and ds.sizes["token"] == reference.sizes["token"]
    keys, values = _table(ds)
    ref_keys, ref_values = _table(reference)
    assert len(set(keys)) == len(keys) and set(keys) == set(ref_keys)  # every token exactly once
    order = {k: i for i, k in enumerate(ref_keys)}
    np.testing.assert_array_equal(values, ref_values[[order[k] for k in keys]])
    sizes = [open_store(p).sizes["token"] for p in sorted(path.glob("part-*"))]
    assert all(s > 0 for s in sizes) and sum(sizes) == len(keys)
