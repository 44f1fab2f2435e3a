"""Disk faults on a real peer (issue 12, "what peerjobs does under each
fault"): the peer's data dir lives on faultfs (sim/faultfs/), which runs out
of space, answers EIO or loses power on command.

Like tests/test_faultfs.py: these need pyfuse3 and /dev/fuse; outside CI they
skip with the reason, with CI set a missing tool fails them."""

from __future__ import annotations

import os
import signal
import time

import pytest

from executor.client import Client, PeerError
from sim.faultfs import FaultFS, unavailable_reason
from tests.conftest import PeerProcess

# Bounds of the loops below: each polls at most this many times.
POLLS_MAX = 100
POLL_S = 0.05
# The peers here take no new work below this many free bytes (the default,
# 64 MiB, would make every test disk that large).
DISK_FREE_MIN_BYTES = 8 << 20


@pytest.fixture
def fs(tmp_path):
    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"faultfs cannot run in CI: {reason}")
        pytest.skip(reason)
    mnt = tmp_path / "mnt"
    with FaultFS(str(tmp_path / "backing"), str(mnt), names="dir", log=str(tmp_path / "faultfs.log")) as f:
        f.mnt = mnt
        yield f
    assert not os.path.ismount(mnt)


@pytest.fixture
def peer(fs, tmp_path, monkeypatch):
    """One peer (`d1`, one slot) whose data dir is on the faultfs; stopped
    (SIGKILL if need be) before the filesystem is unmounted."""
    monkeypatch.setenv("PEERJOBS_DISK_FREE_BYTES_MIN", str(DISK_FREE_MIN_BYTES))
    p = PeerProcess(fs.mnt, name="d1", slots=1)
    p.log_path = str(tmp_path / "d1.log")  # beside the mount: the log is not under test
    try:
        yield p
    finally:
        if p.proc is not None and p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(timeout=10)
        p.stop()


def _poll(fn, what: str):
    """Call `fn` until it returns something true (bounded); that value."""
    for _ in range(POLLS_MAX):
        value = fn()
        if value:
            return value
        time.sleep(POLL_S)
    raise AssertionError(f"not within {POLLS_MAX} polls: {what}")


def _submit(c: Client, command: str) -> str | PeerError:
    try:
        return c.submit(command)
    except PeerError as e:
        return e


def _accepted(got: str | PeerError) -> str | None:
    return got if isinstance(got, str) else None


def test_a_full_disk_refuses_submit_serves_the_rest_and_recovers_without_restart(fs, peer):
    peer.start()
    pid = peer.proc.pid
    with Client(peer.addr) as c:
        running = c.submit("sleep 1; echo finished")
        used = fs.stats()["used_bytes"]
        fs.set_budget_bytes(used + (1 << 20))  # 1 MiB free: below the peer's 8 MiB minimum
        # The peer reads its free space after each synced batch: the first
        # submits (or the running job's start) may still be taken and seen through.
        acked: list[str] = []

        def refused_now() -> PeerError | None:
            got = _submit(c, "true")
            if isinstance(got, str):
                acked.append(got)  # accepted before the peer saw the disk full: must still run
                return None
            return got

        err = _poll(refused_now, "SUBMIT refused while the disk is full")
        assert err.code == "disk-full", err
        # Everything else is served, and the job that was running finishes with its result.
        assert c.status(running).state in ("queued", "running", "done")
        assert running in [s.job_id for s in c.list(50)]
        assert any(line.endswith("self") for line in c.peers())
        assert c.wait(running, timeout_s=20).state == "done"
        assert c.result(running).stdout == b"finished\n"
        assert isinstance(_submit(c, "true"), PeerError)  # still full: still refused
        fs.set_budget_bytes(None)
        again = _poll(lambda: _accepted(_submit(c, "echo again")), "SUBMIT accepted again once space came back")
        assert c.wait(again, timeout_s=20).state == "done"
        assert c.result(again).stdout == b"again\n"
        for job in acked:
            assert c.wait(job, timeout_s=20).state == "done"
    assert peer.proc.poll() is None and peer.proc.pid == pid  # the same process throughout
    assert "stopping" not in peer.log()


