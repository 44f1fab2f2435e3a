"""The durable key-value store a peer keeps its state in.

Two implementations share one small interface:

* `LevelStore` — LevelDB through plyvel, for real peers.
* `MemoryStore` — a dict with LevelDB's crash semantics, for tests and the
  deterministic simulation: a write is *durable* only once a batch carrying it
  was written with ``sync=True``; `crash()` throws away everything written since
  the last synced batch, exactly what a power cut does to LevelDB's unsynced
  log tail.

The interface is deliberately tiny — atomic batches, point reads and prefix
scans — because every decision about *what* to write lives in the sans-IO cores
(see `executor/core.py`); this layer only makes bytes durable.

Keys and values are bytes. Values that are structured are CBOR (see
`storage/records.py`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Protocol

Write = tuple[bytes, bytes | None]
"""One write of a batch: (key, value), a value of None deletes the key."""


class StoreError(Exception):
    """An operating error of the store; the message is one line for a person."""


class StoreLocked(StoreError):
    """Another process holds the data directory's lock."""


class StoreCorrupt(StoreError):
    """LevelDB found corruption; `peerjobs repair` may recover the data."""


class StoreIOError(StoreError):
    """A read or write failed (EIO, ENOSPC, ...). A failed *write* is fatal to
    the peer (fail-stop: see `executor/node.py`); a failed read fails the one
    request that needed it."""


class Store(Protocol):
    blocks: bool
    """True if a synced write may block on a device (then the edge syncs in
    a worker thread); False for memory, which is written inline."""

    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]: ...

    def write(self, writes: Iterable[Write], *, sync: bool) -> None: ...

    def close(self) -> None: ...


class MemoryStore:
    """A store in memory whose `crash()` loses every unsynced write.

    Writes are applied to `_live` at once (so reads see them, as LevelDB's
    memtable does) and remembered in `_unsynced` until a synced batch lands.
    A synced batch also makes every earlier unsynced write durable, as
    LevelDB's single log does: an fsync flushes the whole log up to that
    point. A sync costs O(writes since the last sync), not O(store), which
    matters to the simulation of peers holding tens of thousands of records.
    """

    blocks = False

    def __init__(self) -> None:
        self._durable: dict[bytes, bytes] = {}
        self._live: dict[bytes, bytes] = {}
        self._unsynced: dict[bytes, bytes | None] = {}
        self.synced_batches = 0
        self.closed = False

    @property
    def durable(self) -> dict[bytes, bytes]:
        """What a crash now would leave (read-only: for checkers)."""
        return self._durable

    def get(self, key: bytes) -> bytes | None:
        return self._live.get(key)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key in sorted(k for k in self._live if k.startswith(prefix)):
            yield key, self._live[key]

    def write(self, writes: Iterable[Write], *, sync: bool) -> None:
        assert not self.closed, "write to a closed store"
        live, unsynced = self._live, self._unsynced
        for key, value in writes:
            if value is None:
                live.pop(key, None)
            else:
                live[key] = value
            unsynced[key] = value
        if sync:
            durable = self._durable
            for key, value in unsynced.items():
                if value is None:
                    durable.pop(key, None)
                else:
                    durable[key] = value
            unsynced.clear()
            self.synced_batches += 1

    def crash(self) -> None:
        """Forget everything not yet synced, as a power cut would."""
        if self._unsynced:
            self._live = dict(self._durable)
            self._unsynced.clear()
        self.closed = False

    def close(self) -> None:
        self.closed = True


class LevelStore:
    """LevelDB through plyvel. Opening fails with a one-line `StoreError`."""

    blocks = True

    def __init__(self, path: str) -> None:
        import plyvel  # imported here so that the sans-IO layers never load it

        self._plyvel = plyvel
        self.path = os.path.join(path, "leveldb")
        os.makedirs(path, exist_ok=True)
        try:
            self._db = plyvel.DB(os.path.join(path, "leveldb"), create_if_missing=True)
        except plyvel.IOError as exc:
            if "lock" in str(exc).lower():
                raise StoreLocked(
                    f"data directory {path} is in use by another peerjobs process "
                    f"(LevelDB lock held)"
                ) from None
            raise StoreError(f"cannot open data directory {path}: {exc}") from None
        except plyvel.CorruptionError as exc:
            raise StoreCorrupt(
                f"data directory {path} is corrupt ({exc}); "
                f"run `peerjobs repair --data {path}` to recover what can be recovered"
            ) from None
        # A new database's first MANIFEST is never synced by LevelDB, and its
        # files (CURRENT, MANIFEST) and the data directory itself are named in
        # directories it never syncs: sync them all now, before anything is acknowledged, or a power cut in a
        # peer's first life leaves a database that cannot be opened.
        try:
            for name in sorted(os.listdir(self.path)):  # a handful of files: CURRENT, MANIFEST-*, *.log, ...
                if name.startswith(("CURRENT", "MANIFEST")):
                    _fsync_path(os.path.join(self.path, name), 0)
            self._dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            self._names = _entries(self.path)
            os.fsync(self._dir_fd)
            for directory in (path, os.path.dirname(os.path.abspath(path))):
                _fsync_path(directory, os.O_DIRECTORY)
        except OSError as exc:
            self._db.close()
            raise StoreError(f"cannot sync data directory {path}: {exc.strerror or exc}") from None

    def get(self, key: bytes) -> bytes | None:
        try:
            return self._db.get(key)
        except self._plyvel.Error as exc:
            raise StoreIOError(f"reading {self.path}: {exc}") from None

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        try:
            yield from self._db.iterator(prefix=prefix)
        except self._plyvel.Error as exc:
            raise StoreIOError(f"reading {self.path}: {exc}") from None

    def write(self, writes: Iterable[Write], *, sync: bool) -> None:
        try:
            with self._db.write_batch(sync=sync) as batch:
                for key, value in writes:
                    if value is None:
                        batch.delete(key)
                    else:
                        batch.put(key, value)
            if sync:
                # LevelDB makes a new log file at each memtable switch without
                # syncing its directory: on a file system that keeps names only
                # when their directory is synced (POSIX's letter), a power cut
                # could then lose the new log with synced batches in it (found
                # with sim/faultfs). The switch happens inside the write above,
                # so a new name is visible now: the directory is synced when
                # its names (or their inodes: a rename over CURRENT) changed
                # since the last sync of it. An fsync of an unchanged directory
                # cost a third of the batch's own (0.055 of 0.17 ms here); the
                # scan of its dozen names, a fifth of that. (Table files of a
                # compaction are synced with their directory by LevelDB itself
                # when it syncs the MANIFEST that names them.)
                names = _entries(self.path)
                if names != self._names:
                    os.fsync(self._dir_fd)
                    self._names = names
        except self._plyvel.Error as exc:
            raise StoreIOError(f"writing {self.path}: {exc}") from None
        except OSError as exc:
            raise StoreIOError(f"syncing the directory {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        self._db.close()
        os.close(self._dir_fd)


def _entries(path: str) -> frozenset[tuple[str, int]]:
    """A directory's names with their inodes."""
    with os.scandir(path) as it:
        return frozenset((entry.name, entry.inode()) for entry in it)


def _fsync_path(path: str, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def repair(path: str) -> None:
    """Run LevelDB's repair on a data directory (see `peerjobs repair`)."""
    import plyvel

    plyvel.repair_db(os.path.join(path, "leveldb"))
