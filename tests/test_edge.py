"""The trio edge (executor/edge/node.py, links.py) on trio's virtual clock over
in-memory streams: no sockets, no real sleeps."""

from __future__ import annotations

import trio
import trio.testing

from executor.config import Config
from executor.edge.node import Node
from storage.store import MemoryStore


class MemoryNet:
    """Peers reachable by address over `memory_stream_pair`s."""

    def __init__(self, tmp_path, config: Config | None = None):
        self.tmp_path = tmp_path
        self.config = config or Config.local()
        self.nodes: dict[str, Node] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        self.stores: dict[str, MemoryStore] = {}

    async def connect(self, addr: str):
        node = self.nodes.get(addr)
        if node is None or addr not in self.scopes or not node.listening.is_set():
            raise OSError(f"connection to {addr} refused")
        client, server = trio.testing.memory_stream_pair()
        node.nursery.start_soon(node.serve, server)
        return client

    async def start(self, nursery, name: str, seeds=(), slots: int = 1, security=None) -> Node:
        addr = f"{name}:1"
        store = self.stores.setdefault(addr, MemoryStore())
        store.crash()  # what a restarted process sees: the durable contents
        node = Node(
            data_dir=str(self.tmp_path / name), listen=(name, 1), slots=slots, name=name,
            config=self.config, seeds=list(seeds), store=store, clock=trio.current_time,
            connect=self.connect, security=security,
        )
        node.addr = addr
        self.nodes[addr] = node

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            with trio.CancelScope() as scope:
                self.scopes[addr] = scope
                task_status.started()
                await node.run(listen=False)

        await nursery.start(run)
        await node.listening.wait()
        return node

    def kill(self, name: str) -> None:
        self.scopes.pop(f"{name}:1").cancel()

    async def client(self, name: str) -> trio.abc.Stream:
        return await self.connect(f"{name}:1")


