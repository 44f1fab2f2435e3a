"""The real-process chaos harness (`python -m sim cluster`), split by concern.

    procs.py     peer processes (spawn, kill -9, SIGSTOP, stop) and a cluster of them; talking to a peer
    workload.py  what happened (Record), the submissions to hand out (Workload), the clients, the PEERS watchers
    jobmodel.py  --job-model: each tag's SUBMIT options (priorities, retries, failures, delays, dependencies)
    drivers.py   the nemeses as they run: kill -9 / power cut, disk full, pause, wall-clock steps and WAIT probes
    collect.py   after the chaos: waiting for every acknowledged job, settling, collecting every outcome
    run.py       one run: the cluster, the watchers, the nemeses and the clients in their nurseries, then the check
    report.py    the report: figures, the nemeses' measurements and targets, the text form, the plot

sim/cluster.py holds the command line, and keeps the names other code imports from `sim.cluster`;
sim/netns.py (partitions) runs the same pieces in network namespaces.
"""
