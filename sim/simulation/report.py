"""The measurements of a run (load imbalance sampled every 50 ms, message
counts, drops) and the Report they end in, with its text form.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gossip.membership import GOSSIP_MESSAGES
from sim.simulation.base import _SAMPLE, _SAMPLE_INTERVAL_S


@dataclass
class Report:
    ok: bool = True
    failure: str | None = None
    seed: int = 0
    command: str = ""
    peers: int = 0
    jobs: int = 0
    virtual_s: float = 0.0
    wall_s: float = 0.0
    fault_phase_s: float = 0.0
    converged_after_s: float | None = None
    liveness_bound_s: float = 0.0
    jobs_acked: int = 0
    jobs_final: int = 0
    jobs_done: int = 0
    starts: int = 0
    reexecutions: int = 0
    jobs_run_more_than_once: int = 0
    events: int = 0
    steps: int = 0
    messages: int = 0
    messages_per_peer_s: float = 0.0
    messages_per_peer_period: float = 0.0
    gossip_per_peer_period: float = 0.0
    steady_messages_per_peer_period: float = 0.0
    steady_gossip_per_peer_period: float = 0.0
    messages_by_type: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)
    crashes: int = 0
    partitions: int = 0
    breaks: int = 0
    pauses: int = 0
    slow_disks: int = 0
    clock_steps: int = 0
    deferred: int = 0  # entries that waited for a paused peer
    imbalance_fault_avg: float = 0.0
    imbalance_liveness_avg: float = 0.0
    imbalance_busy_avg: float = 0.0
    imbalance_max: int = 0
    syncs: int = 0
    submit_retries: int = 0
    trace_hash: str = ""
    wire: bool = True
    job_model: dict | None = None  # with --job-model: what its jobs did (sim/simulation/jobmodel.py)


class MeasureMixin:
    """Sampling during the run, and the report at its end."""

    def _sample(self) -> None:
        loads = [len(p.core.queue) + len(p.core.running) for p in self.peers if p.up]
        if loads:
            spread = max(loads) - min(loads)
            self.imbalance.append((self.fault_phase, spread, sum(loads) > 0))
        self._push(self.now + _SAMPLE_INTERVAL_S, _SAMPLE)

    def _finish_report(self) -> None:
        r, opts = self.report, self.opts
        r.virtual_s = self.now
        r.fault_phase_s = min(opts.duration_s, self.now)
        r.liveness_bound_s = opts.liveness_s
        if self.converged_at is not None:
            r.converged_after_s = self.converged_at - opts.duration_s
        r.jobs_acked = len(self.acked_job)  # submissions (an array's elements are acknowledged with it)
        r.jobs_final = self._model_jobs_final() if opts.job_model else len(self.final)
        r.jobs_run_more_than_once = sum(1 for c in self.starts_of.values() if c > 1)
        if self.now > 0 and self.peers:
            r.messages_per_peer_s = r.messages / len(self.peers) / self.now
            period = self.config.gossip.probe_interval_s
            r.messages_per_peer_period = r.messages_per_peer_s * period
            gossip_names = {t.__name__ for t in GOSSIP_MESSAGES}
            gossip_msgs = sum(v for k, v in self.types.items() if k in gossip_names)
            r.gossip_per_peer_period = gossip_msgs / len(self.peers) / self.now * period
        steady_s = min(self.now, opts.duration_s) - self.steady_from
        if steady_s > 0 and self.peers:
            per = self.config.gossip.probe_interval_s / len(self.peers) / steady_s
            r.steady_messages_per_peer_period = self.steady_messages * per
            r.steady_gossip_per_peer_period = self.steady_gossip * per
        r.messages_by_type = dict(sorted(self.types.items()))
        r.dropped = dict(sorted(self.dropped.items()))

        def avg(xs):
            return sum(xs) / len(xs) if xs else 0.0

        r.imbalance_fault_avg = avg([s for f, s, _ in self.imbalance if f])
        r.imbalance_liveness_avg = avg([s for f, s, _ in self.imbalance if not f])
        r.imbalance_busy_avg = avg([s for _, s, busy in self.imbalance if busy])
        r.imbalance_max = max((s for _, s, _ in self.imbalance), default=0)
        r.trace_hash = self.hash.hexdigest() if opts.hash_trace else ""
        if opts.job_model:
            r.job_model = dict(self.model)


def format_report(r: Report) -> str:
    conv = f"{r.converged_after_s:.2f}" if r.converged_after_s is not None else "-"
    lines = [
        f"seed {r.seed}: {'OK' if r.ok else 'FAILED: ' + str(r.failure)}",
        f"  peers {r.peers}, jobs {r.jobs} (acked {r.jobs_acked}, final {r.jobs_final}, done {r.jobs_done})",
        f"  virtual {r.virtual_s:.2f} s (faults {r.fault_phase_s:g} s, converged {conv} s after, bound "
        f"{r.liveness_bound_s:g} s); wall {r.wall_s:.2f} s",
        f"  faults: {r.crashes} crashes, {r.partitions} partitions, {r.breaks} link breaks, {r.pauses} pauses "
        f"({r.deferred} entries waited), {r.slow_disks} slow disks, {r.clock_steps} wall-clock steps",
        f"  starts {r.starts}, re-executions (attempt > 1) {r.reexecutions}, "
        f"jobs run more than once {r.jobs_run_more_than_once}",
        f"  events {r.events}, core steps {r.steps}, syncs {r.syncs}, submit retries {r.submit_retries}",
        f"  messages {r.messages}: {r.messages_per_peer_s:.1f}/peer/s, {r.messages_per_peer_period:.2f}/peer/period "
        f"(gossip {r.gossip_per_peer_period:.2f}); second half of the fault phase: "
        f"{r.steady_messages_per_peer_period:.2f}/peer/period (gossip {r.steady_gossip_per_peer_period:.2f})",
        f"  dropped {r.dropped}",
        f"  imbalance (max-min of queued+running, alive peers): fault phase avg {r.imbalance_fault_avg:.2f}, "
        f"liveness avg {r.imbalance_liveness_avg:.2f}, while busy {r.imbalance_busy_avg:.2f}, max {r.imbalance_max}",
        f"  wire codec {'on' if r.wire else 'off'}; trace {r.trace_hash}",
    ]
    if r.job_model is not None:
        lines.append("  job model: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in r.job_model.items()))
    if not r.ok:
        lines.append(f"  replay: {r.command}")
    return "\n".join(lines)
