"""Races and gray failures at the edge and in the core, each test named for
what it keeps (issue "hostile input, gray failures and races").

In-process peers on trio's clock over memory streams (tests/test_edge.py's
MemoryNet) or the sans-IO harness (tests/conftest.py); no real sleeps except
where a real clock is what the case is about."""

from __future__ import annotations

import dataclasses

import trio

from executor.config import Config
from executor.core import KillJob, StartJob, Tick
from executor.core.protocol import JobSpec, ListJobs, Status, Submit, Wait
from tests.conftest import CoreHarness, replies
from tests.test_edge import GatedStore, MemoryNet, ask, states


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


async def _read_lines(stream, count: int) -> list[str]:
    data = b""
    with trio.fail_after(30):
        while data.count(b"\n") < count:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
    return data.decode().splitlines()


async def test_a_last_line_without_newline_before_eof_is_answered(autojump_clock, tmp_path):
    net = MemoryNet(tmp_path)
    async with trio.open_nursery() as nursery:
        await net.start(nursery, "n1")
        c = await net.client("n1")
        await c.send_all(b"100\nWAIT n1-1\nSTATUS n1-1")  # `printf ... | nc -q1`: no final newline
        await c.send_eof()
        lines = await _read_lines(c, 3)
        assert lines[0] == "OK n1-1"
        assert lines[1].startswith("OK n1-1 done") and lines[2].startswith("OK n1-1 done")
        nursery.cancel_scope.cancel()


async def test_a_kill_carried_out_before_its_job_task_ran_still_kills_it(tmp_path):
    # A CANCEL handled in the same batch as the job's start: the edge carries
    # out StartJob and KillJob back to back, before the job's task has run.
    # Real clock: without the fix the 60 s job runs to its end.
    net = MemoryNet(tmp_path)
    async with trio.open_nursery() as nursery:
        node = await net.start(nursery, "n1")
        start = StartJob("n1-77", 1, JobSpec("sleep", sleep_ms=60_000), 3600.0)
        node._execute(start)
        node._execute(KillJob("n1-77", 1))
        with trio.fail_after(5):
            while "n1-77" in node.job_scopes:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_a_cancel_pipelined_right_behind_its_submit_wins(autojump_clock, tmp_path):
    net = MemoryNet(tmp_path)
    async with trio.open_nursery() as nursery:
        await net.start(nursery, "n1")
        c = await net.client("n1")
        await c.send_all(b"SUBMIT sleep 30\nCANCEL n1-1\n")
        assert await _read_lines(c, 2) == ["OK n1-1", "OK n1-1 cancelled"]
        t0 = trio.current_time()
        status = await ask(c, "WAIT n1-1 60")
        assert status.startswith("OK n1-1 cancelled")
        assert trio.current_time() - t0 < 5
        nursery.cancel_scope.cancel()


async def test_clients_that_hang_up_during_a_wait_free_their_slot_at_once(autojump_clock, tmp_path):
    net = MemoryNet(tmp_path, Config.local(client_connections_max=2))
    async with trio.open_nursery() as nursery:
        node = await net.start(nursery, "n1")
        c = await net.client("n1")
        assert (await ask(c, "600000")) == "OK n1-1\n"  # ten minutes of sleep
        await c.aclose()
        for _ in range(4):  # twice the budget: each hangs up while its WAIT is pending
            w = await net.client("n1")
            await w.send_all(b"WAIT n1-1 500\n")
            await trio.sleep(0.1)
            await w.aclose()
        with trio.fail_after(1):
            while node.clients:
                await trio.sleep(0.01)
        fresh = await net.client("n1")
        assert (await ask(fresh, "STATUS n1-1")).startswith("OK n1-1 running")
        # A hang-up and a half-close look alike (EOF) until the reply is
        # written: the WAITs stay, bounded by client_draining_max, not slots.
        assert node.draining == 4
        nursery.cancel_scope.cancel()


async def test_a_half_closed_client_still_gets_its_wait_answered(autojump_clock, tmp_path):
    net = MemoryNet(tmp_path, Config.local(client_connections_max=1))
    async with trio.open_nursery() as nursery:
        node = await net.start(nursery, "n1")
        c = await net.client("n1")
        await c.send_all(b"2000\nWAIT n1-1 30\n")
        await c.send_eof()  # `printf ... | nc -q1`: it asks nothing more, and reads on
        await trio.sleep(0.5)
        assert node.clients == 0  # the slot is free while the WAIT is pending
        other = await net.client("n1")
        assert (await ask(other, "STATUS n1-1")).startswith("OK n1-1 running")
        await other.aclose()
        lines = await _read_lines(c, 2)
        assert lines[0] == "OK n1-1" and lines[1].startswith("OK n1-1 done")
        nursery.cancel_scope.cancel()


async def test_peer_links_do_not_count_against_the_client_budget(autojump_clock, tmp_path):
    net = MemoryNet(tmp_path, Config.local(client_connections_max=1))
    async with trio.open_nursery() as nursery:
        names = [f"n{i}" for i in range(1, 7)]
        nodes = [await net.start(nursery, names[0])]
        for name in names[1:]:
            nodes.append(await net.start(nursery, name, seeds=["n1:1"]))
        await trio.sleep(3)
        for node in nodes:
            assert states(node) == {name: "alive" for name in names}
        c = await net.client("n1")
        assert (await ask(c, "PEERS")).startswith("OK 6 peers")
        nursery.cancel_scope.cancel()


