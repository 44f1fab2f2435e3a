"""The partition harness (`python -m sim partition`, root), split by concern.

    net.py     network namespaces, the bridge and the veths: create, cut, heal, destroy; entering a namespace
    run.py     one run: peers in their namespaces, watchers inside them, the cutter, the clients; cleanup on every way out
    report.py  what each side saw of every cut (detection, recovery), the report and its text form

sim/netns.py holds the command line and keeps the names other code imports from `sim.netns`. The
peers, the clients and the checker are those of the chaos harness (sim/chaos/, sim/checker.py).
"""
