"""Three sans-IO peers in one process: handoff, results and recovery under crashes.

`World` is a small edge for three `PeerCore`s, built and driven exactly as
`executor/edge/node.py` builds and drives one (see `World._step`):

* after handling an event the edge takes the core's batch: `writes, actions =
  core.take()`; `StartJob`/`KillJob` take effect at once (the job is recorded
  as running here; its `JobExited` is delivered later, by a rule);
* then EITHER the writes are synced (`store.write(writes, sync=True)`) and the
  replies / sends are released, OR the peer crashes — before the sync
  (`MemoryStore.crash()` loses the batch) or right after it (the batch is
  durable but nothing was sent: "synced, died before acking").

A crash also loses the peer's running jobs and every message in flight to or
from it; the peer stays down until a restart rebuilds it from its store (as a
real restart: `layout.start` bumps the incarnation, `handle_join` with the
other peers' addresses).

Links are FIFO queues per (sender, receiver), as TCP connections are.
Membership gossip travels on the same links as job traffic, so the peers must
find each other first (`World.warm_up`). A message delivered to a peer that is
down is dropped and its sender hears `PeerUnreachable` (a refused connect).

Time is virtual. A tick rule advances it in sub-steps of at most 50 ms (the
real edge ticks every 20 ms); a longer jump would look like a pause of every
peer to membership's pause detector. Between sub-steps the queued messages may
or may not be delivered, so probes can fail, peers get suspected and declared
dead, handoffs time out and homes re-issue jobs.

The invariants (checked after every rule, see `World.check`) and the liveness
check of the teardown are the ones docs/cluster.md promises.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from executor.core.cluster import Cluster
from executor.config import Config
from executor.core import (
    ClientRequest,
    JobExited,
    KillJob,
    Log,
    PeerCore,
    PeerMessage,
    PeerUnreachable,
    Reply,
    ReplyResult,
    read_result,
    Send,
    StartJob,
    Tick,
    carry_out,
)
from executor.core.jobs import JobRecord
from executor.core.messages import Audit, Handoff, HandoffAck, JobResult
from executor.core.protocol import JobSpec, Submit
from gossip.membership import GOSSIP_MESSAGES
from storage import layout
from storage.store import MemoryStore

NAMES = ("p1", "p2", "p3")
ADDR = {name: f"sim:{i + 1}" for i, name in enumerate(NAMES)}
NAME_AT = {addr: name for name, addr in ADDR.items()}
SLOTS = 1
CONFIG = Config.simulation()
SUBSTEP_S = 0.05

SYNC = "sync"  # the batch is synced, then its replies and sends are released
CRASH_AFTER_SYNC = "crash-after-sync"  # durable, but nothing was sent
CRASH_BEFORE_SYNC = "crash-before-sync"  # the batch is lost


@dataclass
class Run:
    attempt: int
    tag: bytes  # stdout of this run: tells which run a kept result came from
    killed: bool = False


@dataclass
class Peer:
    name: str
    addr: str
    store: MemoryStore = field(default_factory=MemoryStore)
    core: PeerCore | None = None
    lives: int = 0
    running: dict[str, Run] = field(default_factory=dict)

    @property
    def up(self) -> bool:
        return self.core is not None


def durable(peer: Peer, prefix: bytes, job_id: str):
    raw = peer.store._durable.get(layout.key(prefix, job_id))
    return None if raw is None else layout.decode(raw, prefix.decode() + job_id)


def home_of(job_id: str) -> str:
    return job_id.rsplit("-", 1)[0]


class World:
    def __init__(self) -> None:
        self.now = 1000.0
        self.peers = {name: Peer(name, ADDR[name]) for name in NAMES}
        self.links: dict[tuple[str, str], deque] = {(a, b): deque() for a in NAMES for b in NAMES if a != b}
        self.tokens = 0
        self.gen = 0
        self.acked: set[str] = set()
        self.final: dict[str, tuple[bytes, bytes | None]] = {}  # home's first durable final j/ and o/
        self.runs: dict[str, str] = {}  # stdout tag -> "peer attempt" of every run that exited by itself
        self.starts: Counter[str] = Counter()  # job id -> StartJob count, over all peers
        self.sent: list[tuple[float, str, str, object]] = []  # (time, sender, receiver, job message)
        self.log: list[str] = []
        for peer in self.peers.values():
            self.restart(peer.name)

    # ------------------------------------------------------------------
    # The edge (executor/edge/node.py's core loop and committer, one batch per step)

    def _step(self, name: str, events, mode: str = SYNC) -> list[bytes]:
        peer = self.peers[name]
        core = peer.core
        assert core is not None, f"{name} is down"
        for event in events:
            core.handle(event, self.now)
        replies: list[bytes] = []

        def at_once(action) -> None:
            kind = type(action)
            if kind is Send:
                self._send(name, action)  # membership's: it waits for no sync
            elif kind is StartJob:
                start(action)
            elif kind is KillJob:
                run = peer.running.get(action.job_id)
                if run is not None and run.attempt == action.attempt:
                    run.killed = True
            elif kind is Log:
                self.log.append(f"{self.now:.3f} {name}: {action.text}")

        def start(action) -> None:
            assert action.job_id not in peer.running, (
                f"{name} started {action.job_id} attempt {action.attempt} while attempt "
                f"{peer.running[action.job_id].attempt} still runs there")
            self.gen += 1
            tag = f"{action.job_id}@{name}#{action.attempt}/{self.gen}".encode()
            peer.running[action.job_id] = Run(action.attempt, tag)
            self.starts[action.job_id] += 1
            assert len(peer.running) <= SLOTS, f"{name} runs {sorted(peer.running)} on {SLOTS} slot(s)"

        def durably(writes, later) -> None:
            if mode == CRASH_BEFORE_SYNC:
                self.crash(name)
                return
            peer.store.write(writes, sync=True)
            if mode == CRASH_AFTER_SYNC:
                self.crash(name)
                return
            for action in later:
                kind = type(action)
                if kind is Send:
                    self._send(name, action)
                elif kind is Reply:
                    replies.append(action.data)
                elif kind is ReplyResult:
                    replies.append(read_result(peer.store, action.job_id))
                elif kind is StartJob:
                    start(action)  # a job this batch released: after its sync

        carry_out(*core.take(), at_once=at_once, durably=durably)
        return replies

    def _send(self, sender: str, send: Send) -> None:
        receiver = NAME_AT.get(send.addr)
        if receiver is None or receiver == sender:
            return
        if not isinstance(send.message, GOSSIP_MESSAGES):
            self.sent.append((self.now, sender, receiver, send.message))
        self.links[(sender, receiver)].append(send.message)

    # ------------------------------------------------------------------
    # What the rules do

    def submit(self, name: str, count: int = 1, mode: str = SYNC) -> list[str]:
        events = []
        for _ in range(count):
            self.tokens += 1
            events.append(ClientRequest((0, self.tokens), Submit(JobSpec("sleep", sleep_ms=0))))
        ids = []
        for data in self._step(name, events, mode):
            parts = data.decode().split()
            if parts[0] == "OK" and len(parts) == 2:
                job_id = parts[1]
                assert home_of(job_id) == name
                assert job_id not in self.acked, f"{job_id} acknowledged twice"
                # Acknowledged only once the record is durable.
                assert durable(self.peers[name], layout.JOB, job_id) is not None
                self.acked.add(job_id)
                ids.append(job_id)
        return ids

    def deliver(self, link: tuple[str, str], mode: str = SYNC) -> None:
        sender, receiver = link
        msg = self.links[link].popleft()
        if not self.peers[receiver].up:
            # A refused connect: the sender hears of it (links.py), what it sent is gone.
            self.links[link].clear()
            if self.peers[sender].up:
                self._step(sender, [PeerUnreachable(receiver)])
            return
        self._step(receiver, [PeerMessage(sender, msg)], mode)

    def break_link(self, link: tuple[str, str]) -> None:
        sender, receiver = link
        self.links[link].clear()
        if self.peers[sender].up:
            self._step(sender, [PeerUnreachable(receiver)])

    def finish(self, name: str, job_id: str, mode: str = SYNC) -> None:
        run = self.peers[name].running.pop(job_id)
        if run.killed:
            event = JobExited(job_id, run.attempt, None, "cancelled")
        else:
            self.runs[run.tag.decode()] = f"{name} {run.attempt}"
            event = JobExited(job_id, run.attempt, 0, None, stdout=run.tag)
        self._step(name, [event], mode)

    def tick(self, name: str, mode: str = SYNC) -> None:
        self._step(name, [Tick()], mode)

    def crash(self, name: str) -> None:
        peer = self.peers[name]
        peer.store.crash()
        peer.core = None
        peer.running.clear()
        for (a, b), queue in self.links.items():
            if name in (a, b):
                queue.clear()
        self.log.append(f"{self.now:.3f} {name}: CRASH")

    def restart(self, name: str) -> None:
        peer = self.peers[name]
        assert not peer.up
        peer.lives += 1
        snap = layout.start(peer.store, name)
        assert snap.peer_id == name
        cluster = Cluster(name, peer.addr, snap.incarnation, CONFIG,
                          random.Random(f"{name}/{snap.incarnation}/cluster"), self.now)
        peer.core = PeerCore(name, CONFIG, SLOTS, random.Random(f"{name}/{snap.incarnation}/core"),
                             snap, self.now, cluster=cluster)
        seeds = [ADDR[other] for other in NAMES if other != name]
        peer.core.handle_join(seeds, snap.peers, self.now)
        self.log.append(f"{self.now:.3f} {name}: START incarnation {snap.incarnation}")
        # As node.py: the recovery writes and the join's sends go out in the first batch.
        self._step(name, [])

    def live(self) -> list[str]:
        return [name for name in NAMES if self.peers[name].up]

    def nonempty_links(self) -> list[tuple[str, str]]:
        return [link for link in sorted(self.links) if self.links[link]]

    def deliver_queued(self) -> None:
        """Deliver what is queued now (not what that provokes), in a fixed order."""
        counts = {link: len(q) for link, q in self.links.items()}
        for link in sorted(counts):
            for _ in range(counts[link]):
                if self.links[link]:
                    self.deliver(link)

    def advance(self, dt: float, deliver: bool) -> None:
        """Let `dt` of virtual time pass in sub-steps: tick every live peer, and
        deliver the queued messages after each sub-step if `deliver`."""
        end = self.now + dt
        while self.now < end - 1e-9:
            self.now = min(end, self.now + SUBSTEP_S)
            for name in self.live():
                self.tick(name)
            if deliver:
                self.deliver_queued()

    def warm_up(self) -> None:
        for _ in range(60):  # 3 s at most; the local timers need well under 1 s
            self.advance(SUBSTEP_S, deliver=True)
            if self.all_alive():
                return
        raise AssertionError("peers did not find each other: " + repr(self.views()))

    def views(self) -> dict[str, dict[str, str]]:
        return {
            name: {m.id: m.state.value for m in self.peers[name].core.cluster.membership.members()}
            for name in self.live()
        }

    def all_alive(self) -> bool:
        return all(
            len(self.peers[name].core.cluster.membership.alive_peers()) == len(NAMES) - 1 for name in NAMES
        ) and len(self.live()) == len(NAMES)

    def home_record(self, job_id: str) -> JobRecord | None:
        d = durable(self.peers[home_of(job_id)], layout.JOB, job_id)
        return None if d is None else JobRecord.from_wire(d)

    # ------------------------------------------------------------------
    # Invariants

    def check(self) -> None:
        for job_id in sorted(self.acked):
            self.check_not_lost(job_id)
            self.check_final_is_final(job_id)
        for name in NAMES:
            peer = self.peers[name]
            assert len(peer.running) <= SLOTS
            if peer.up:
                assert len(peer.core.running) <= SLOTS, f"{name}: core runs {sorted(peer.core.running)}"
                # The core's idea of what runs here is what the edge started.
                assert {j: r.attempt for j, r in peer.running.items()} == {
                    j: h.attempt for j, h in peer.core.running.items()
                }, f"{name}: edge runs {peer.running}, core thinks {peer.core.running}"
                peer.core.cluster.membership.validate_state()

    def check_not_lost(self, job_id: str) -> None:
        """Nothing acknowledged is lost.

        The client got `OK <id>` only after the home synced j/<id>, so from then
        on the job must be recoverable from DURABLE state alone — whatever
        crashes next, the running processes and every message in flight can
        vanish. With `floor` the home's durable floor (results of attempts
        below it are acknowledged and ignored), the job is recoverable iff:

        * the home's durable j/<id> is final (the result is kept; nothing more
          is owed), or
        * some peer's durable q/<id> holds an attempt >= floor: that peer (up,
          or at its restart, which requeues every q/ entry, a running one as
          attempt + 1) will run it and send home a result the home accepts.
          This covers a job in a Handoff in flight: its sender deletes q/ only
          when the HandoffAck arrives, which the receiver sends only after its
          own q/ is synced; and a job taken back after a timeout, which never
          left the sender's q/; or
        * some peer's durable x/<id> (outbox) holds a result of an attempt
          >= floor: it is resent until the home acks it, and the home acks
          only after syncing it.

        Peers that are down count: their store is what their restart reads.
        A copy below the floor does not count: its result would be ignored.
        Nor does a home record that merely says "executor = home" with no q/:
        core._restore requeues such a record as a safety net, but only if the
        home restarts, and the design says record and q/ change together.
        """
        home = self.peers[home_of(job_id)]
        record = durable(home, layout.JOB, job_id)
        assert record is not None, f"acknowledged {job_id}: home {home.name} has no durable record"
        if record["s"] in ("done", "failed", "cancelled"):
            return
        floor = record["f"]
        copies = []
        for peer in self.peers.values():
            held = durable(peer, layout.HELD, job_id)
            if held is not None:
                copies.append(f"{peer.name} q/ attempt {held['a']}")
                if held["a"] >= floor:
                    return
            out = durable(peer, layout.OUTBOX, job_id)
            if out is not None:
                copies.append(f"{peer.name} x/ attempt {out['r']['attempt']}")
                if out["r"]["attempt"] >= floor:
                    return
        raise AssertionError(
            f"acknowledged job {job_id} lost: home {home.name} says {record['s']} attempt {record['a']} "
            f"floor {floor} at {record['x']!r}, and no peer durably holds an attempt >= floor of it (q/) or "
            f"of its result (x/); copies: {copies or 'none'}\n" + "\n".join(self.log[-40:]))

    def check_final_is_final(self, job_id: str) -> None:
        """Once the home's durable record is final it never changes (nor its
        output), and the result kept is one that a run really produced."""
        home = self.peers[home_of(job_id)]
        raw = home.store._durable.get(layout.key(layout.JOB, job_id))
        output = home.store._durable.get(layout.key(layout.OUTPUT, job_id))
        if job_id in self.final:
            first_raw, first_output = self.final[job_id]
            assert raw == first_raw, (
                f"final record of {job_id} changed: {layout.decode(first_raw, 'j')} -> {layout.decode(raw, 'j')}")
            assert output == first_output, f"kept output of {job_id} changed: {first_output!r} -> {output!r}"
            return
        record = layout.decode(raw, "j")
        if record["s"] not in ("done", "failed", "cancelled"):
            return
        self.final[job_id] = (raw, output)
        assert record["s"] == "done", record
        stdout = layout.decode(output, "o")[0].decode()
        assert stdout in self.runs, f"{job_id}: kept output {stdout!r} comes from no run"
        executor, attempt = self.runs[stdout].split()
        # The kept result is from an attempt the home accepts (>= floor), run where
        # the record says. (The record's own `attempt` is max(record, result), so
        # it may name a later attempt than the one whose result was kept.)
        assert record["x"] == executor and record["f"] <= int(attempt) <= record["a"], (record, self.runs[stdout])

    # ------------------------------------------------------------------
    # Liveness

    def settle(self, iterations: int = 3000) -> int:
        """No more faults: restart everyone, then deliver, finish and tick until
        every acknowledged job is final at its home."""
        for name in NAMES:
            if not self.peers[name].up:
                self.restart(name)
        for i in range(iterations):
            if all(self.is_final(job_id) for job_id in self.acked):
                return i
            self.deliver_queued()
            for name in NAMES:
                for job_id in sorted(self.peers[name].running):
                    self.finish(name, job_id)
            self.advance(SUBSTEP_S, deliver=True)
            self.check()
        open_jobs = {j: self.home_record(j) for j in sorted(self.acked) if not self.is_final(j)}
        raise AssertionError(f"not final after {iterations} rounds: {open_jobs}\n" + "\n".join(self.log[-60:]))

    def is_final(self, job_id: str) -> bool:
        record = self.home_record(job_id)
        return record is not None and record.state.final


# ---------------------------------------------------------------------------
# The state machine

MODES = st.sampled_from([SYNC, SYNC, CRASH_AFTER_SYNC, CRASH_BEFORE_SYNC])
DT = st.one_of(st.floats(0.01, 2.0), st.just(5.0))


class ThreePeers(RuleBasedStateMachine):
    """Submits, deliveries, broken links, exits, crashes at any point of a
    batch, restarts and time passing, in any order hypothesis finds."""

    @initialize()
    def start(self):
        self.w = World()
        self.w.warm_up()
        assert self.w.all_alive(), self.w.views()

    def _live(self):
        return self.w.live()

    @rule(data=st.data(), count=st.integers(1, 5))
    @precondition(lambda self: self.w.live())
    def submit(self, data, count):
        name = data.draw(st.sampled_from(self.w.live()), label="peer")
        self.w.submit(name, count)

    @rule(data=st.data())
    @precondition(lambda self: self.w.nonempty_links())
    def deliver(self, data):
        link = data.draw(st.sampled_from(self.w.nonempty_links()), label="link")
        self.w.deliver(link)

    @rule()
    @precondition(lambda self: self.w.nonempty_links())
    def deliver_all_queued(self):
        self.w.deliver_queued()

    @rule(link=st.sampled_from(sorted((a, b) for a in NAMES for b in NAMES if a != b)))
    def break_link(self, link):
        self.w.break_link(link)

    @rule(data=st.data())
    @precondition(lambda self: any(p.running for p in self.w.peers.values()))
    def finish(self, data):
        name = data.draw(st.sampled_from([n for n in NAMES if self.w.peers[n].running]), label="peer")
        job_id = data.draw(st.sampled_from(sorted(self.w.peers[name].running)), label="job")
        self.w.finish(name, job_id)

    @rule(data=st.data(), last=st.sampled_from(["none", "message", "exit", "tick", "submit"]),
          synced=st.booleans())
    @precondition(lambda self: self.w.live())
    def crash(self, data, last, synced):
        """Crash a peer, either idle or in the middle of the batch of one more
        event: before its sync, or after the sync but before any send."""
        w = self.w
        name = data.draw(st.sampled_from(w.live()), label="peer")
        mode = CRASH_AFTER_SYNC if synced else CRASH_BEFORE_SYNC
        inbound = [link for link in w.nonempty_links() if link[1] == name]
        if last == "message" and inbound:
            w.deliver(data.draw(st.sampled_from(inbound), label="link"), mode)
        elif last == "exit" and w.peers[name].running:
            w.finish(name, data.draw(st.sampled_from(sorted(w.peers[name].running)), label="job"), mode)
        elif last == "tick":
            w.tick(name, mode)
        elif last == "submit":
            w.submit(name, data.draw(st.integers(1, 3), label="count"), mode)
        if w.peers[name].up:
            w.crash(name)

    @rule(data=st.data())
    @precondition(lambda self: len(self.w.live()) < len(NAMES))
    def restart(self, data):
        name = data.draw(st.sampled_from([n for n in NAMES if not self.w.peers[n].up]), label="peer")
        self.w.restart(name)

    @rule(dt=DT, deliver=st.booleans())
    def tick(self, dt, deliver):
        self.w.advance(dt, deliver)

    @invariant()
    def invariants(self):
        self.w.check()
        for peer in self.w.peers.values():
            if peer.up:
                peer.core.validate_state()

    def teardown(self):
        w = getattr(self, "w", None)
        if w is None:
            return
        w.settle()
        for job_id in w.acked:
            assert w.is_final(job_id)
            # Final exactly once: the record kept is the first final one the home made durable.
            assert w.final[job_id][0] == w.peers[home_of(job_id)].store._durable[layout.key(layout.JOB, job_id)]


TestThreePeers = ThreePeers.TestCase
TestThreePeers.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# ---------------------------------------------------------------------------
# Specific crash points (docs/cluster.md), deterministic


def handoffs(w: World, sender: str) -> list[tuple[str, Handoff]]:
    return [(b, m) for (a, b), q in w.links.items() if a == sender for m in q if isinstance(m, Handoff) and m.jobs]


def deliver_until(w: World, predicate, link: tuple[str, str]) -> object:
    """Deliver link's messages in order up to (not including) the first one
    `predicate` accepts, and return that one, still at the head."""
    queue = w.links[link]
    while queue:
        if predicate(queue[0]):
            return queue[0]
        w.deliver(link)
    raise AssertionError(f"no matching message on {link}")


def place_remote(w: World) -> tuple[str, str]:
    """Submit to p1 until one job is pushed to another peer; return (job, receiver)
    with the Handoff at the head of the link (p1, receiver)."""
    for _ in range(5):
        w.submit("p1", 3)
        found = handoffs(w, "p1")
        if found:
            receiver, handoff = found[0]
            deliver_until(w, lambda m: m is handoff, ("p1", receiver))
            return handoff.jobs[0].job_id, receiver
        w.advance(0.3, deliver=True)
    raise AssertionError("p1 never pushed a job")


def test_receiver_synced_the_handoff_and_crashed_before_acking_runs_twice_keeps_one():
    w = World()
    w.warm_up()
    job, receiver = place_remote(w)
    # The receiver makes q/ durable and dies before its HandoffAck leaves.
    w.deliver(("p1", receiver), CRASH_AFTER_SYNC)
    assert durable(w.peers[receiver], layout.HELD, job) is not None
    assert durable(w.peers["p1"], layout.HELD, job) is not None  # the sender still holds it too
    w.check()
    # Membership declares the receiver dead: p1 takes the job back and runs it.
    for _ in range(200):
        w.advance(SUBSTEP_S, deliver=True)
        for name in w.live():
            for j in sorted(w.peers[name].running):
                if j != job:
                    w.finish(name, j)
        if job in w.peers["p1"].running or any(job in w.peers[n].running for n in w.live()):
            break
    runner = next(n for n in w.live() if job in w.peers[n].running)
    assert runner != receiver
    w.finish(runner, job)  # its result is kept first
    w.check()
    kept = w.home_record(job)
    assert kept.state.final and kept.executor == runner
    # The receiver comes back with the job in its q/ and runs it again.
    w.restart(receiver)
    assert job in w.peers[receiver].core.queue or job in w.peers[receiver].running
    for _ in range(100):
        if job in w.peers[receiver].running:
            break
        w.advance(SUBSTEP_S, deliver=False)  # keep the home's CancelJob from arriving first
    assert job in w.peers[receiver].running
    w.finish(receiver, job)  # a second result: acked and ignored
    assert w.starts[job] >= 2  # (the receiver may also have started it in the batch it lost)
    w.settle()
    w.advance(1.0, deliver=True)
    w.check()
    assert w.home_record(job) == kept
    assert all(durable(p, layout.OUTBOX, job) is None for p in w.peers.values())


def test_executor_crashes_after_its_result_is_in_the_outbox_result_resent_after_restart():
    w = World()
    w.warm_up()
    job, receiver = place_remote(w)
    w.deliver(("p1", receiver))
    deliver_until(w, lambda m: isinstance(m, HandoffAck), (receiver, "p1"))
    w.deliver((receiver, "p1"))  # p1 deletes its q/
    assert durable(w.peers["p1"], layout.HELD, job) is None
    for _ in range(100):
        if job in w.peers[receiver].running:
            break
        for j in sorted(w.peers[receiver].running):
            w.finish(receiver, j)
        w.advance(SUBSTEP_S, deliver=False)
    assert job in w.peers[receiver].running
    w.finish(receiver, job, CRASH_AFTER_SYNC)
    assert durable(w.peers[receiver], layout.OUTBOX, job) is not None
    assert durable(w.peers[receiver], layout.HELD, job) is None
    assert not w.home_record(job).state.final
    w.check()
    w.advance(0.5, deliver=True)
    w.restart(receiver)
    for _ in range(100):
        w.advance(SUBSTEP_S, deliver=True)
        if durable(w.peers[receiver], layout.OUTBOX, job) is None:
            break
    record = w.home_record(job)
    assert record.state.final and record.executor == receiver and w.starts[job] == 1
    assert durable(w.peers[receiver], layout.OUTBOX, job) is None
    w.check()


def test_home_down_while_the_result_is_sent_is_resent_with_backoff_until_it_is_back():
    w = World()
    w.warm_up()
    job, receiver = place_remote(w)
    w.deliver(("p1", receiver))
    deliver_until(w, lambda m: isinstance(m, HandoffAck), (receiver, "p1"))
    w.deliver((receiver, "p1"))
    for _ in range(100):
        if job in w.peers[receiver].running:
            break
        for j in sorted(w.peers[receiver].running):
            w.finish(receiver, j)
        w.advance(SUBSTEP_S, deliver=False)
    w.crash("p1")  # the home dies
    sent_before = len(w.sent)
    w.finish(receiver, job)
    w.advance(12.0, deliver=True)
    resends = [t for t, a, b, m in w.sent[sent_before:] if isinstance(m, JobResult) and m.job_id == job]
    assert len(resends) >= 4, resends
    gaps = [round(b - a, 2) for a, b in zip(resends, resends[1:])]
    assert gaps == sorted(gaps) and gaps[-1] <= CONFIG.result_retry_max_s + SUBSTEP_S, gaps
    assert durable(w.peers[receiver], layout.OUTBOX, job) is not None
    w.restart("p1")
    w.advance(CONFIG.result_retry_max_s + 1.0, deliver=True)
    record = w.home_record(job)
    assert record.state.final and record.executor == receiver
    assert durable(w.peers[receiver], layout.OUTBOX, job) is None
    w.check()
    w.settle()


# ---------------------------------------------------------------------------
# BUGS found by the state machine above, as minimal deterministic cases.
# Both FAIL against executor/core/ as it stands; see each docstring.


def test_handoff_of_a_reissued_attempt_to_a_peer_running_the_old_one_keeps_the_job():
    """Regression (found by TestThreePeers): a receiver that already held or
    ran a job used to skip the transferred copy whatever its attempt, yet ack
    the whole transfer. When
    the copy is a NEWER attempt (the home re-issued the job, raising its floor),
    the sender deletes its q/ on that ack, the receiver finishes the OLD attempt,
    whose result the home ignores (attempt < floor), and nobody holds the job
    any more: it is never run again (only a restart of the home would requeue it,
    through _restore's safety net).

    1. p1 pushes job J to R; R makes it durable, acks, runs attempt 1.
    2. A partition: p1 declares R dead and after reissue_grace_s re-issues J
       as attempt 2 (floor 2), queued at p1 behind p1's own running job.
    3. The partition heals; R (running attempt 1) steals from p1 and gets the
       oldest queued jobs, J attempt 2 among them; it skips J but acks.
    4. p1 deletes q/J. No durable copy of attempt >= 2 remains anywhere.
    """
    w = World()
    w.warm_up()
    job, receiver = place_remote(w)
    third = next(n for n in NAMES if n not in ("p1", receiver))
    w.crash(third)  # only the receiver can steal from p1 below
    w.deliver(("p1", receiver))
    while w.links[(receiver, "p1")]:
        w.deliver((receiver, "p1"))  # JobMoved and HandoffAck: p1 forgets its copy
    assert durable(w.peers["p1"], layout.HELD, job) is None
    for _ in range(20):
        if job in w.peers[receiver].running:
            break
        for other in sorted(w.peers[receiver].running):
            w.finish(receiver, other)
        w.advance(SUBSTEP_S, deliver=True)
    assert job in w.peers[receiver].running and w.peers["p1"].running  # both slots stay busy
    w.advance(6.0, deliver=False)  # partition: p1 sees the receiver dead for > reissue_grace_s
    reissued = w.home_record(job)
    assert (reissued.attempt, reissued.floor, reissued.executor) == (2, 2, "p1"), reissued
    w.submit("p1", 4)  # enough queued at p1 for the receiver to steal
    for _ in range(40):
        w.advance(SUBSTEP_S, deliver=True)  # healed: the receiver steals J attempt 2
        if durable(w.peers["p1"], layout.HELD, job) is None:
            break
    w.check()  # fails here: "acknowledged job ... lost"
    w.finish(receiver, job)
    w.settle(iterations=400)


def test_reissue_at_a_home_that_runs_the_job_itself_keeps_its_q():
    """Regression (found by TestThreePeers; fixed: a home never re-issues a
    job it holds itself): the home took a lent job back (the receiver looked dead) and runs it itself as
    attempt 1; a late JobMoved from the receiver then sets record.executor to
    the receiver, which is still dead in the home's view, so the home re-issues
    the job: attempt 2 is put in `queue` and written to q/<id> while attempt 1
    is still in `running` under the same id. When attempt 1 exits, _on_exited
    deletes q/<id> — which now holds attempt 2 — and its result is ignored
    (attempt 1 < floor 2). Until attempt 2 is dispatched the home holds the job
    only in memory: a crash then leaves no q/ with attempt >= floor anywhere
    (only _restore's "recorded here but not held" safety net brings it back).
    With slots > 1 the same state lets _dispatch start attempt 2 while attempt 1
    still runs on the same peer, overwriting running[<id>].
    """
    w = World()
    w.warm_up()
    w.deliver_queued()
    w.submit("p1", 1)
    w.deliver_queued()
    w.finish("p2", "p1-1")  # p2 runs p1's job: loads p1 0, p2 1
    w.deliver_queued()
    w.deliver_queued()
    (job,) = w.submit("p2", 1)  # pushed to p1
    assert [r for r, _ in handoffs(w, "p2")] == ["p1"]
    w.deliver_queued()  # p1 holds it and runs it; its JobMoved reports are queued to p2
    assert job in w.peers["p1"].running
    w.submit("p1", 1)
    w.advance(5.0, deliver=False)  # partition: p2 takes the job back and runs it itself
    assert job in w.peers["p2"].running
    w.deliver_queued()  # the late JobMoved: record.executor = p1, still dead for p2
    w.advance(5.0, deliver=False)  # p2 re-issues: attempt 2 queued at p2, attempt 1 runs at p2
    # Now (the bug): record attempt 2, floor 2, executor p2; attempt 2 in p2's
    # queue and q/, attempt 1 still in p2's running, under the same id.
    if job in w.peers["p2"].running:
        w.finish("p2", job)  # attempt 1 exits: q/<job> (attempt 2) is deleted
    w.check()  # fails here: "acknowledged job ... lost"
    w.settle(iterations=400)


def test_a_job_its_recorded_holder_no_longer_has_is_found_by_audit_and_reissued():
    """The liveness gap audits close: the home's record names a holder that
    does not have the job (it handed it on, and the new holder's location
    report was lost before that holder died for good). The holder says so
    twice in a row; the home re-issues the job and it finishes."""
    w = World()
    w.warm_up()
    job, receiver = place_remote(w)
    w.deliver(("p1", receiver))  # the receiver holds it durably and acks
    w.deliver_queued()
    assert w.home_record(job).executor == receiver
    # The receiver loses the job without a word to the home (as if handed on
    # to a peer that then vanished with the only report of it).
    core = w.peers[receiver].core
    core.queue.pop(job, None)
    core.running.pop(job, None)
    w.peers[receiver].running.pop(job, None)  # its process is gone too
    w.peers[receiver].store.write([(layout.key(layout.HELD, job), None)], sync=True)
    audits_before = sum(1 for _, _, _, m in w.sent if isinstance(m, Audit))
    reissued_before = w.peers["p1"].core.counters.reissued
    for _ in range(int(3 * CONFIG.audit_interval_s / SUBSTEP_S) + 20):
        w.advance(SUBSTEP_S, deliver=True)
        for name in w.live():
            for j in sorted(w.peers[name].running):
                w.finish(name, j)
        if w.home_record(job).state.final:
            break
    record = w.home_record(job)
    assert record.state.final and record.attempt == 2, record
    assert w.peers["p1"].core.counters.reissued == reissued_before + 1
    assert sum(1 for _, _, _, m in w.sent if isinstance(m, Audit)) >= audits_before + 2
    w.check()
    w.settle()


def test_audits_reissue_nothing_while_holders_hold_their_jobs():
    w = World()
    w.warm_up()
    w.submit("p1", 12)  # pushes and steals spread them; nobody finishes any for a while
    w.advance(4 * CONFIG.audit_interval_s, deliver=True)
    assert any(isinstance(m, Audit) for _, _, _, m in w.sent)
    assert all(w.peers[n].core.counters.reissued == 0 for n in w.live())
    w.settle()