def test_list_keeps_its_newest_first_order_after_a_restart():
    h = CoreHarness(slots=1)
    for _ in range(12):
        h.step(h.request(Submit(JobSpec("sleep", sleep_ms=1))))
    (before,) = replies(h.step(h.request(ListJobs(3))))
    h.crash()
    (after,) = replies(h.step(h.request(ListJobs(3))))
    ids = [line.split()[0] for line in after.decode().splitlines()[1:]]
    assert ids == ["n1-12", "n1-11", "n1-10"]
    assert [line.split()[0] for line in before.decode().splitlines()[1:]] == ids


def test_wall_clock_steps_neither_fire_nor_freeze_a_wait_deadline():
    h = CoreHarness(slots=1)
    h.step(h.request(Submit(JobSpec("sleep", sleep_ms=60_000))))
    h.core.handle(h.request(Wait("n1-1", 30.0)), h.now, wall=h.now)
    h.core.take()
    # The wall clock jumps 600 s ahead; the monotonic clock moves 0.1 s.
    h.core.handle(Tick(), h.now + 0.1, wall=h.now + 600)
    assert replies(h.core.take()[1]) == []
    # ... then 600 s back: the deadline still fires 30 s after the WAIT.
    h.core.handle(Tick(), h.now + 30.0, wall=h.now - 570)
    (line,) = replies(h.core.take()[1])
    assert line.startswith(b"ERR timeout")


def test_records_show_the_wall_clock_and_runtimes_the_monotonic_one():
    h = CoreHarness(slots=1, config=dataclasses.replace(Config.simulation()))
    h.core.handle(h.request(Submit(JobSpec("sh", command="true"))), 10.0, wall=1_700_000_000.0)
    h.core.take()
    from executor.core import JobExited

    # 2 s of monotonic time pass while the wall clock steps back an hour.
    h.core.handle(JobExited("n1-1", 1, 0, None), 12.0, wall=1_700_000_000.0 - 3600 + 2)
    h.core.take()
    h.core.handle(h.request(Status("n1-1")), 12.0, wall=1_699_996_402.0)
    (line,) = replies(h.core.take()[1])
    assert b"submitted=1700000000.000" in line and b"runtime_ms=2000" in line


async def test_a_full_disk_refuses_new_work_serves_the_rest_and_recovers_without_restart(autojump_clock, tmp_path):
    net = MemoryNet(tmp_path)
    async with trio.open_nursery() as nursery:
        node = await net.start(nursery, "n1")
        free = [10**12]
        node.free_bytes = lambda: free[0]
        c = await net.client("n1")
        assert (await ask(c, "3000")) == "OK n1-1\n"  # runs for 3 s
        free[0] = 0  # the disk fills up; the next synced batch notices
        # (An in-peer sleep, not a process: on the virtual clock a process's
        # real run time races the WAIT's virtual timeout.)
        assert (await ask(c, "50")) == "OK n1-2\n"  # stored before the check: acknowledged
        refused = await ask(c, "SUBMIT true")
        assert refused.startswith("ERR disk-full")
        for line in ("STATUS n1-1", "LIST 5", "PEERS"):
            assert (await ask(c, line)).startswith("OK"), line
        # What was acknowledged finishes; its result is stored in the reserve.
        assert (await ask(c, "WAIT n1-1 10")).startswith("OK n1-1 done")
        assert (await ask(c, "WAIT n1-2 10")).startswith("OK n1-2 done")
        assert node.core.next_seq == 3  # the refused SUBMIT took no id and stored nothing
        free[0] = 10**12  # space comes back: SUBMIT works again, no restart
        await trio.sleep(node.config.disk_check_interval_s * 2)
        assert (await ask(c, "SUBMIT true")) == "OK n1-3\n"
        nursery.cancel_scope.cancel()


async def test_a_failed_sync_stops_the_peer_and_acknowledges_nothing_of_it(autojump_clock, tmp_path):
    from executor.edge.node import StorageFailed
    from storage.store import StoreIOError

    net = MemoryNet(tmp_path)
    with_failure = []
    try:
        async with trio.open_nursery() as nursery:
            node = await net.start(nursery, "n1")
            c = await net.client("n1")
            assert (await ask(c, "SUBMIT true")) == "OK n1-1\n"
            store = net.stores["n1:1"]

            def failing_write(writes, *, sync):
                raise StoreIOError("writing leveldb: IO error: 000003.log: Input/output error")

            store.write = failing_write
            await c.send_all(b"100\n")
            with trio.fail_after(5):
                data = await c.receive_some(4096)
            with_failure.append(data)
    except* StorageFailed as group:
        failures = _leaves(group)
        assert failures and all("a synced write failed" in str(f) and "restart" in str(f) for f in failures)
    else:
        raise AssertionError("the peer went on after a failed sync")
    assert with_failure in ([], [b""])  # nothing was acknowledged after the failure


async def test_a_failed_sync_in_the_sync_thread_stops_the_peer_and_acknowledges_nothing_of_it(tmp_path):
    """The same with a store synced in the peer's sync thread (as LevelDB is),
    on the real clock: the failure crosses back to the trio thread and stops
    the peer; the SUBMIT of the failed batch is never acknowledged."""
    from executor.edge.node import StorageFailed
    from storage.store import StoreIOError

    net = MemoryNet(tmp_path)
    store = net.stores["n1:1"] = GatedStore()
    seen = []
    try:
        async with trio.open_nursery() as nursery:
            await net.start(nursery, "n1")
            c = await net.client("n1")
            assert await ask(c, "0") == "OK n1-1\n"
            store.fail = StoreIOError("writing leveldb: IO error: 000003.log: Input/output error")
            await c.send_all(b"0\n")
            with trio.fail_after(5):
                seen.append(await c.receive_some(4096))
    except* StorageFailed as group:
        failures = _leaves(group)
        assert failures and all("a synced write failed" in str(f) for f in failures)
    else:
        raise AssertionError("the peer went on after a failed sync")
    assert seen in ([], [b""])  # n1-2 was never acknowledged
