"""Runs one job: a `/bin/sh -c` subprocess, or an in-peer sleep. trio edge code.

A shell job runs in its own session (so its whole process group can be
signalled), with stdin from /dev/null, in the peer's work directory, with the
peer's environment plus PEERJOBS_JOB_ID, PEERJOBS_ATTEMPT and PEERJOBS_PEER.
stdout and stderr are each captured up to `output_bytes_max` bytes; the rest
is read and dropped (so the job never blocks on a full pipe) and the result
says truncated. When the job times out, is cancelled, or the peer shuts down,
its process group gets SIGTERM, then SIGKILL after `kill_grace_s`.

Orphans of a previous life. A peer killed with -9 leaves its jobs running.
The next life must kill them before it runs those jobs again, and it must
find them by something a job cannot change: not its environment (`env -i`
clears it), but its *session*. Every job is the leader of a new session
(`setsid`), so its session id is its pid, and every process it starts keeps
that session id, even one that moves to another process group. The pid is
pinned against reuse by the process start time (/proc/<pid>/stat field 22,
clock ticks since boot) and the boot id.

The record must be durable before the job's command runs, or a crash right
after the start would leave a process the next life cannot know about. So
the job is spawned through a tiny wrapper: `/bin/sh` that waits for one line
on a pipe (its stdin), then execs `/bin/sh -c <command>` in its place (same pid, same
session). The peer writes the record (`r/<job-id>`, synced) between the spawn
and that line. If the peer dies first, the kernel closes the pipe, the
wrapper reads EOF and exits 125 without running anything. Whichever moment
the peer dies, the job's command is either not started or on record.

What this does not catch: a process that leaves the session itself
(`setsid` in the job, a double-forking daemon). Only a cgroup per job could
follow it; peerjobs does not ask for one.

A job whose spawn fails (the work directory was removed or replaced by a
file, out of file descriptors, memory, an argument list too long...) fails
with `reason=spawn-error` and the OS error in its stderr; the peer goes on.
The work directory is recreated before every spawn, so a job that removed
it breaks nothing but itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from executor.core import JobExited, StartJob
from executor.core.ids import parent_of
from executor.edge.timers import sleep_precisely

if TYPE_CHECKING:
    from executor.edge.tail import LiveOutput  # it holds this module's captures

_READ_CHUNK_BYTES = 65536

_WRAPPER = ('read -r _ || exit 125; exec </dev/null; __peerjobs_command=$1; shift; '
            'eval "unset __peerjobs_command; $__peerjobs_command"')
"""Waits for the peer's go line on its stdin, a pipe from the peer (the
record of this process is then durable), then runs the command in itself,
with stdin from /dev/null as every job has, no positional parameters and
`$0` /bin/sh: as `/bin/sh -c <command>` would, without a second exec of the
shell (0.7 ms a job here: `true`, a builtin, then forks nothing). EOF instead
(the peer died before the record was durable): exit 125 without running the
command."""
WRAPPER_NO_GO_EXIT = 125

ORPHAN_KILL_ROUNDS_MAX = 20
"""Scans of /proc at restart: a process of an orphaned session may fork
while we kill; each round kills what the previous scan found, until a scan
finds nothing (a fork bomb outlasting this many rounds is left, and logged)."""
ORPHAN_KILL_ROUND_PAUSE_S = 0.01
"""Between rounds: lets SIGKILLed processes die before the next scan."""


class _Capture:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    async def drain(self, stream: trio.abc.ReceiveStream) -> None:
        while True:
            chunk = await stream.receive_some(_READ_CHUNK_BYTES)
            if not chunk:
                return
            room = self.limit - len(self.data)
            if len(chunk) > room:
                self.truncated = True
                chunk = chunk[: max(room, 0)]
            self.data += chunk


# ---------------------------------------------------------------------------
# Process identity and the orphan scan (Linux /proc)


def boot_id() -> str:
    """This boot's id: a start time means nothing across a reboot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, session id, start time in clock ticks since boot) of `pid`, or
    None if it is gone. The command name (field 2) may hold spaces and
    parentheses, so fields are counted from the last ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    # fields[0] is field 3 (state); field 6 (session) is fields[3]; field 22 (start time) is fields[19].
    try:
        return fields[0].decode(), int(fields[3]), int(fields[19])
    except (IndexError, ValueError):
        return None


