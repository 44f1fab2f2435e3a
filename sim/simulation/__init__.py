"""The deterministic simulation (`python -m sim simulate`), split by concern.

    base.py        what every part shares: heap entry kinds, bounds, Options, one simulated peer
    world.py       the Simulation: its seeded streams, the event heap and the main loop
    edge.py        one peer's edge, as executor/node.py: the core loop and the group-commit committer
    workload.py    the clients (SUBMIT, retries) and the sleep jobs, as executor/runner.py runs them
    network.py     one-way FIFO links, as executor/links.py: sends, drops, broken links, delivery
    faults.py      the nemeses: crashes and restarts, partitions, link breaks, pauses, slow disks, clock steps
    invariants.py  the safety checks after every step and durable write, and the liveness verdict
    jobmodel.py    --job-model: SUBMIT's options drawn (arrays too), the failing tries, the clocks' catch-up
    jobmodel_checks.py  --job-model's checks: at every start, after every step, the verdict at the end
    report.py      the measurements, the Report and its text form

sim/simulate.py holds the command line and the theory of operation.
"""
