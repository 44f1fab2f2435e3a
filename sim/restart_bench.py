"""`python -m sim bench restart`: how fast a peer with a long queue comes
back after kill -9, and what the queue costs in memory (issue 12).

One peer, one slot, one `sleep 600` running, and `--jobs` (100,000) queued
`SUBMIT true` behind it. Figures, each printed:

* bytes per queued job: (RSS with the queue - RSS of the empty peer) / jobs;
* serving after the restart: from spawning the process to `STATUS` of the
  newest job answered (the peer is useful, not merely listening);
* RSS after the restart over RSS before the kill (both with the full queue).

Targets: serving within 1 s, RSS after <= 1.2 x before, <= 512 bytes a job.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import trio

from executor.client import AsyncClient
from sim.bench import peer_processes


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def _fill(addr: str, jobs: int, batch: int = 1000) -> str:
    """`sleep 600`, then `jobs` x `SUBMIT true`, pipelined; the newest id."""
    async with AsyncClient(addr, timeout_s=120) as client:
        (await client.request("SUBMIT sleep 600")).check()
        newest = ""
        for start in range(0, jobs, batch):
            count = min(batch, jobs - start)
            await client.send_lines(["SUBMIT true"] * count)
            for _ in range(count):
                newest = (await client.read()).check().text
        return newest


def _ask_status(port: int, job_id: str, timeout_s: float) -> float:
    """Seconds until `STATUS job_id` is answered OK, polling from now."""
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
                s.sendall(f"STATUS {job_id}\n".encode())
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if data.startswith(b"OK "):
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"STATUS {job_id} not answered within {timeout_s} s")


def bench_restart(args) -> dict:
    with peer_processes(1, slots=1) as (addrs, procs):
        proc = procs[0]
        time.sleep(0.5)
        empty = rss_bytes(proc.pid)
        t0 = time.monotonic()
        newest = trio.run(_fill, addrs[0], args.jobs)
        fill_s = time.monotonic() - t0
        time.sleep(1.0)  # let the peer settle (gossip, the committer)
        before = rss_bytes(proc.pid)
        proc.kill()
        proc.wait()
        port = proc.port
        spawned = time.monotonic()
        # Spawn without waiting for the port: the clock runs from the exec.
        with open(proc.log_path, "ab") as log:
            again = subprocess.Popen(proc.args, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                     stdout=log, stderr=log)
        again.log_path, again.port = proc.log_path, port
        procs[0] = again
        _ask_status(port, newest, timeout_s=60)
        serving_s = time.monotonic() - spawned
        time.sleep(1.0)
        after = rss_bytes(again.pid)
    result = {
        "jobs": args.jobs,
        "fill_s": round(fill_s, 2),
        "rss_empty_mib": round(empty / 2**20, 1),
        "rss_before_mib": round(before / 2**20, 1),
        "rss_after_mib": round(after / 2**20, 1),
        "bytes_per_queued_job": round((before - empty) / args.jobs),
        "serving_after_restart_s": round(serving_s, 3),
        "rss_after_over_before": round(after / before, 2),
    }
    print(f"{args.jobs} queued jobs behind one `sleep 600`, one slot (filled in {fill_s:.1f} s)")
    print(f"  bytes per queued job       {result['bytes_per_queued_job']:>8}   (target <= 512)")
    print(f"  serving after kill -9      {serving_s:>8.3f} s (target <= 1 s; spawn to STATUS of the newest job)")
    print(f"  RSS after / before         {result['rss_after_over_before']:>8.2f}   (target <= 1.2; "
          f"{result['rss_before_mib']} -> {result['rss_after_mib']} MiB, empty {result['rss_empty_mib']} MiB)")
    return result

