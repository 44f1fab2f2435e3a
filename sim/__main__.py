"""`python -m sim <command>`: the harnesses.

    python -m sim demo           three peers, a workload, a kill -9, and the check (sim/demo.py)
    python -m sim cluster ...    real peer processes under kill -9 / restart chaos (sim/cluster.py)
    python -m sim simulate ...   the deterministic simulation (sim/simulate.py)
    python -m sim bench ...      benchmarks (sim/bench.py)
    python -m sim partition ...  peers in network namespaces, links cut and healed (sim/netns.py; root)
    python -m sim fuzz ...       hostile input through every door of real peers (sim/fuzz.py)
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {"demo": "sim.demo", "cluster": "sim.cluster", "simulate": "sim.simulate", "bench": "sim.bench",
            "partition": "sim.netns", "fuzz": "sim.fuzz"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
