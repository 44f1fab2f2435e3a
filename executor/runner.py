"""Runs one job: a `/bin/sh -c` subprocess, or an in-peer sleep. trio edge code.

A shell job runs in its own session (so its whole process group can be
signalled), with stdin from /dev/null, in the peer's work directory, with the
peer's environment plus PEERJOBS_JOB_ID, PEERJOBS_ATTEMPT and PEERJOBS_PEER.
stdout and stderr are each captured up to `output_bytes_max` bytes; the rest
is read and dropped (so the job never blocks on a full pipe) and the result
says truncated. When the job times out, is cancelled, or the peer shuts down,
its process group gets SIGTERM, then SIGKILL after `kill_grace_s`.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable

import trio

from executor.core import JobExited, StartJob

_READ_CHUNK_BYTES = 65536


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


def kill_orphan(pid: int, job_id: str, peer_id: str) -> bool:
    """Kill the process group of a job left running by a previous life of
    this peer (killed with -9, its jobs ran on as orphans), so that the new
    attempt does not run beside the old one. The pid is checked against the
    job's environment first, so a reused pid is never hit. Linux only."""
    marker = f"\0PEERJOBS_JOB_ID={job_id}\0".encode()
    peer = f"\0PEERJOBS_PEER={peer_id}\0".encode()
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = b"\0" + f.read() + b"\0"
    except OSError:
        return False
    if marker not in environ or peer not in environ:
        return False
    _signal_group(pid, signal.SIGKILL)
    return True


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


async def run_job(
    start: StartJob,
    *,
    peer_id: str,
    workdir: str,
    output_bytes_max: int,
    kill_grace_s: float,
    spawned: Callable[[int], None] = lambda pid: None,
) -> JobExited:
    """Run the job to its end. Cancellation kills the process group and
    propagates; the caller turns it into a `cancelled` exit."""
    spec = start.spec
    if spec.kind == "sleep":
        with trio.move_on_after(start.timeout_s) as scope:
            await trio.sleep(spec.sleep_ms / 1000)
        reason = "timeout" if scope.cancelled_caught else None
        return JobExited(start.job_id, start.attempt, None if reason else 0, reason)

    env = dict(os.environ)
    env.update(PEERJOBS_JOB_ID=start.job_id, PEERJOBS_ATTEMPT=str(start.attempt), PEERJOBS_PEER=peer_id)
    out, errs = _Capture(output_bytes_max), _Capture(output_bytes_max)
    process = await trio.lowlevel.open_process(
        ["/bin/sh", "-c", spec.command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=workdir,
        env=env,
        start_new_session=True,
    )
    spawned(process.pid)
    reason = None
    try:
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