def process_record(pid: int) -> dict | None:
    """What pins a job's session leader across a crash: pid (= session id),
    start time and boot id. None if /proc cannot tell (not Linux)."""
    stat = _stat(pid)
    if stat is None:
        return None
    return {"pid": pid, "start": stat[2], "boot": boot_id()}


def _sessions() -> dict[int, list[tuple[int, int]]]:
    """Every live (not zombie) process by session id: [(pid, start time)]."""
    out: dict[int, list[tuple[int, int]]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is None or stat[0] in ("Z", "X"):
            continue
        out.setdefault(stat[1], []).append((int(entry), stat[2]))
    return out


def orphan_sessions(records: list[dict], sessions: dict[int, list[tuple[int, int]]], boot: str) -> list[int]:
    """The session ids among `records` that still hold a process of the job
    they recorded. Pure: `sessions` is `_sessions()`'s map.

    A record from another boot: every process of it is gone. The leader
    alive with another start time: the pid was reused by an unrelated session
    leader, not ours. The leader gone but members left: theirs is still our
    session (Linux does not reuse a pid while a session or group bears its
    number), unless the whole session ended and a new process with that pid
    made a session of its own and died since, in the moments between the
    crash and this restart (not guarded; every member then started after our
    leader, which is all a start time can say)."""
    found = []
    for rec in records:
        sid, start = rec.get("pid"), rec.get("start")
        if type(sid) is not int or type(start) is not int or rec.get("boot") != boot or sid <= 1:
            continue
        members = sessions.get(sid, [])
        leader = [s for p, s in members if p == sid]
        if leader and leader[0] != start:
            continue
        if any(s >= start for _, s in members):
            found.append(sid)
    return found


def kill_orphan_sessions(records: list[dict]) -> list[int]:
    """SIGKILL every process of every recorded session still alive (see
    `orphan_sessions`); returns the sessions that had processes. Rescans
    until nothing is left, so a child forked meanwhile dies too."""
    boot = boot_id()
    hit: list[int] = []
    for _ in range(ORPHAN_KILL_ROUNDS_MAX):
        sessions = _sessions()
        live = orphan_sessions(records, sessions, boot)
        if not live:
            return hit
        for sid in live:
            if sid not in hit:
                hit.append(sid)
            for pid, _start in sessions[sid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        time.sleep(ORPHAN_KILL_ROUND_PAUSE_S)
    return hit


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def _stop(process: trio.Process, grace_s: float) -> None:
    """SIGTERM the job's process group, then SIGKILL after the grace period."""
    with trio.CancelScope(shield=True):
        _signal_group(process.pid, signal.SIGTERM)
        with trio.move_on_after(grace_s):
            await process.wait()
        _signal_group(process.pid, signal.SIGKILL)
        await process.wait()


async def _no_record(record: dict) -> None:
    return None


def _spawn_error(start: StartJob, exc: OSError) -> JobExited:
    return JobExited(start.job_id, start.attempt, None, "spawn-error", b"",
                     f"peerjobs: the job could not be started: {exc}\n".encode(errors="replace"))


async def run_job(
    start: StartJob,
    *,
    peer_id: str,
    workdir: str,
    output_bytes_max: int,
    kill_grace_s: float,
    spawned: Callable[[dict], Awaitable[None]] = _no_record,
    live: LiveOutput | None = None,
    late_s: float = 0.0,
) -> JobExited:
    """Run the job to its end. Cancellation kills the process group and
    propagates; the caller turns it into a `cancelled` exit. `spawned` gets
    the session leader's record (`process_record`) and must return once it is
    durable: the command runs only after that. `live`: capture into its
    captures (TAIL reads them while the job runs), not fresh ones. `late_s`:
    how long ago the core started the job (a sleep ends that much sooner:
    its runtime counts from the start, as the core's does)."""
    if start.spec.kind == "sleep":
        with trio.move_on_after(start.timeout_s) as scope:
            await sleep_precisely(start.spec.sleep_ms / 1000 - late_s)
        reason = "timeout" if scope.cancelled_caught else None
        return JobExited(start.job_id, start.attempt, None if reason else 0, reason)
    try:
        process, go_write = await _spawn(start, peer_id, workdir)
    except OSError as exc:
        return _spawn_error(start, exc)
    if live is not None:
        out, errs = live.stdout, live.stderr
    else:
        out, errs = _Capture(output_bytes_max), _Capture(output_bytes_max)
    reason = await _supervise(process, go_write, start, spawned, (out, errs), kill_grace_s)
    code = process.returncode
    if reason is None and code is not None and code < 0:
        reason = f"signal-{-code}"
    return JobExited(
        start.job_id,
        start.attempt,
        None if reason == "timeout" else code,
        reason,
        bytes(out.data),
        bytes(errs.data),
        out.truncated or errs.truncated,
    )


async def _spawn(start: StartJob, peer_id: str, workdir: str) -> tuple[trio.Process, int]:
    """The job's wrapper, a new session leader blocked on its go pipe:
    (the process, the pipe's write end). On OSError nothing is left open."""
    env = dict(os.environ)
    env.update(start.spec.env)  # names checked: never a PEERJOBS_ one (executor/core/spec.py)
    env.update(PEERJOBS_JOB_ID=start.job_id, PEERJOBS_ATTEMPT=str(start.attempt), PEERJOBS_PEER=peer_id)
    if parent_of(start.job_id) is not None:  # an array's element (a periodic job's run): its index
        env["PEERJOBS_ARRAY_INDEX"] = start.job_id.rpartition(".")[2]
    go_read = go_write = -1
    try:
        # A job may have removed the work directory (`cd .. && rm -rf work`):
        # recreate it. Anything else in its way fails this job, not the peer.
        os.makedirs(workdir, exist_ok=True)
        go_read, go_write = os.pipe()
        process = await trio.lowlevel.open_process(
            ["/bin/sh", "-c", _WRAPPER, "/bin/sh", start.spec.command],
            stdin=go_read,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # --cwd: relative to the work directory; one that does not exist
            # on this peer fails the run with the OS error (spawn-error).
            cwd=os.path.join(workdir, start.spec.cwd),
            env=env,
            start_new_session=True,
        )
    except OSError:
        for fd in (go_read, go_write):
            if fd >= 0:
                os.close(fd)
        raise
    os.close(go_read)
    return process, go_write


async def _supervise(process: trio.Process, go_write: int, start: StartJob,
                     spawned: Callable[[dict], Awaitable[None]], captures: tuple[_Capture, _Capture],
                     kill_grace_s: float) -> str | None:
    """Let the wrapper exec the command once its record is durable, then
    collect its output until it exits or its timeout ends it ("timeout"
    returned; else None). Cancellation stops its process group and
    propagates; the pipes are closed whatever happens."""
    out, errs = captures
    reason = None
    try:
        try:
            record = process_record(process.pid)
            if record is not None:
                # The wrapper is blocked on the pipe: it is alive and cannot
                # have run anything, so this is the right process's identity.
                await spawned(record)
            os.write(go_write, b"go\n")
        except BrokenPipeError:
            pass  # the wrapper is gone already (killed): its exit says so
        finally:
            os.close(go_write)
        with trio.move_on_after(start.timeout_s) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(out.drain, process.stdout)
                nursery.start_soon(errs.drain, process.stderr)
                await process.wait()
        if scope.cancelled_caught:
            reason = "timeout"
            await _stop(process, kill_grace_s)
        else:
            # The shell is gone; anything it left behind in its group goes too.
            _signal_group(process.pid, signal.SIGKILL)
    except BaseException:
        await _stop(process, kill_grace_s)
        raise
    finally:
        with trio.CancelScope(shield=True):
            for pipe in (process.stdout, process.stderr):
                await pipe.aclose()
    return reason
