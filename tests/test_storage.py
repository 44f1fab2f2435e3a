"""Stores: round trips, crash semantics of the memory twin, and LevelDB's
locked and corrupt data directories."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage import layout
from storage.store import LevelStore, MemoryStore, StoreCorrupt, StoreLocked
from tests.conftest import ROOT


@pytest.fixture(params=["memory", "level"])
def store(request, tmp_path):
    s = MemoryStore() if request.param == "memory" else LevelStore(str(tmp_path / "d"))
    yield s
    s.close()


def test_round_trip_scan_and_delete(store):
    store.write([(b"j/a", b"1"), (b"j/b", b"2"), (b"q/a", b"3")], sync=True)
    assert store.get(b"j/a") == b"1"
    assert list(store.scan(b"j/")) == [(b"j/a", b"1"), (b"j/b", b"2")]
    store.write([(b"j/a", None)], sync=False)
    assert store.get(b"j/a") is None
    assert [k for k, _ in store.scan(b"j/")] == [b"j/b"]


def test_start_makes_an_id_once_and_bumps_the_incarnation(store):
    first = layout.start(store, "n1")
    second = layout.start(store, "other-name")
    assert (first.peer_id, first.incarnation) == ("n1", 1)
    assert (second.peer_id, second.incarnation) == ("n1", 2)


def test_memory_crash_loses_exactly_the_unsynced_writes():
    s = MemoryStore()
    s.write([(b"a", b"1")], sync=True)
    s.write([(b"b", b"2"), (b"a", None)], sync=False)
    assert s.get(b"b") == b"2" and s.get(b"a") is None
    s.crash()
    assert s.get(b"a") == b"1" and s.get(b"b") is None


def test_a_synced_batch_makes_earlier_unsynced_writes_durable():
    s = MemoryStore()
    s.write([(b"a", b"1")], sync=False)
    s.write([(b"b", b"2")], sync=True)
    s.crash()
    assert s.get(b"a") == b"1" and s.get(b"b") == b"2"


@given(st.lists(st.tuples(st.lists(st.tuples(st.sampled_from([b"k1", b"k2", b"k3"]),
                                             st.one_of(st.none(), st.binary(max_size=3))), max_size=4),
                          st.booleans()), max_size=10))
def test_memory_store_crash_equals_replaying_synced_prefix(batches):
    s = MemoryStore()
    model: dict = {}
    durable: dict = {}
    for writes, sync in batches:
        s.write(writes, sync=sync)
        for k, v in writes:
            if v is None:
                model.pop(k, None)
            else:
                model[k] = v
        if sync:
            durable = dict(model)
    s.crash()
    assert dict(s.scan(b"")) == durable


def test_second_process_on_a_data_dir_gets_a_clear_error(tmp_path):
    held = LevelStore(str(tmp_path / "d"))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "executor.client.cli", "node", "--data", str(tmp_path / "d"), "--listen", "127.0.0.1:0"],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )
        assert proc.returncode == 1
        assert proc.stderr.strip().startswith("peerjobs: data directory")
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        # (Last: a second open inside one process releases LevelDB's fcntl lock.)
        with pytest.raises(StoreLocked, match="in use by another peerjobs process"):
            LevelStore(str(tmp_path / "d"))
    finally:
        held.close()


def test_corrupt_store_names_repair(tmp_path):
    path = str(tmp_path / "d")
    s = LevelStore(path)
    s.write([(b"j/x", b"1")], sync=True)
    s.close()
    db = os.path.join(path, "leveldb")
    for name in os.listdir(db):
        if name.startswith("MANIFEST") or name == "CURRENT":
            with open(os.path.join(db, name), "wb") as f:
                f.write(b"garbage garbage garbage")
    with pytest.raises(Exception) as info:
        LevelStore(path)
    assert isinstance(info.value, (StoreCorrupt,)) or "repair" in str(info.value) or "cannot open" in str(info.value)
    proc = subprocess.run([sys.executable, "-m", "executor.client.cli", "node", "--data", path, "--listen", "127.0.0.1:0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "repair" in proc.stderr


def test_corrupt_record_is_reported_not_crashed_on():
    s = MemoryStore()
    s.write([(b"j/n1-1", b"\xff\xff\xff")], sync=True)
    with pytest.raises(StoreCorrupt):
        list(layout.load(s).jobs())  # records are decoded as recovery reads them
