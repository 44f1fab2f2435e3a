"""The core's client side: commands in, replies out (SUBMIT, STATUS, RESULT,
WAIT, CANCEL, LIST, PEERS, HELP, QUIT), and how a RESULT reply is made from
one read of the store. A mixin of `PeerCore`; no I/O."""

from __future__ import annotations

from typing import Any

from executor.core.events import Reply, ReplyResult, ReplyTail, _Waiter
from executor.core.ids import order_key, parent_of
from executor.core.jobs import JobRecord, JobState
from executor.core.protocol import (
    HELP_LINES,
    NOT_HOME_UNKNOWN,
    Cancel,
    ClientError,
    Command,
    ErrorCode,
    Help,
    ListJobs,
    Peers,
    Quit,
    Result,
    Status,
    Submit,
    Tail,
    Wait,
    err,
    format_fields,
    lines_reply,
    ok,
    split_job_id,
)
from storage import layout
from storage.store import StoreError


class ClientsMixin:
    def _on_client(self, token: Any, command: Command, now: float) -> None:
        kind = type(command)
        try:
            parent = self.parents.get(getattr(command, "job_id", None))
            if parent is not None:
                self._on_parent_command(token, kind.__name__.lower(), parent, now, getattr(command, "timeout_s", None))
            elif kind is Submit:
                self._submit(token, command, now)
            elif kind is Status:
                record = self._home_record(command.job_id)
                self._actions.append(Reply(token, self._status_line(record), about=record.job_id))
            elif kind is Result:
                self._result(token, self._home_record(command.job_id))
            elif kind is Tail:
                self._tail(token, command)
            elif kind is Wait:
                self._wait(token, command, now)
            elif kind is Cancel:
                self._cancel(token, self._home_record(command.job_id), now)
            elif kind is ListJobs:
                latest = []
                for job_id in reversed(self.records):
                    record = self.records[job_id]
                    if ((command.state is None or record.state.value == command.state)
                            and (command.array is None or parent_of(job_id) == command.array)):
                        latest.append(self._status_text(record, listing=True))
                        if len(latest) >= command.count:
                            break
                self._reply(token, lines_reply("jobs", latest))
            elif kind is Peers:
                self._reply(token, lines_reply("peers", self.peer_lines()))
            elif kind is Help:
                self._reply(token, lines_reply("lines", list(HELP_LINES)))
            elif kind is Quit:
                self._actions.append(Reply(token, ok("bye"), close=True))
            else:
                raise TypeError(f"unknown command {command!r}")
        except ClientError as exc:
            self._reply(token, exc.reply())

    def _reply(self, token: Any, data: bytes) -> None:
        self._actions.append(Reply(token, data))

    def _home_record(self, job_id: str) -> JobRecord:
        record = self.records.get(job_id)
        if record is not None:
            return record
        home, seq = split_job_id(job_id)
        parent = self.parents.get(parent_of(job_id) or "")
        if parent is not None and not parent.cancelled and parent.will_make(order_key(job_id)[1]):
            raise ClientError(ErrorCode.NOT_FOUND, f"job {job_id} is not made yet: {parent.job_id} makes its jobs "
                                                   f"as earlier ones end (STATUS {parent.job_id})")
        if home == self.peer_id:
            ttl = self.config.records_retained_s
            forgotten = (f"; finished jobs are forgotten when their --keep time{f' (default {ttl:g} s)' if ttl else ''} "
                         f"is up, or beyond the latest {self.config.records_retained_max}: expired or never issued")
            raise ClientError(ErrorCode.NOT_FOUND, f"no job {job_id} (this peer has issued {self.next_seq - 1}{forgotten})")
        where = self.cluster.address_of(home) if self.cluster is not None else None
        at = f" at {where}" if where else ""
        # The address is also data (`home=`), so a client follows it without reading the prose.
        raise ClientError(ErrorCode.NOT_HOME, f"job {job_id} belongs to peer {home}{at}; ask it there",
                          home=where or NOT_HOME_UNKNOWN)

    def _submit(self, token: Any, command: Submit, now: float) -> None:
        if self.disk_low:
            raise ClientError(ErrorCode.DISK_FULL, "the disk of this peer is (nearly) full; nothing was stored, "
                                           "submit again later or to another peer")
        if len(self.queue) >= self.config.queue_jobs_max:
            self.counters.busy_rejections += 1
            raise ClientError(ErrorCode.BUSY, f"{len(self.queue)} jobs queued here (bound {self.config.queue_jobs_max}); retry later")
        if len(self.unmet) + len(self.scheduled) >= self.config.queue_jobs_max:
            self.counters.busy_rejections += 1
            raise ClientError(ErrorCode.BUSY, f"{len(self.unmet)} jobs waiting and {len(self.scheduled)} scheduled "
                                              f"here (bound {self.config.queue_jobs_max} together); retry later")
        if command.array is not None and not command.array[2]:
            first, last, _ = command.array
            if len(self.queue) + last - first + 1 > self.config.queue_jobs_max:
                raise ClientError(ErrorCode.BUSY, f"{last - first + 1} elements would pass the bound of "
                                                  f"{self.config.queue_jobs_max} queued jobs; cap them (%M) or retry later")
        width = command.spec.slots
        if width > self.slots and (self.cluster is None or width > self.cluster.widest()):
            widest = max(self.slots, self.cluster.widest() if self.cluster is not None else 0)
            raise ClientError(ErrorCode.BAD_REQUEST, f"--slots {width}: no peer has that many (the widest has {widest})")
        self._check_dependencies(command)
        seq = self.next_seq
        self.next_seq += 1
        job_id = f"{self.peer_id}-{seq}"
        self._writes.append((layout.META_SEQ, layout.encode(self.next_seq)))
        if command.array is not None or command.every_s is not None or command.cron is not None:
            self._submit_parent(job_id, command)
            self._reply(token, ok(job_id))
            return
        record = JobRecord(job_id, command.spec, self._wall, executor=self.peer_id)
        self.records[job_id] = record
        self.counters.submitted += 1
        self._admit(record, command)
        self._reply(token, ok(job_id))
        if self.cluster is not None and job_id in self.queue:
            target = self.cluster.push_target(self.load, width)
            if target is not None:
                # Pushed at the end of the batch, all jobs for one peer in one handoff.
                self._pushes.setdefault(target, []).append(self.queue.pop(job_id))
                self.cluster.moved(target, width)

    def _result(self, token: Any, record: JobRecord) -> None:
        if not record.state.final:
            raise ClientError(ErrorCode.NOT_FINISHED, f"job {record.job_id} is {record.state.value}")
        if record.stdout_bytes or record.stderr_bytes:
            self._actions.append(ReplyResult(token, record.job_id))
        else:
            self._reply(token, result_reply(record, b"", b""))

    def _tail(self, token: Any, command: Tail) -> None:
        """The output so far: live from the peer that runs the job (any peer
        answers for what it runs), stored once the job is final (as RESULT),
        none yet while it waits; a job running elsewhere is `ERR elsewhere`
        naming that peer, so a client asks it there."""
        job = self.running.get(command.job_id)
        if job is not None and command.job_id not in self.cancelled_running:
            self._actions.append(ReplyTail(token, command.job_id, job.attempt, command.follow))
            return
        record = self._home_record(command.job_id)
        if record.state.final:
            self._result(token, record)
        elif record.state is JobState.RUNNING and record.executor != self.peer_id:
            where = self.cluster.address_of(record.executor) if self.cluster is not None else None
            raise ClientError(ErrorCode.ELSEWHERE, f"job {record.job_id} runs on peer {record.executor}"
                              f"{f' at {where}' if where else ''}; TAIL it there",
                              executor=where or NOT_HOME_UNKNOWN)
        else:
            self._reply(token, result_reply(record, b"", b""))

    def _wait(self, token: Any, command: Wait, now: float) -> None:
        record = self._home_record(command.job_id)
        if record.state.final:
            self._actions.append(Reply(token, self._status_line(record), about=record.job_id))
            return
        timeout = command.timeout_s if command.timeout_s is not None else self.config.wait_max_s
        self.waiters.setdefault(record.job_id, []).append(_Waiter(token, now + timeout))

    def _drop_waiters(self, connection: Any) -> None:
        for job_id in list(self.waiters):
            kept = [w for w in self.waiters[job_id] if w.token[0] != connection]
            if kept:
                self.waiters[job_id] = kept
            else:
                del self.waiters[job_id]

    def _wake(self, record: JobRecord) -> None:
        for waiter in self.waiters.pop(record.job_id, ()):
            self._reply(waiter.token, self._status_line(record))

    def _cancel(self, token: Any, record: JobRecord, now: float) -> None:
        if record.state.final:
            raise ClientError(ErrorCode.FINISHED, f"job {record.job_id} is already {record.state.value}")
        self._cancel_record(record, "cancelled")
        self._reply(token, ok(f"{record.job_id} cancelled"))

    def _status_text(self, record: JobRecord, listing: bool = False) -> str:
        """A STATUS line's text; a LIST line's (`listing`) also ends with
        `command=` and the command, the rest of the line."""
        spec, final = record.spec, record.state.final
        fields = {
            "attempt": record.attempt,
            "executor": record.executor or "-",
            "exit": record.exit_code if final else None,
            "reason": record.reason if final else None,
            "last": record.reason if not final else None,  # why the previous try failed
            "try": f"{record.tries}/{spec.tries}" if spec.retries else None,
            "priority": spec.priority or None,
            "due": f"{record.due_at:.3f}" if record.state is JobState.SCHEDULED and record.due_at is not None else None,
            "after": ",".join(self.unmet.get(record.job_id, ())) or None,
            "submitted": f"{record.submitted_at:.3f}",
            "runtime_ms": (
                round((record.finished_at - record.started_at) * 1000)
                if record.finished_at is not None and record.started_at is not None
                else None
            ),
            "slots": spec.slots if spec.slots != 1 else None,
            "parent": parent_of(record.job_id),
        }
        text = f"{record.job_id} {record.state.value} {format_fields(fields)}"
        if listing:
            shown = spec.command if spec.kind == "sh" else f"(sleep {spec.sleep_ms} ms)"
            text += f" command={shown}"
        return text

    def _status_line(self, record: JobRecord) -> bytes:
        return ok(self._status_text(record))

    def peer_lines(self) -> list[str]:
        """PEERS' lines: every member with its state and load, this peer marked
        (a query the edges use too)."""
        if self.cluster is not None:
            return self.cluster.peer_lines(self.load)
        load = self.load
        return [f"{self.peer_id} - alive incarnation=- queued={load.queued} running={load.running} slots={load.slots} self"]

    def _expire_waiters(self, now: float) -> None:
        for job_id in list(self.waiters):
            kept = []
            for waiter in self.waiters[job_id]:
                if waiter.deadline <= now:
                    state = self._state_of(job_id)  # a job's, or an array's or a periodic job's
                    self._reply(waiter.token, err(ErrorCode.TIMEOUT, f"job {job_id} is still {state}"))
                else:
                    kept.append(waiter)
            if kept:
                self.waiters[job_id] = kept
            else:
                del self.waiters[job_id]


