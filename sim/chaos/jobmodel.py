"""The job model in the chaos harness (`python -m sim cluster --job-model`,
issue 15): a mix of SUBMIT's options over tagged shell jobs, for the checker
(sim/checker.py's `JobOptions`) to judge after the chaos.

Each tag's options are drawn from its own seeded stream (the run's seed and
the tag), its dependencies among the latest jobs acknowledged when it is
first sent (any home, so most live on another); a submission sent again
(busy, a broken connection) is the same line. Every job prints its start
and end wall times (`s=`, `e=`, from `date`: every peer is on this machine,
so one clock) before its tag, which lets the checker order a dependent's
start after its dependencies' ends and a delayed job's start after its due
time:

* priority -3..5 (30%);
* `--retries 1-2 --backoff 0.1-0.5` (20%): the first try fails through a
  marker file under the run's work dir (the try that finds no marker makes
  it and exits 3; any later one, on any peer, finds it) — a retry is a new
  attempt of the same job, never a second job;
* every try fails (5%, `exit 4` after printing): the job must end failed, and
  its afterok dependents cancelled `dependency-failed`;
* `--delay 0.3-2` (15%);
* `--after` / `--after-any` 1-2 ids (30% of the jobs sent once some are acknowledged);
* `--env PJ_TAG=v<tag>-<word>` (20%): the job prints `env=$PJ_TAG`, so the
  checker sees the variable reached whichever peer ran it (the value differs
  per tag: a spec mixed up with another job's shows).
"""

from __future__ import annotations

import os
import random
import shlex

from sim.checker_jobmodel import JobOptions

_PRIORITY_SHARE, _PRIORITIES = 0.3, (-3, 5)
_RETRY_SHARE, _RETRIES, _BACKOFF_S = 0.2, (1, 2), (0.1, 0.5)
_FAIL_SHARE = 0.05
_DELAY_SHARE, _DELAY_S = 0.15, (0.3, 2.0)
_DEPENDENT_SHARE, _DEPENDENCIES_MAX, _AFTEROK_SHARE = 0.3, 2, 0.7
_RECENT = 30  # dependencies among the latest acknowledged jobs: many not final yet
_ENV_SHARE, _ENV_NAME = 0.2, "PJ_TAG"
# Arrays (`--array 0-B[%2]`, 2-4 elements, half capped), among the jobs with
# no other option: each element prints the array's tag and its times.
_ARRAY_SHARE, _ARRAY_MORE, _ARRAY_CAP = 0.08, (1, 3), 2


class ChaosJobModel:
    def __init__(self, seed: int, markers_dir: str) -> None:
        self.seed = seed
        self.markers = markers_dir
        os.makedirs(markers_dir, exist_ok=True)
        self.lines: dict[int, str] = {}
        self.options: dict[int, JobOptions] = {}
        self.acked_ids: list[str] = []

    def acked(self, job_id: str, tag: int | None = None) -> None:
        opts = self.options.get(tag)
        if opts is None or opts.array is None:  # (an array is no one's dependency here)
            self.acked_ids.append(job_id)

    def line(self, tag: int) -> str:
        """The SUBMIT line of `tag`, the same every time it is sent."""
        line = self.lines.get(tag)
        if line is None:
            line = self.lines[tag] = self._draw(tag)
        return line

    def _draw(self, tag: int) -> str:
        rng = random.Random(f"jobmodel-{self.seed}-{tag}")
        words: list[str] = []
        priority = rng.randint(*_PRIORITIES) if rng.random() < _PRIORITY_SHARE else 0
        if priority:
            words += ["--priority", str(priority)]
        retries, fails, body = 0, False, ""
        roll = rng.random()
        if roll < _RETRY_SHARE:
            retries = rng.randint(*_RETRIES)
            words += ["--retries", str(retries), "--backoff", f"{rng.uniform(*_BACKOFF_S):.2f}"]
            marker = shlex.quote(os.path.join(self.markers, f"t{tag}"))
            body = f"[ -e {marker} ] || {{ touch {marker}; exit 3; }}; "
        elif roll < _RETRY_SHARE + _FAIL_SHARE:
            fails = True
        delay = None
        if rng.random() < _DELAY_SHARE:
            delay = round(rng.uniform(*_DELAY_S), 2)
            words += ["--delay", f"{delay:g}"]
        after: list[str] = []
        after_any: list[str] = []
        if self.acked_ids and rng.random() < _DEPENDENT_SHARE:
            pool = self.acked_ids[-_RECENT:]
            for dep in rng.sample(pool, min(len(pool), rng.randint(1, _DEPENDENCIES_MAX))):
                (after if rng.random() < _AFTEROK_SHARE else after_any).append(dep)
        if after:
            words += ["--after", ",".join(after)]
        if after_any:
            words += ["--after-any", ",".join(after_any)]
        env = None
        if rng.random() < _ENV_SHARE:  # (drawn last: the draws above are as they were before it)
            env = f"v{tag}-{rng.randrange(10 ** 6)}"
            words += ["--env", f"{_ENV_NAME}={env}"]
            body = f"echo env=${_ENV_NAME}; {body}"
        array = None
        plain = not (words or body or fails)
        if rng.random() < _ARRAY_SHARE and plain:  # (drawn last, as env)
            array = (0, rng.randint(*_ARRAY_MORE), _ARRAY_CAP if rng.random() < 0.5 else 0)
            words += ["--array", f"{array[0]}-{array[1]}" + (f"%{array[2]}" if array[2] else "")]
        self.options[tag] = JobOptions(priority, retries, fails, delay, tuple(after), tuple(after_any), env, array)
        command = f"echo s=$(date +%s.%N); {body}echo e=$(date +%s.%N); echo {tag}" + ("; exit 4" if fails else "")
        return "SUBMIT " + " ".join(words + ["--", command])

    def summary(self) -> dict:
        opts = list(self.options.values())
        return {
            "priority": sum(1 for o in opts if o.priority),
            "retries": sum(1 for o in opts if o.retries),
            "fails": sum(1 for o in opts if o.fails),
            "delay": sum(1 for o in opts if o.delay_s is not None),
            "dependents": sum(1 for o in opts if o.after or o.after_any),
            "env": sum(1 for o in opts if o.env is not None),
            "arrays": sum(1 for o in opts if o.array is not None),
        }