async def ask(stream, line: str) -> str:
    await stream.send_all(line.encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        data += await stream.receive_some(4096)
    return data.decode()


def states(node: Node) -> dict[str, str]:
    return {m.id: m.state.value for m in node.core.cluster.membership.members()}


async def test_client_session_with_pipelining_and_wait(autojump_clock, tmp_path):
    net = MemoryNet(tmp_path)
    async with trio.open_nursery() as nursery:
        await net.start(nursery, "n1", slots=2)
        c = await net.client("n1")
        await c.send_all(b"5000\n100\nWAIT n1-2\nSTATUS n1-1\nNOPE\n")
        data = b""
        while data.count(b"\n") < 5:
            data += await c.receive_some(4096)
        lines = data.decode().splitlines()
        assert lines[0] == "OK n1-1" and lines[1] == "OK n1-2"
        assert lines[2].startswith("OK n1-2 done")
        assert lines[3].startswith("OK n1-1 running")  # the WAIT held it back: n1-1 sleeps 5 s
        assert lines[4].startswith("ERR unknown-command")
        t0 = trio.current_time()
        assert (await ask(c, "WAIT n1-1 10")).startswith("OK n1-1 done")
        assert 4 <= trio.current_time() - t0 <= 6
        assert (await ask(c, "QUIT")) == "OK bye\n"
        nursery.cancel_scope.cancel()


async def test_membership_over_memory_links_sees_death_and_rejoin(autojump_clock, tmp_path):
    net = MemoryNet(tmp_path)
    async with trio.open_nursery() as nursery:
        n1 = await net.start(nursery, "n1")
        n2 = await net.start(nursery, "n2", seeds=["n1:1"])
        n3 = await net.start(nursery, "n3", seeds=["n1:1"])
        await trio.sleep(2)
        for node in (n1, n2, n3):
            assert states(node) == {"n1": "alive", "n2": "alive", "n3": "alive"}
        net.kill("n2")
        killed_at = trio.current_time()
        with trio.fail_after(10):
            while not (states(n1)["n2"] == states(n3)["n2"] == "dead"):
                await trio.sleep(0.02)
        assert trio.current_time() - killed_at <= 2.0  # virtual time: exact, not noisy
        n2 = await net.start(nursery, "n2", seeds=["n1:1"])
        back_at = trio.current_time()
        with trio.fail_after(10):
            while not all(states(n)["n2"] == "alive" for n in (n1, n3)):
                await trio.sleep(0.02)
        assert trio.current_time() - back_at <= 1.0
        assert n2.core.cluster.membership.incarnation >= 2
        nursery.cancel_scope.cancel()


async def test_jobs_spread_and_come_home_over_memory_links(autojump_clock, tmp_path):
    net = MemoryNet(tmp_path)
    async with trio.open_nursery() as nursery:
        n1 = await net.start(nursery, "n1")
        for name in ("n2", "n3"):
            await net.start(nursery, name, seeds=["n1:1"])
        await trio.sleep(2)
        c = await net.client("n1")
        await c.send_all(b"".join(b"200\n" for _ in range(30)))
        data = b""
        while data.count(b"\n") < 30:
            data += await c.receive_some(4096)
        ids = [line.split()[1] for line in data.decode().splitlines()]
        t0 = trio.current_time()
        for job in ids:
            assert (await ask(c, f"WAIT {job} 60")).startswith(f"OK {job} done")
        executors = {n1.core.records[job].executor for job in ids}
        assert executors == {"n1", "n2", "n3"}
        assert trio.current_time() - t0 < 30 * 0.2  # faster than one peer alone
        nursery.cancel_scope.cancel()


class GatedStore(MemoryStore):
    """A store that blocks (synced in the peer's sync thread, as LevelDB is)
    and whose synced writes wait while `gate` is closed: a disk that stalls
    on demand. `stalled` is set once a write waits at the closed gate; a
    write raises `fail` when it is set."""

    blocks = True

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.gate = threading.Event()
        self.gate.set()
        self.stalled = threading.Event()
        self.fail: Exception | None = None

    def write(self, writes, *, sync: bool) -> None:
        if sync and not self.gate.is_set():
            self.stalled.set()
            self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        super().write(writes, sync=sync)


async def _until(predicate, timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.005)


async def test_a_reply_about_a_durable_job_does_not_wait_for_a_stalled_sync_and_one_about_an_unsynced_job_does(tmp_path):
    """Real clock, a store synced in the sync thread: while the disk stalls
    on the batch holding n1-3's record, WAIT of the finished n1-1 (answered
    by the reader) and STATUS of the running n1-2 (through the core:
    `Reply.about`), both durable long ago, are answered; but STATUS of n1-3,
    n1-3's own OK and, once n1-3 has ended (final, its end not synced), WAIT
    of n1-3 are not: they would show what a crash could still take back."""
    net = MemoryNet(tmp_path)
    store = net.stores["n1:1"] = GatedStore()
    async with trio.open_nursery() as nursery:
        await net.start(nursery, "n1", slots=2)
        c, c2, c3 = await net.client("n1"), await net.client("n1"), await net.client("n1")
        assert await ask(c, "0") == "OK n1-1\n"
        assert (await ask(c, "WAIT n1-1 5")).startswith("OK n1-1 done")
        assert await ask(c, "60000") == "OK n1-2\n"  # runs through the test; its start is synced with its OK
        store.gate.clear()
        await c2.send_all(b"100\n")  # n1-3: its batch stalls
        await _until(store.stalled.is_set)
        with trio.fail_after(2):
            assert (await ask(c, "WAIT n1-1 5")).startswith("OK n1-1 done")
            assert (await ask(c, "STATUS n1-1")).startswith("OK n1-1 done")
            assert (await ask(c, "STATUS n1-2")).startswith("OK n1-2 running")
        await c.send_all(b"STATUS n1-3\n")
        await trio.sleep(0.3)  # n1-3 (100 ms) has ended: final in the core, its end not synced
        await c3.send_all(b"WAIT n1-3 5\n")
        with trio.move_on_after(0.3):
            unexpected = await c.receive_some(4096) + await c2.receive_some(4096) + await c3.receive_some(4096)
            raise AssertionError(f"answered from an unsynced batch: {unexpected!r}")
        store.gate.set()
        with trio.fail_after(5):
            assert await c2.receive_some(4096) == b"OK n1-3\n"
            assert (await c.receive_some(4096)).startswith(b"OK n1-3 ")
            assert (await c3.receive_some(4096)).startswith(b"OK n1-3 done")
        nursery.cancel_scope.cancel()


async def test_waits_for_finished_jobs_are_answered_by_the_reader_in_request_order(autojump_clock, tmp_path):
    """WAIT and STATUS of a job that is final and durable are answered by the
    client's reader from the core's query, never reaching the inbox; a reply
    still leaves after every earlier one of its client (here a SUBMIT's OK,
    which waits for its sync)."""
    net = MemoryNet(tmp_path)
    async with trio.open_nursery() as nursery:
        node = await net.start(nursery, "n1")
        c = await net.client("n1")
        assert await ask(c, "0") == "OK n1-1\n"
        assert (await ask(c, "WAIT n1-1 5")).startswith("OK n1-1 done")
        seen = []
        handle = node.core.handle

        def recording(event, now, wall=None):
            seen.append(getattr(event, "command", event))
            return handle(event, now, wall)

        node.core.handle = recording
        await c.send_all(b"SUBMIT true\n" + b"WAIT n1-1 5\nSTATUS n1-1\n" * 20)
        data = b""
        with trio.fail_after(10):
            while data.count(b"\n") < 41:
                data += await c.receive_some(65536)
        lines = data.decode().splitlines()
        assert lines[0] == "OK n1-2" and all(line.startswith("OK n1-1 done") for line in lines[1:])
        assert not [cmd for cmd in seen if type(cmd).__name__ in ("Wait", "Status")]
        nursery.cancel_scope.cancel()


async def test_pipelined_client_requests_take_at_most_their_share_of_the_inbox(autojump_clock, tmp_path):
    """Peer messages (a probe's Ack) share the core's inbox with client
    requests: however many requests clients pipeline, at most
    `inbox_client_requests_max` wait there unhandled, so that an Ack is never
    queued behind thousands of them. Nothing is lost: every request is
    answered, in order, once the core gets to them."""
    import dataclasses

    # No ticks: nothing but the client's requests reaches the inbox.
    net = MemoryNet(tmp_path, dataclasses.replace(Config.local(), inbox_client_requests_max=3, tick_interval_s=3600))
    gate = trio.Event()

    class HeldNode(Node):
        async def _core_loop(self) -> None:
            await gate.wait()
            await super()._core_loop()

    import tests.test_edge as here

    original = Node

    here.Node = HeldNode  # MemoryNet.start builds this module's Node
    try:
        async with trio.open_nursery() as nursery:
            node = await net.start(nursery, "n1")
            c = await net.client("n1")
            await c.send_all(b"".join(b"%d\n" % i for i in range(20)))
            await trio.sleep(1)
            assert node.inbox.statistics().current_buffer_used == 3
            gate.set()
            data = b""
            with trio.fail_after(10):
                while data.count(b"\n") < 20:
                    data += await c.receive_some(4096)
            assert data.decode().splitlines() == [f"OK n1-{i}" for i in range(1, 21)]
            nursery.cancel_scope.cancel()
    finally:
        here.Node = original


async def test_a_jobs_command_runs_only_once_its_process_record_is_durable(tmp_path):
    """A job's wrapper is spawned at once, but its command runs only after
    its process record (r/<id>: how the next life finds its processes after a
    kill -9) is synced, with the committer's next batch; while the disk
    stalls, nothing of the command runs."""
    net = MemoryNet(tmp_path)
    store = net.stores["n1:1"] = GatedStore()
    async with trio.open_nursery() as nursery:
        node = await net.start(nursery, "n1", slots=3)
        c = await net.client("n1")
        markers = [tmp_path / f"ran-{i}" for i in range(3)]
        assert await ask(c, f"SUBMIT touch {markers[0]}") == "OK n1-1\n"
        await _until(markers[0].exists)
        store.gate.clear()
        await c.send_all("".join(f"SUBMIT touch {m}\n" for m in markers[1:]).encode())
        await _until(lambda: len(node.job_scopes) == 2)  # both wrappers spawned, waiting
        await trio.sleep(0.3)
        assert not any(m.exists() for m in markers[1:]), "a command ran before its process record was synced"
        assert not any(key.startswith(b"r/") for key in store.durable)
        store.gate.set()
        await _until(lambda: all(m.exists() for m in markers[1:]))
        nursery.cancel_scope.cancel()


async def test_a_finished_jobs_process_record_goes_with_its_exit_not_in_a_sync_of_its_own(tmp_path):
    """Per `sh` job one slot costs three synced batches: the SUBMIT, the
    process record before the command runs, and the exit, which carries the
    record's deletion (a hint nobody waits for: `_write_later`)."""
    net = MemoryNet(tmp_path)
    async with trio.open_nursery() as nursery:
        await net.start(nursery, "n1")
        store = net.stores["n1:1"]
        c = await net.client("n1")
        node = net.nodes["n1:1"]
        for n in range(1, 4):
            before, counted = store.synced_batches, node.statistics()["synced_batches"]
            assert await ask(c, "SUBMIT true") == f"OK n1-{n}\n"
            assert (await ask(c, f"WAIT n1-{n} 10")).startswith(f"OK n1-{n} done")
            assert store.synced_batches - before == 3
            assert node.statistics()["synced_batches"] - counted == 3  # what STATS and /metrics report
            assert not [key for key in store.durable if key.startswith(b"r/")]
        nursery.cancel_scope.cancel()