def result_reply(record: JobRecord, stdout: bytes, stderr: bytes) -> bytes:
    """`OK <id> <state> ... stdout=<n> stderr=<m> ...`, the n + m bytes, a newline.
    The counts are those of the bytes sent, so header and body cannot disagree."""
    fields = {
        "exit": "-" if record.exit_code is None else record.exit_code,
        "stdout": len(stdout),
        "stderr": len(stderr),
        "attempt": record.attempt,
        "executor": record.executor or "-",
        "truncated": "yes" if record.truncated else "no",
        "reason": record.reason,
    }
    return ok(f"{record.job_id} {record.state.value} {format_fields(fields)}") + stdout + stderr + b"\n"


def read_result(store: Any, job_id: str) -> bytes:
    """The reply to a `ReplyResult`, from one read of the store after the sync
    that made the record final (a final record and its output never change
    again, and are forgotten together, in one batch)."""
    try:
        raw = store.get(layout.key(layout.JOB, job_id))
        if raw is None:
            return err(ErrorCode.NOT_FOUND, f"job {job_id} was forgotten (records_retained_max) before its result could be sent")
        record = JobRecord.from_wire(layout.decode(raw, "job record"))
        output = store.get(layout.key(layout.OUTPUT, job_id))
        stdout, stderr = layout.decode(output, "output") if output is not None else (b"", b"")
    except StoreError as exc:  # a failed read fails this request only
        return err(ErrorCode.STORAGE, f"cannot read the result of {job_id}: {exc}")
    return result_reply(record, stdout, stderr)
