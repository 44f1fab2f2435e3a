"""Where a peer's state lives in its store, and how it is encoded.

One prefix per kind of record; values are CBOR maps. Everything a peer must
remember across a crash is here:

    m/id           this peer's id (made once, on first start)
    m/incarnation  bumped and synced at every start (membership fencing)
    m/seq          the next job sequence number (ids are never reused)
    j/<job-id>     the home's record of a job submitted here
    o/<job-id>     that job's captured output: [stdout, stderr]
    q/<job-id>     a job this peer holds to run, whatever its home
    x/<job-id>     outbox: a result waiting for its home's ack
    p/<peer-id>    a member this peer knew, to rejoin through after a restart
    m/instance     a random id made once per data directory: tells a restart of
                   this peer (same instance) from another peer started under the
                   same name with another data directory (docs/membership.md)
    g/<job-id>     an array or a periodic job: the parent of child jobs <job-id>.<i>
    r/<job-id>     the session of a job process running now: {pid, start, boot}
                   (executor/runner.py), synced before the job's command runs,
                   so a restarted peer can kill the orphans of its previous life

Decoding is strict: a value that is not what we wrote means the store is
corrupt, and the caller reports it as such (`StoreCorrupt`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import cbor2

from storage.store import Store, StoreCorrupt

META_ID = b"m/id"
META_INCARNATION = b"m/incarnation"
META_SEQ = b"m/seq"
META_INSTANCE = b"m/instance"
JOB = b"j/"
OUTPUT = b"o/"
HELD = b"q/"
OUTBOX = b"x/"
PEER = b"p/"
PID = b"r/"
PARENT = b"g/"  # arrays and periodic jobs: the parents of child jobs (executor/core/parents.py)


def key(prefix: bytes, name: str) -> bytes:
    return prefix + name.encode()


def encode(value: object) -> bytes:
    return cbor2.dumps(value)


def decode(data: bytes, what: str) -> object:
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on bad input
        raise StoreCorrupt(f"cannot decode {what}: {exc}") from None


@dataclass
class Snapshot:
    """What a store holds at start-up: identity and peers as plain values,
    and the (possibly huge) job tables as iterators over the store, so that
    recovery builds its objects one record at a time and never holds all of
    them decoded at once (a restart's peak memory is its steady memory)."""

    peer_id: str | None = None
    incarnation: int = 0
    next_seq: int = 1
    peers: dict[str, str] = field(default_factory=dict)
    instance: str | None = None
    store: Store | None = None

    def jobs(self) -> Iterator[dict]:
        """Home records (j/), in key order."""
        return self._scan(JOB)

    def held(self) -> Iterator[dict]:
        """Jobs held to run (q/), in key order."""
        return self._scan(HELD)

    def parents(self) -> Iterator[dict]:
        """Arrays and periodic jobs (g/), in key order."""
        return self._scan(PARENT)

    def outbox(self) -> Iterator[dict]:
        """Results waiting for their homes' acks (x/)."""
        return self._scan(OUTBOX)

    def _scan(self, prefix: bytes) -> Iterator[dict]:
        if self.store is not None:
            for _, value in _values(self.store, prefix):
                yield value


def _values(store: Store, prefix: bytes) -> Iterator[tuple[bytes, object]]:
    """(key, decoded value) of every record under `prefix`; one that does not
    decode is `StoreCorrupt` naming its key (the name is made only then:
    recovery decodes every record of a long queue through here)."""
    for key, value in store.scan(prefix):
        try:
            yield key, cbor2.loads(value)
        except Exception as exc:  # cbor2 raises several types on bad input
            raise StoreCorrupt(f"cannot decode {key.decode(errors='replace')}: {exc}") from None


def load(store: Store) -> Snapshot:
    snap = Snapshot()
    raw_id = store.get(META_ID)
    if raw_id is not None:
        snap.peer_id = raw_id.decode()
    raw = store.get(META_INCARNATION)
    if raw is not None:
        snap.incarnation = int(decode(raw, "incarnation"))
    raw = store.get(META_INSTANCE)
    if raw is not None:
        snap.instance = raw.decode()
    raw = store.get(META_SEQ)
    if raw is not None:
        snap.next_seq = int(decode(raw, "sequence"))
    snap.store = store
    snap.peers = {key[len(PEER):].decode(): str(v) for key, v in _values(store, PEER)}
    return snap


def new_instance() -> str:
    """A data directory's instance id: 64 random bits, hex."""
    return os.urandom(8).hex()


def start(store: Store, make_id: str, make_instance: Callable[[], str] = new_instance) -> Snapshot:
    """Read the snapshot, fix the peer id and the instance id on first start
    (a data directory from before instance ids gets one now) and bump the
    incarnation; synced before the peer says anything to anybody."""
    snap = load(store)
    if snap.peer_id is None:
        snap.peer_id = make_id
    if snap.instance is None:
        snap.instance = make_instance()
    snap.incarnation += 1
    store.write(
        [(META_ID, snap.peer_id.encode()), (META_INCARNATION, encode(snap.incarnation)),
         (META_INSTANCE, snap.instance.encode())],
        sync=True,
    )
    return snap
