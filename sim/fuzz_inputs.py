"""The fuzzer's inputs (sim/fuzz.py): seeded generators of hostile text
lines, peer frames and HTTP requests, with the numbers and control
characters that found the hostile-input cases (digits by the thousand,
exponents, unicode digits, CR/LF/NUL and friends). One `random.Random`
drives everything, so a seed replays; `_exchange` sends one, `Tally` counts
what came of them."""

from __future__ import annotations

import collections
import dataclasses
import enum
import random
import types
import typing
from urllib.parse import quote

import cbor2
import trio

from gossip import wire

IO_TIMEOUT_S = 5.0
"""Longest one input may take (connect, send, read to EOF); past it the input
is abandoned and counted as `timeouts` (a peer that hangs shows as that)."""

_DIGITS_OTHER = "٣۳३০੩૩୩௩౩೩൩๓໓༣၃០᠓０²³¹½"
_CONTROL = [chr(c) for c in range(0x20)] + ["\x7f", "\x85", "\u2028", "\u2029"]
_PRINTABLE = "abcxyz019 -_.:/=%+@,;&|$'\"`\\()[]{}<>*?!#~^é✓"
_VERBS = ("STATUS ", "WAIT ", "RESULT ", "CANCEL ", "r", "r ")

# ---------------------------------------------------------------------------
# Generation (seeded: one random.Random drives everything)