def test_an_io_error_on_sync_stops_the_peer_and_the_restart_recovers_what_was_acknowledged(fs, peer):
    peer.start()
    with Client(peer.addr) as c:
        acked = [c.submit(f"echo {i}") for i in range(5)]
        for job in acked:
            assert c.wait(job, timeout_s=20).state == "done"  # nothing left to write on its own
        fs.fail("fsync", "data-d1/leveldb/*.log")
        with pytest.raises((PeerError, OSError, EOFError)):
            c.submit("echo never")  # not acknowledged: an ERR, or the connection ends with the peer
    code = peer.proc.wait(timeout=10)
    assert code != 0
    stops = [line for line in peer.log().splitlines() if "stopping: a synced write failed" in line]
    assert len(stops) == 1, peer.log()[-3000:]
    assert "restart" in stops[0]
    fs.clear()
    peer.start()
    with Client(peer.addr) as c:
        for i, job in enumerate(acked):
            assert c.wait(job, timeout_s=20).state == "done"
            assert c.result(job).stdout == f"{i}\n".encode()
        assert c.status(c.submit("true")).state in ("queued", "running", "done")  # takes work again


def test_a_power_cut_loses_nothing_acknowledged(fs, peer):
    """kill -9 and a power cut of its disk at once, while jobs are queued,
    running and finishing: after the restart every acknowledged job is known
    (and finishes); nothing acknowledged depended on an unsynced write."""
    peer.start()
    with Client(peer.addr) as c:
        acked = [j for j in c.submit_many([f"SUBMIT sleep 0.05; echo {i}" for i in range(40)]) if isinstance(j, str)]
        assert len(acked) == 40
        time.sleep(0.5)  # some done, one running, the rest queued
    peer.kill(signal.SIGKILL)
    cut = fs.power_cut()
    peer.start()
    with Client(peer.addr) as c:
        for i, job in enumerate(acked):
            assert c.wait(job, timeout_s=30).state == "done", job
            assert c.result(job).stdout == f"{i}\n".encode()
    assert cut["epoch"] >= 1


@pytest.mark.xfail(strict=True, raises=(ConnectionError, OSError, AssertionError), reason=(
    "LevelDB (plyvel 1.5, LevelDB 1.22) mmaps its table files (up to 1000 on 64-bit) and reads them through "
    "the mapping: an EIO on a table page kills the peer with SIGBUS (exit -7, no log line) instead of answering "
    "ERR storage. Reported to the lead; remove this mark when the peer serves on. (A run whose read never reaches "
    "the fault, served from table pages mapped during the recovery, fails its own assertion: it proves nothing.)"))
def test_an_io_error_on_read_answers_err_storage_and_the_peer_serves_on(fs, peer):
    """A finished job's result lives in a LevelDB table after a restart (the
    recovery turns the log into a table); reads of the tables then fail with
    EIO, and the kernel's cached pages are dropped so that the read reaches
    faultfs: RESULT answers `ERR storage`, and the peer still answers STATUS."""
    peer.start()
    with Client(peer.addr) as c:
        jobs = [c.submit(f"echo {i}") for i in range(20)]
        for job in jobs:
            assert c.wait(job, timeout_s=20).state == "done"
    peer.stop()
    peer.start()  # the recovery writes the log into a table file (.ldb)
    fs.fail("read", "data-d1/leveldb/*.ldb")
    fs.drop_caches()
    with Client(peer.addr) as c:
        try:
            c.result(jobs[-1])
            refused = None
        except PeerError as exc:
            refused = exc
        # Pages LevelDB mapped during the recovery stay resident through the
        # cache drop, and a read from them never reaches the fault: then this
        # run proved nothing, and says so (an expected failure as the SIGBUS).
        assert fs.stats()["eio"] >= 1, "the read was served from table pages mapped before the fault"
        assert refused is not None and refused.code == "storage", refused
        assert c.status(jobs[0]).state == "done"  # served from memory: the peer serves on
    assert peer.proc.poll() is None


def test_enospc_past_the_reserve_stops_the_peer_and_the_restart_recovers_what_was_acknowledged(fs, peer):
    """A disk that fills faster than the reserve (no byte left at all): the
    next synced write fails with ENOSPC, the peer fail-stops (it does not go
    on writing to a LevelDB log whose state is unknown), and the restart on
    the freed disk has the acknowledged job, which then finishes."""
    peer.start()
    with Client(peer.addr) as c:
        job = c.submit("sleep 0.3; echo kept")
        fs.set_budget_bytes(fs.stats()["used_bytes"])  # not one byte more
    code = peer.proc.wait(timeout=20)  # the job's start or its result is the first write to fail
    assert code != 0
    stops = [line for line in peer.log().splitlines() if "stopping: a synced write failed" in line]
    assert len(stops) == 1, peer.log()[-3000:]
    assert fs.stats()["enospc"] >= 1
    fs.set_budget_bytes(None)
    peer.start()
    with Client(peer.addr) as c:
        assert c.wait(job, timeout_s=20).state == "done"
        assert c.result(job).stdout == b"kept\n"
