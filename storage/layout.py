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
    r/<job-id>     pid of a job process running now (unsynced: a hint that lets a
                   restarted peer kill the orphans of its previous life)

Decoding is strict: a value that is not what we wrote means the store is
corrupt, and the caller reports it as such (`StoreCorrupt`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import cbor2

from storage.store import Store, StoreCorrupt

META_ID = b"m/id"
META_INCARNATION = b"m/incarnation"
META_SEQ = b"m/seq"
JOB = b"j/"
OUTPUT = b"o/"
HELD = b"q/"
OUTBOX = b"x/"
PEER = b"p/"
PID = b"r/"


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
    """Everything read back from a store at start-up, as plain values."""

    peer_id: str | None = None
    incarnation: int = 0
    next_seq: int = 1
    jobs: list[dict] = field(default_factory=list)
    held: list[dict] = field(default_factory=list)
    outbox: list[dict] = field(default_factory=list)
    peers: dict[str, str] = field(default_factory=dict)


def _values(store: Store, prefix: bytes) -> Iterator[tuple[str, object]]:
    for k, v in store.scan(prefix):
        name = k[len(prefix):].decode()
        yield name, decode(v, (prefix + k[len(prefix):]).decode(errors="replace"))


def load(store: Store) -> Snapshot:
    snap = Snapshot()
    raw_id = store.get(META_ID)
    if raw_id is not None:
        snap.peer_id = raw_id.decode()
    raw = store.get(META_INCARNATION)
    if raw is not None:
        snap.incarnation = int(decode(raw, "incarnation"))
    raw = store.get(META_SEQ)
    if raw is not None:
        snap.next_seq = int(decode(raw, "sequence"))
    snap.jobs = [v for _, v in _values(store, JOB)]
    snap.held = [v for _, v in _values(store, HELD)]
    snap.outbox = [v for _, v in _values(store, OUTBOX)]
    snap.peers = {name: str(v) for name, v in _values(store, PEER)}
    return snap


def start(store: Store, make_id: str) -> Snapshot:
    """Read the snapshot, fix the peer id on first start and bump the
    incarnation; synced before the peer says anything to anybody."""
    snap = load(store)
    if snap.peer_id is None:
        snap.peer_id = make_id
    snap.incarnation += 1
    store.write(
        [(META_ID, snap.peer_id.encode()), (META_INCARNATION, encode(snap.incarnation))],
        sync=True,
    )
    return snap