class Gen:
    def __init__(self, rng: random.Random, pwned: str = "/nonexistent/pwned") -> None:
        """`pwned`: the file a smuggled `SUBMIT touch` would create (it must never exist)."""
        self.rng = rng
        self.pwned = pwned

    def number(self) -> str:
        r = self.rng
        kind = r.randrange(8)
        if kind == 0:
            return "9" * r.choice([20, 400, 4300, 4301, 5000, r.randrange(1, 20_000)])
        if kind == 1:
            return r.choice(["1e999", "-1e999", "1e-999", "1e+06", "nan", "-nan", "inf", "-inf", "Infinity", "+5",
                             "-0", "0", "0" * 40 + "1", "1_000", "0x10", ".", "1.", "1e", "1e+", "٣", "²"])
        if kind == 2:
            return "".join(r.choice(_DIGITS_OTHER + "0123456789.eE+-_") for _ in range(r.randrange(1, 12)))
        if kind == 3:
            return str(r.randrange(-(2**80), 2**80))
        if kind == 4:
            return f"{r.choice(['', '-', '+'])}{r.randrange(10**6)}e{r.choice(['', '-', '+'])}{r.randrange(10**5)}"
        return str(r.randrange(-5, 10**r.randrange(1, 25)))

    def text(self, n_max: int = 8) -> str:
        r = self.rng
        pool = (_CONTROL, _PRINTABLE, _DIGITS_OTHER)
        return "".join(r.choice(r.choice(pool)) for _ in range(r.randrange(n_max + 1)))

    def job_id(self) -> str:
        r = self.rng
        kind = r.randrange(5)
        if kind == 0:
            return "a1-" + self.number()
        if kind == 1:
            return r.choice(["n1", "a1", "x", "my-host.7001", ""]) + "-" + self.text()
        if kind == 2:
            return r.choice(["n1-1", "n1-" + "9" * 18, "n1-" + "9" * 19, "-1", "n1-", "n1--1", "a1-١٢"])
        if kind == 3:
            return self.text(20)
        return "fz-" + str(r.randrange(10**r.randrange(1, 30)))

    # --- the text port

    def text_line(self) -> bytes:
        r = self.rng
        kind = r.randrange(9)
        if kind == 0:
            # Bare numbers: only ones that are not a valid sleep (a valid one
            # would queue a sleep of up to a day and hold a slot).
            line = r.choice(["9" * r.randrange(20, 6000), "1e999", "٣", "-5", "+5", "0x10", "1_0", "9" * 4301])
        elif kind == 1:
            line = r.choice(_VERBS) + self.job_id()
        elif kind == 2:
            line = "LIST " + self.number()
        elif kind == 3:
            line = f"WAIT {self.job_id()} {self.number()}"
        elif kind == 4:
            line = f"SUBMIT --timeout {self.number()} true"
        elif kind == 5:
            # A command that is harmless whatever the fuzz text inside the
            # quotes (a single-quoted word is literal to sh).
            line = "SUBMIT printf %s '" + self.text().replace("'", "") + "'"
        elif kind == 6:
            line = r.choice(["PEERS", "HELP", "STATS", "LIST", "AUTH", "AUTH x", "FROB", ""]) + self.text(3)
        elif kind == 7:
            return bytes(r.randrange(256) for _ in range(r.randrange(1, 64))).replace(b"\n", b" ")
        else:
            line = "x" * r.choice([70_000, 200_000])  # past line_bytes_max
        # One line: a LF inside would start another line of whatever follows,
        # e.g. a valid bare number, a sleep of hours that holds a slot.
        return line.replace("\n", " ").encode("utf-8", "surrogatepass")

    def text_payload(self, lines: int) -> bytes:
        body = b"".join(self.text_line() + self.rng.choice([b"\n", b"\r\n"]) for _ in range(lines))
        if body.startswith(b"PEERJOBS"):
            body = b" " + body  # the text door, not the peer door
        return body

    # --- the peer port

    def hello(self, peer_id: str) -> bytes:
        r = self.rng
        if r.randrange(4) == 0:  # a bad one
            return wire.HELLO_PREFIX + r.choice([
                b"1 x 1 127.0.0.1:9", b"9" * 300 + b" x 1 127.0.0.1:9", b"1 x " + b"9" * 400 + b" 127.0.0.1:9",
                b"1 x 1 127.0.0.1:99999", b"1 \xff 1 127.0.0.1:9", b"1 x\r1 127.0.0.1:9", b"1 ",
                self.text(40).encode("utf-8", "surrogatepass")]) + r.choice([b"\n", b"", b"\r\n"])
        return wire.hello_line(peer_id, 1, "127.0.0.1:9")

    def frames(self, peer_id: str) -> bytes:
        r = self.rng
        out = []
        for _ in range(r.randrange(1, 5)):
            kind = r.randrange(6)
            if kind == 0:
                out.append(bytes(r.randrange(256) for _ in range(r.randrange(1, 200))))
            elif kind == 1:
                out.append(r.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff" + b"x" * 10]))
            elif kind == 2:
                out.append(wire.frame(cbor2.dumps(self._cbor())))
            elif kind == 3:
                tags = list(wire.registered_tags())
                out.append(wire.frame(cbor2.dumps([wire.PROTOCOL_VERSION, r.choice(tags), self._cbor()])))
            else:
                payload = self._message(peer_id)
                if payload is not None:
                    out.append(wire.frame(payload))
        return b"".join(out)

    def _cbor(self, depth: int = 0):
        r = self.rng
        kind = r.randrange(8 if depth < 3 else 5)
        if kind == 0:
            return r.randrange(-(2**70), 2**70)
        if kind == 1:
            return r.choice([float("nan"), float("inf"), -1.5, 1e308])
        if kind == 2:
            return self.text(12)
        if kind == 3:
            return bytes(r.randrange(256) for _ in range(r.randrange(8)))
        if kind == 4:
            return r.choice([None, True, False])
        if kind == 5:
            return [self._cbor(depth + 1) for _ in range(r.randrange(4))]
        if kind == 6:
            return {self.text(3): self._cbor(depth + 1) for _ in range(r.randrange(3))}
        return cbor2.CBORTag(r.randrange(1, 300), self._cbor(depth + 1))

    def _message(self, peer_id: str) -> bytes | None:
        """A well-typed message with hostile values, `peer_id` as its sender."""
        classes = list(wire.registered_tags().values())
        cls = self.rng.choice(classes)
        try:
            return wire.encode(self._value(cls, "", 0, peer_id))
        except (TypeError, ValueError, OverflowError):
            return None

    def _value(self, annotation, name: str, depth: int, peer_id: str):
        r = self.rng
        if annotation is int:
            if name == "sleep_ms":
                return r.choice([-1, 10**20, 5])  # never a long valid sleep: it would hold a slot
            return r.choice([0, 1, -1, 2**63, -(2**64), 10**5000, r.randrange(10)])
        if annotation is float:
            return r.choice([float("nan"), float("inf"), -1.0, 1e308, 0.5])
        if annotation is str:
            if name == "command":  # a fuzzed command never reaches a shell: hostile, or `true`
                return r.choice(["true", "sleep 0.3; echo a\rb", "a\nb", "x\x00y", "\x1b[2J", "x" * 20_000])
            if name in ("thief", "sender", "receiver", "executor", "auditor", "holder", "from_id", "id"):
                return peer_id if r.randrange(2) else self.text(6)
            if name in ("job_id", "job_ids", "missing"):
                return self.job_id()
            if name in ("addr", "from_addr", "target_addr"):
                return r.choice(["127.0.0.1:9", "127.0.0.1:" + "9" * 5000, self.text(10)])
            return self.text(10)
        if annotation is bytes:
            return bytes(r.randrange(256) for _ in range(r.randrange(16)))
        if annotation is bool:
            return r.random() < 0.5
        if annotation is None or annotation is type(None):
            return None
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            return r.choice(list(annotation))
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            if depth > 2:
                raise ValueError("too deep")
            hints = typing.get_type_hints(annotation)
            return annotation(*[self._value(hints[f.name], f.name, depth + 1, peer_id)
                                for f in dataclasses.fields(annotation)])
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is typing.Union or origin is types.UnionType:
            return self._value(r.choice(args), name, depth, peer_id)
        if origin in (tuple, list):
            items = [self._value(args[0], name, depth + 1, peer_id) for _ in range(r.randrange(3))]
            return tuple(items) if origin is tuple else items
        if origin is dict:
            return {self.text(3): self._value(args[1], name, depth + 1, peer_id) for _ in range(r.randrange(3))}
        return None

    # --- the HTTP port

    def http_request(self, token: str | None) -> bytes:
        r = self.rng
        kind = r.randrange(6)
        if kind == 0:
            smuggled = r.choice(["%0A", "%0D%0A", "%0D", "%250A", "%00"])
            touch = f"SUBMIT%20touch%20{quote(self.pwned)}"
            target = f"/api/jobs/x{smuggled}{touch}" + r.choice(["", f"{smuggled}AUTH%20{token or 'x'}{smuggled}{touch}"])
        elif kind == 1:
            target = "/api/jobs/" + quote(self.job_id(), safe="")
        elif kind == 2:
            target = "/api/jobs?limit=" + quote(self.number(), safe="") + r.choice(["", "&state=" + quote(self.text())])
        elif kind == 3:
            target = "/api/jobs?" + "&".join(f"k{i}=v" for i in range(r.randrange(60)))
        elif kind == 4:
            target = r.choice(["/", "/metrics", "/healthz", "/api/cluster", "/api/history", "/api/jobs", "/nothing",
                               "/api/" + quote(self.text(), safe="")])
        else:
            target = "/api/jobs/" + quote(self.text(30), safe="/%")
        auth = r.choice([b"", b"Authorization: Bearer x\r\n", b"Authorization: \xff\r\n",
                         f"Authorization: Bearer {token}\r\n".encode() if token else b""])
        return b"GET " + target.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + b"Connection: close\r\n\r\n"


# ---------------------------------------------------------------------------
# Sending (each input bounded by IO_TIMEOUT_S)


# ---------------------------------------------------------------------------
# Sending one input, and counting what came of it


async def _exchange(host: str, port: int, payload: bytes, pieces: int, rng: random.Random) -> bytes | None:
    """Send `payload` cut into `pieces`, close our side, read to EOF (bounded).
    The reply bytes, or None if the input timed out."""
    cuts = sorted(rng.randrange(len(payload) + 1) for _ in range(pieces - 1))
    with trio.move_on_after(IO_TIMEOUT_S):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            return b""  # refused: the peer is down (the health check after the batch says so)
        reply = bytearray()
        try:
            last = 0
            for cut in cuts + [len(payload)]:
                if cut > last:
                    await stream.send_all(payload[last:cut])
                last = cut
            await stream.send_eof()
            while len(reply) < 1 << 22:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                reply += chunk
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await stream.aclose()
        return bytes(reply)
    return None


@dataclasses.dataclass
class Tally:
    inputs: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    http_status: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    timeouts: int = 0
    text_lines: int = 0
    text_unanswered: int = 0
    http_5xx: int = 0
    http_submits: int = 0
    bad_commands_stored: int = 0
    auth_bypassed: int = 0
    http_unauthorized_answered: int = 0
    crashes: int = 0
    restarts: int = 0
    health_failures: list = dataclasses.field(default_factory=list)
