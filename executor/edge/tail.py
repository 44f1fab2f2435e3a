"""TAIL of a job running at this peer: its output as it is captured
(docs/protocol.md, TAIL). A mixin of `executor.edge.node.Node`.

The core answers TAIL for a job it runs here with `ReplyTail`; the edge
answers from the run's `LiveOutput`, registered when the start is carried
out (executor/edge/pipeline.py) and filled by the runner. `TAIL -f` is a
follower task that sends a frame of the output that is new since the last
one (looking every `tail_poll_s`), until the run ends, the client hangs up,
or `wait_max_s` runs out; the session holds the later replies behind it
(executor/edge/sessions.py). Nothing here is durable: a frame says what
this attempt wrote and how it ended, never the job's fate (the home's).
"""

from __future__ import annotations

import trio

from executor.core import JobExited, ReplyTail, protocol
from executor.core.protocol import ErrorCode
from executor.edge.replies import fill, fill_part
from executor.edge.runner import _Capture

_TAIL_POLL_FLOOR_S = 0.01
"""A `tail_poll_s` of 0 (a setting may say so) would make a TAIL -f
follower spin; it looks no more often than this."""


class LiveOutput:
    """A running job's output as it is captured, for `TAIL`: the node
    registers one per run when it starts the job (`Node.live_outputs`) and
    hands its captures to `run_job`, which fills them exactly as it would its
    own (the result is built from them as before). `exited` is set, and
    `ended` fires, once the run is over: a follower sends its last frame."""

    def __init__(self, output_bytes_max: int) -> None:
        self.stdout = _Capture(output_bytes_max)
        self.stderr = _Capture(output_bytes_max)
        self.exited: JobExited | None = None
        self.ended = trio.Event()

    def end(self, exited: JobExited) -> None:
        self.exited = exited
        self.ended.set()


class TailMixin:
    """`ReplyTail` carried out (`Node`)."""

    def _reply_tail(self, action: ReplyTail) -> None:
        """The output so far (one frame, as RESULT's), or with -f a follower
        that streams it until the run ends. Carried out after the batch that
        handled the TAIL; the run's output stays registered until its exit
        is handled and that batch's replies are out, so it is here."""
        client, slot = action.token
        live = self.live_outputs.get((action.job_id, action.attempt))
        if live is None:  # not reached: see `_ForgetLiveOutput` (executor/edge/pipeline.py)
            fill(client, slot, protocol.err(ErrorCode.NOT_FOUND, f"job {action.job_id} attempt {action.attempt} "
                                            f"has no output here any more; ask its home"))
            return
        if not action.follow:
            fill(client, slot, self._tail_frame(action, live, 0, 0, None)[0])
            return
        self.nursery.start_soon(self._follow_tail, action, live)

    def _tail_frame(self, action: ReplyTail, live: LiveOutput, sent_out: int, sent_err: int,
                    more: bool | None) -> tuple[bytes, int, int, bool]:
        """One frame of `live`'s output from (sent_out, sent_err) on, at most
        `output_bytes_max` bytes of it (stdout first): RESULT's framing, with
        `more=yes|no` when it is part of a stream. Once the run has ended
        and the frame holds the rest, the state is `exited` with its exit
        code or reason. (frame, stdout bytes in it, stderr bytes in it,
        whether it is a stream's last frame)."""
        exited = live.exited
        out, err = live.stdout.data, live.stderr.data
        truncated = live.stdout.truncated or live.stderr.truncated
        if exited is not None:
            # A run that could not start has its OS error in its exit only;
            # otherwise the exit's output is the captures' (a cancelled run's is
            # empty: the captures keep what it wrote). Both start the same.
            out = exited.stdout if len(exited.stdout) > len(out) else out
            err = exited.stderr if len(exited.stderr) > len(err) else err
            truncated = truncated or exited.truncated
        # A stream's frames are bounded; a snapshot is whole, as RESULT is.
        room = self.config.output_bytes_max if more is not None else len(out) + len(err)
        new_out = bytes(out[sent_out: sent_out + room])
        new_err = bytes(err[sent_err: sent_err + room - len(new_out)])
        rest = len(out) > sent_out + len(new_out) or len(err) > sent_err + len(new_err)
        final = exited is not None and not rest
        last = more is False and not rest
        fields = {
            "exit": exited.exit_code if final and exited.exit_code is not None else "-",
            "stdout": len(new_out), "stderr": len(new_err), "attempt": action.attempt,
            "executor": self.peer_id, "truncated": "yes" if truncated else "no",
            "reason": exited.reason if final else None,
            "more": None if more is None else ("no" if last else "yes"),
        }
        head = protocol.ok(f"{action.job_id} {'exited' if final else 'running'} {protocol.format_fields(fields)}")
        return head + new_out + new_err + b"\n", len(new_out), len(new_err), last

    async def _follow_tail(self, action: ReplyTail, live: LiveOutput) -> None:
        """TAIL -f: a first frame at once (the output so far, maybe none),
        then a frame whenever new output was captured (looked at every
        `tail_poll_s`, and only once the previous frame is written: a client
        that reads slowly gets fewer, larger frames, never a growing
        backlog), and a last one (`more=no`) when the run ends: `exited`
        with its exit code or reason. A hang-up (`slot.stop`) or `wait_max_s`
        ends the stream early, `running ... more=no`; a closed connection
        ends it without a word."""
        client, slot = action.token
        cfg = self.config
        deadline = trio.current_time() + cfg.wait_max_s
        sent_out = sent_err = 0
        first = True
        while not client.gone:
            ending = live.exited is not None or slot.stop or trio.current_time() >= deadline
            fresh = len(live.stdout.data) > sent_out or len(live.stderr.data) > sent_err
            if ending or first or (fresh and slot.data is None):
                frame, n, m, last = self._tail_frame(action, live, sent_out, sent_err, not ending)
                sent_out, sent_err, first = sent_out + n, sent_err + m, False
                if last:
                    fill(client, slot, frame)
                    return
                fill_part(client, slot, frame)
                if ending:
                    continue  # the rest, a frame at a time, then the last
            with trio.move_on_at(min(deadline, trio.current_time() + max(cfg.tail_poll_s, _TAIL_POLL_FLOOR_S))):
                await live.ended.wait()
