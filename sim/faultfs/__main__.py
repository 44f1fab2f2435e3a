"""`python -m sim.faultfs mount BACKING MOUNTPOINT --control SOCKET [--names dir|any]`
serves the filesystem (what `FaultFS` starts);
`python -m sim.faultfs ctl SOCKET COMMAND [ARGS...]` sends one control command
(power-cut, sync-delay MS, budget BYTES|none, fail OP PATTERN, clear, sync,
drop-caches, stats, stop [flush|cut]) and prints the reply."""

from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["mount"]:
        from sim.faultfs.mount import main as mount_main

        return mount_main(argv[1:])
    if argv[:1] == ["ctl"] and len(argv) >= 3:
        from sim.faultfs import FaultFSControl, FaultFSError

        ctl = FaultFSControl(argv[1])
        try:
            print(json.dumps(ctl.request(" ".join(argv[2:])), sort_keys=True))
        except (OSError, FaultFSError) as e:
            print(e, file=sys.stderr)
            return 1
        finally:
            ctl.close()
        return 0
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
