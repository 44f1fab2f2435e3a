"""The Prometheus side of a peer's HTTP port: `/metrics`.

Apart from executor/edge/http.py (routes, the JSON API, the dashboard)
because it is a concern of its own: which counters of `node.statistics()`
become which metric families, read fresh on every scrape, plus the
group-commit histograms the node feeds after each synced batch. One
registry per peer, so tests may run several peers in one process.
"""

from __future__ import annotations

import collections

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_JOB_COUNTERS = ("submitted", "finished", "failed", "cancelled", "started", "reexecuted", "reissued",
                 "busy_rejections", "results_duplicate")
_MEMBERSHIP_EVENTS = ("declared_dead", "refutations", "rejoins", "members_evicted", "members_refused",
                      "pauses_detected", "probes_failed")


class NodeCollector:
    """Reads the peer's counters on every scrape (nothing is copied in between)."""

    def __init__(self, node) -> None:
        self.node = node

    def collect(self):
        node = self.node
        if node.core is None:
            return
        stats = node.statistics()
        yield InfoMetricFamily("peerjobs_peer", "This peer", value={
            "peer": node.peer_id, "addr": node.addr, "incarnation": str(stats["incarnation"])})
        for name in _JOB_COUNTERS:
            c = CounterMetricFamily(f"peerjobs_jobs_{name}", f"Jobs {name.replace('_', ' ')} (counted at this peer)")
            c.add_metric([], stats.get(f"jobs_{name}", 0))
            yield c
        steals = CounterMetricFamily("peerjobs_steals", "Jobs moved by work stealing / handoff",
                                     labels=["direction"])
        steals.add_metric(["in"], stats["jobs_steals_in"])
        steals.add_metric(["out"], stats["jobs_steals_out"])
        yield steals
        batches = CounterMetricFamily("peerjobs_commit_batches", "Group commits (synced LevelDB batches)")
        batches.add_metric([], stats["synced_batches"])
        yield batches
        for name, key, doc in (
            ("queue_length", "queued", "Jobs queued at this peer"),
            ("running_jobs", "running", "Jobs running at this peer"),
            ("slots", "slots", "Jobs this peer runs at once"),
            ("records", "records", "Job records kept at this peer (its home jobs)"),
            ("outbox", "outbox", "Results not yet acknowledged by their home"),
            ("handoffs_pending", "lends", "Handoffs sent and not yet acknowledged"),
            ("client_connections", "clients", "Open client connections"),
            ("incarnation", "incarnation", "This peer's incarnation (restarts)"),
        ):
            g = GaugeMetricFamily(f"peerjobs_{name}", doc)
            g.add_metric([], stats[key])
            yield g
        members = GaugeMetricFamily("peerjobs_members", "Members of the cluster by state", labels=["state"])
        counts = collections.Counter(m.state.value for m in node.core.members())
        for state in ("alive", "suspect", "dead"):
            members.add_metric([state], counts.get(state, 0))
        yield members
        events = CounterMetricFamily("peerjobs_membership_changes", "Membership events seen by this peer",
                                     labels=["event"])
        for name in _MEMBERSHIP_EVENTS:
            events.add_metric([name], stats.get(f"gossip_{name}", 0))
        yield events
        msgs = CounterMetricFamily("peerjobs_gossip_messages", "Membership messages", labels=["direction", "type"])
        for key, value in stats.items():
            for direction in ("sent", "received"):
                if key.startswith(f"gossip_{direction}_"):
                    msgs.add_metric([direction, key[len(f"gossip_{direction}_"):]], value)
        yield msgs
        links = CounterMetricFamily("peerjobs_link_events", "Peer link counters (frames, bytes, drops)",
                                    labels=["event"])
        for key, value in stats.items():
            if key.startswith("link_"):
                links.add_metric([key[5:]], value)
        yield links


class Metrics:
    """One registry per peer (so that tests may run several in one process)."""

    def __init__(self, node) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(NodeCollector(node))
        self.commit_writes = Histogram(
            "peerjobs_commit_batch_writes", "Writes in one synced batch (group commit size)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096, 16384, 65536), registry=self.registry)
        self.commit_seconds = Histogram(
            "peerjobs_commit_seconds", "Time to write and fsync one batch",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry)

    def observe_commit(self, writes: int, seconds: float) -> None:
        self.commit_writes.observe(writes)
        self.commit_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
