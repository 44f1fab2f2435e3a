"""Trust: peer authentication, client tokens, the allow-list, the refusal to
listen beyond loopback unguarded, TLS, and the limits that keep strangers
from holding a peer's resources (slow-loris, connection floods, resets)."""

from __future__ import annotations

import socket
import struct
import subprocess
import time

import pytest
import trio
import trio.testing

from executor import settings as st
from executor.client import cli
from executor.client import Client, PeerError
from executor.config import AllowList, Config, Security
from executor.edge.node import Node
from gossip import auth, wire
from storage.store import MemoryStore
from tests.test_edge import MemoryNet, ask, states

SECRET = b"correct horse battery staple 42"
TOKEN = b"client-token-0123456789"


SecureNet = MemoryNet  # peers may each be given their own Security


async def read_until(stream, end: bytes, limit_s: float = 5) -> bytes:
    data = b""
    with trio.fail_after(limit_s):
        while not data.endswith(end):
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
    return data


# ---------------------------------------------------------------------------
# Peers


async def test_peers_with_the_secret_join_a_wrong_or_missing_secret_is_refused(autojump_clock, tmp_path):
    net = SecureNet(tmp_path)
    good = Security(secret=SECRET)
    async with trio.open_nursery() as nursery:
        n1 = await net.start(nursery, "n1", security=good)
        n2 = await net.start(nursery, "n2", seeds=["n1:1"], security=good)
        await net.start(nursery, "bad", seeds=["n1:1"], security=Security(secret=b"wrong secret, sixteen+"))
        await net.start(nursery, "none", seeds=["n1:1"])  # no secret at all
        await trio.sleep(3)
        assert states(n1) == {"n1": "alive", "n2": "alive"}
        assert states(n2) == {"n1": "alive", "n2": "alive"}
        assert n1.edge_stats["auth_refused"] >= 2 and n1.edge_stats["auth_ok"] >= 1
        assert n1.edge_stats["handler_errors"] == 0
        # Jobs still move between the authenticated peers.
        c = await net.client("n1")
        await c.send_all(b"".join(b"300\n" for _ in range(8)))
        ids = [line.split()[1] for line in (await read_until(c, b"\n" * 1)).decode().splitlines()]
        while len(ids) < 8:
            ids += [line.split()[1] for line in (await read_until(c, b"\n")).decode().splitlines()]
        for job in ids:
            assert (await ask(c, f"WAIT {job} 30")).startswith(f"OK {job} done")
        assert {n1.core.records[j].executor for j in ids} == {"n1", "n2"}
        nursery.cancel_scope.cancel()


async def test_unauthenticated_peer_learns_nothing_and_changes_nothing(autojump_clock, tmp_path):
    net = SecureNet(tmp_path)
    async with trio.open_nursery() as nursery:
        n1 = await net.start(nursery, "n1", security=Security(secret=SECRET))
        await trio.sleep(0.5)
        before = dict(net.stores["n1:1"].scan(b""))
        # A peer without the secret: hello, then straight to a frame (a Sync claiming membership).
        from gossip.membership import Sync

        s = await net.client("n1")
        msg = Sync("evil", "evil:1", 1, None, (), True)
        await s.send_all(wire.hello_line("evil", 1, "evil:1") + wire.frame(wire.encode(msg)))
        reply = await read_until(s, b"\n")
        assert reply == b"ERR auth-failed\n"  # nothing about the cluster
        await trio.sleep(1)
        assert "evil" not in states(n1)
        assert dict(net.stores["n1:1"].scan(b"")) == before
        # Silence after the hello: dropped after hello_timeout_s.
        s2 = await net.client("n1")
        await s2.send_all(wire.hello_line("evil", 1, "evil:1"))
        t0 = trio.current_time()
        assert (await read_until(s2, b"\n", limit_s=60)) == b"ERR auth-failed\n"
        assert trio.current_time() - t0 <= Config.local().hello_timeout_s + 0.5
        nursery.cancel_scope.cancel()


async def test_bad_frames_from_an_authenticated_peer_drop_the_link_not_the_peer(autojump_clock, tmp_path):
    from executor.core.messages import CancelJob, HandoffAck, StealRequest

    net = SecureNet(tmp_path)
    async with trio.open_nursery() as nursery:
        n1 = await net.start(nursery, "n1", security=Security(secret=SECRET))
        await trio.sleep(0.5)

        async def link():
            s = await net.client("n1")
            init = auth.Initiator(SECRET, wire.hello_line("n2", 1, "n2:1"), b"i" * 32)
            await s.send_all(init.start())
            proof = b""
            while not init.done:
                proof = init.feed(await s.receive_some(4096))
            await s.send_all(proof)
            return s, init

        before = dict(net.stores["n1:1"].scan(b""))
        cases = [
            wire.encode(StealRequest(1, "n3", 0, 0, 1, 1)),  # speaks for another peer
            wire.encode(CancelJob("no-dash")),  # a job id the core could not parse
            wire.encode(HandoffAck(424242, "n2", 0, 0, 1)),  # an ack for a transfer that never was: ignored, link stays
            b"\xa1\x01\x02",  # CBOR, but not a message
            wire.encode(HandoffAck(1, "n2", 0, 0, 1)).replace(b"n2", b"\x00\x01"),  # wrong-typed field
        ]
        for payload in cases:
            s, init = await link()
            await s.send_all(init.sealer.seal(payload))
            await trio.sleep(0.2)
        # A replayed frame (same bytes twice) breaks the MAC sequence.
        s, init = await link()
        frame = init.sealer.seal(wire.encode(HandoffAck(7, "n2", 0, 0, 1)))
        await s.send_all(frame + frame)
        await trio.sleep(0.2)
        assert n1.edge_stats["protocol_errors"] == 5  # all but the unknown ack
        assert n1.edge_stats["handler_errors"] == 0
        assert dict(net.stores["n1:1"].scan(b"")) == before
        c = await net.client("n1")
        assert (await ask(c, "PEERS")).startswith("OK")
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# Clients


async def test_client_token(autojump_clock, tmp_path):
    net = SecureNet(tmp_path)
    async with trio.open_nursery() as nursery:
        n1 = await net.start(nursery, "n1", security=Security(token=TOKEN))
        c = await net.client("n1")
        await c.send_all(b"SUBMIT echo hi\n")
        assert (await read_until(c, b"\n")).startswith(b"ERR auth-required")
        assert await c.receive_some(10) == b""  # closed
        c = await net.client("n1")
        await c.send_all(b"AUTH not-the-token\nPEERS\n")
        assert (await read_until(c, b"\n")).startswith(b"ERR auth-failed")
        c = await net.client("n1")
        assert await ask(c, "AUTH " + TOKEN.decode()) == "OK authenticated\n"
        assert (await ask(c, "7")).startswith("OK n1-1")
        # A peer hello without the secret cannot sidestep the token.
        p = await net.client("n1")
        await p.send_all(wire.hello_line("evil", 1, "evil:1"))
        assert (await read_until(p, b"\n")) == b"ERR auth-failed\n"
        assert n1.edge_stats["client_auth_refused"] == 2
        nursery.cancel_scope.cancel()


async def test_allow_list(autojump_clock, tmp_path):
    net = SecureNet(tmp_path)
    allow = AllowList.parse("# comment\nuptime\nmake -C /src *\n")
    async with trio.open_nursery() as nursery:
        await net.start(nursery, "n1", security=Security(allow=allow))
        c = await net.client("n1")
        assert (await ask(c, "SUBMIT uptime")).startswith("OK n1-")
        assert (await ask(c, "SUBMIT make -C /src test-unit")).startswith("OK n1-")
        for bad in ("uptime; id", "make -C /src x; rm -rf ~", "make -C /src $(id)", "id", "make -C /srcx"):
            assert (await ask(c, f"SUBMIT {bad}")).startswith("ERR not-allowed"), bad
        nursery.cancel_scope.cancel()


def test_allow_list_matching():
    allow = AllowList.parse("ls\necho *\n")
    assert allow.allows("ls") and allow.allows(" ls ") and not allow.allows("ls -la")
    assert allow.allows("echo hello world") and allow.allows("echo a=b,c@d:e/f%g+h")
    for bad in ("echo a; id", "echo `id`", "echo $HOME", "echo a | sh", "echo a > f", "echo 'x'", "echo *", "echo a\nid"):
        assert not allow.allows(bad), bad


# ---------------------------------------------------------------------------
# Starting a peer


def test_refuses_to_listen_beyond_loopback_unguarded(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(st.ENV_SECRET, raising=False)
    monkeypatch.delenv(st.ENV_TOKEN, raising=False)
    code = cli.main(["node", "--data", str(tmp_path / "d"), "--listen", "0.0.0.0:0"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "beyond loopback" in err and "--insecure" in err
    code = cli.main(["node", "--data", str(tmp_path / "d"), "--listen", "127.0.0.1:0", "--http", "0.0.0.0:0"])
    assert code == 2 and "dashboard" in capsys.readouterr().err
    # With a secret (from a file, or the environment), or --insecure, it would start.
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    for flags, env in ((["--secret-file", str(secret)], {}), (["--insecure"], {}), ([], {st.ENV_SECRET: SECRET.decode()})):
        resolved = st.resolve_node({"listen": "0.0.0.0:7001", **{k.lstrip("-").replace("-", "_"): v
                                    for k, v in zip(flags[::2], flags[1::2] or [True])}}, env=env)
        assert st.exposure_problem(resolved, st.load_security(resolved, env=env)) is None
    resolved = st.resolve_node({"listen": "10.1.2.3:7001"}, env={})
    assert st.exposure_problem(resolved, st.load_security(resolved, env={})) is not None
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    with pytest.raises(st.SettingsError, match="at least 16 bytes"):
        st.load_security(st.resolve_node({"secret_file": str(short)}, env={}), env={})


def test_real_peers_with_secret_token_and_allow_list(peers, tmp_path):
    secret, token, allow = tmp_path / "secret", tmp_path / "token", tmp_path / "allow"
    secret.write_bytes(SECRET + b"\n")
    token.write_bytes(TOKEN + b"\n")
    allow.write_text("echo *\n")
    for f in (secret, token):
        f.chmod(0o600)
    extra = ["--secret-file", str(secret), "--token-file", str(token), "--allow-commands", str(allow)]
    a = peers(name="a", extra=extra)
    a.start()
    b = peers(name="b", join=[a.addr], extra=extra)
    b.start()
    with pytest.raises(PeerError) as refused:
        with Client(a.addr) as c:
            c.peers()
    assert refused.value.code == "auth-required"
    with Client(a.addr, token=TOKEN.decode()) as c:
        deadline = time.monotonic() + 10
        while sum(" alive " in line for line in c.peers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sum(" alive " in line for line in c.peers()) == 2
        job = c.submit("echo secured")
        c.wait(job, timeout_s=10)
        assert c.result(job).stdout == b"secured\n"
        with pytest.raises(PeerError) as no:
            c.submit("id")
        assert no.value.code == "not-allowed"
    assert SECRET.decode() not in a.log() and TOKEN.decode() not in a.log()


# ---------------------------------------------------------------------------
# Limits, on real loopback sockets


async def _loopback_node(tmp_path, nursery, config: Config, security: Security | None = None) -> Node:
    node = Node(data_dir=str(tmp_path / "n1"), listen=("127.0.0.1", 0), slots=1, name="n1", config=config,
                store=MemoryStore(), security=security)
    await nursery.start(node.run)
    return node


async def _line(stream) -> bytes:
    return await read_until(stream, b"\n")


async def test_slow_loris_is_cut_off(tmp_path):
    cfg = Config.local(slow_sender_s=0.3, hello_timeout_s=0.3)
    async with trio.open_nursery() as nursery:
        node = await _loopback_node(tmp_path, nursery, cfg)
        port = node.bound_port
        t0 = trio.current_time()
        lorises = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        await lorises[0].send_all(b"SUBM")  # a first line that never ends
        await lorises[1].send_all(b"HELP\nSTAT")  # a later line that never ends
        await lorises[2].send_all(wire.HELLO_PREFIX)  # a peer hello that never ends
        replies = [await read_until(s, b"\n" if i != 1 else b"closing\n") for i, s in enumerate(lorises)]
        assert b"ERR slow-sender" in replies[0] and b"ERR slow-sender" in replies[1]
        assert replies[2].startswith(b"ERR slow-sender")
        assert trio.current_time() - t0 < 2
        # A peer link whose frame stalls halfway is closed too.
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(wire.hello_line("n9", 1, "n9:1") + struct.pack(">I", 100) + b"\x83")
        with trio.fail_after(2):
            while await s.receive_some(100):
                pass
        assert node.edge_stats["slow_sender"] >= 3
        good = await trio.open_tcp_stream("127.0.0.1", port)
        await good.send_all(b"PEERS\n")
        assert (await _line(good)).startswith(b"OK 1 peer")
        assert node.edge_stats["handler_errors"] == 0
        nursery.cancel_scope.cancel()


async def test_connection_flood_and_resets(tmp_path):
    cfg = Config.local(client_connections_max=20)
    async with trio.open_nursery() as nursery:
        node = await _loopback_node(tmp_path, nursery, cfg)
        port = node.bound_port
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(20)]
        for s in held:
            await s.send_all(b"HELP\n")
            await read_until(s, b"QUIT                                        close the connection\n")
        refused = 0
        for _ in range(30):
            extra = await trio.open_tcp_stream("127.0.0.1", port)
            await extra.send_all(b"HELP\n")  # a client: its first line says so
            if (await _line(extra)).startswith(b"ERR too-many-connections"):
                refused += 1
            await extra.aclose()
        assert refused == 30 and node.edge_stats["refused_connections"] == 30
        # Connections that reset mid-line (RST, not FIN) are contained.
        for s in held[:10]:
            await s.send_all(b"SUBMIT ech")
            s.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.socket.close()
        with trio.fail_after(5):
            while node.clients > 10:
                await trio.sleep(0.01)
        good = await trio.open_tcp_stream("127.0.0.1", port)
        await good.send_all(b"PEERS\n")
        assert (await _line(good)).startswith(b"OK 1 peer")
        assert node.edge_stats["handler_errors"] == 0
        nursery.cancel_scope.cancel()


class _FakeSock:
    def __init__(self, ip):
        self.ip = ip

    def getpeername(self):
        return (self.ip, 5555)


class _FromAddress(trio.abc.Stream):
    """A memory stream that reports a non-loopback source address."""

    def __init__(self, inner, ip):
        self.inner, self.socket = inner, _FakeSock(ip)

    async def send_all(self, data):
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self):
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None):
        return await self.inner.receive_some(max_bytes)

    async def aclose(self):
        await self.inner.aclose()


async def test_connections_per_source_address(autojump_clock, tmp_path):
    net = SecureNet(tmp_path, Config.local(client_connections_per_source_max=3))
    async with trio.open_nursery() as nursery:
        n1 = await net.start(nursery, "n1")
        streams = []
        for _ in range(4):
            client, server = trio.testing.memory_stream_pair()
            nursery.start_soon(n1.serve, _FromAddress(server, "192.0.2.7"))
            streams.append(client)
            await trio.sleep(0.01)  # accepted in this order
        await trio.sleep(0.1)
        assert (await _line(streams[3])).startswith(b"ERR too-many-connections")
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(n1.serve, _FromAddress(server, "192.0.2.8"))  # another address is served
        assert (await ask(client, "PEERS")).startswith("OK 1 peer")
        await streams[0].aclose()
        await trio.sleep(0.1)
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(n1.serve, _FromAddress(server, "192.0.2.7"))  # a slot came free
        assert (await ask(client, "PEERS")).startswith("OK 1 peer")
        nursery.cancel_scope.cancel()


async def test_reply_backpressure_and_slow_receiver(autojump_clock, tmp_path):
    """A client that pipelines and never reads its replies: the peer stops
    reading its requests once client_reply_bytes_max is owed, and cuts it off
    after slow_receiver_s."""
    net = SecureNet(tmp_path, Config.local(client_reply_bytes_max=2000, slow_receiver_s=5))
    async with trio.open_nursery() as nursery:
        n1 = await net.start(nursery, "n1")
        client, server = trio.testing.lockstep_stream_pair()  # a send blocks until the other side reads
        nursery.start_soon(n1.serve, server)
        sent = []

        async def flood():
            try:
                for _ in range(60):
                    await client.send_all(b"HELP\n")
                    sent.append(1)
            except trio.BrokenResourceError:
                pass  # cut off

        nursery.start_soon(flood)
        await trio.sleep(2)
        assert len(sent) < 10  # the peer stopped reading: ~2000 bytes of HELP replies are owed
        await trio.sleep(5)
        assert n1.edge_stats["slow_receiver"] == 1
        other = await net.client("n1")
        assert (await ask(other, "PEERS")).startswith("OK")
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# TLS


def _make_certs(tmp_path):
    d = tmp_path
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=d)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=peerjobs test CA")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "peer.key", "-out", "peer.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "peer.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "peer.pem", "-days", "2", "-extfile", "ext")
    return str(d / "peer.pem"), str(d / "peer.key"), str(d / "ca.pem")


def test_tls_for_clients_and_peers(peers, tmp_path):
    cert, key, ca = _make_certs(tmp_path)
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    extra = ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca, "--secret-file", str(secret)]
    a = peers(name="a", extra=extra)
    a.start()
    b = peers(name="b", join=[a.addr], extra=extra)
    b.start()
    ctx = st.client_tls_context(ca)
    with Client(b.addr, ssl_context=ctx) as c:
        deadline = time.monotonic() + 10
        while sum(" alive " in line for line in c.peers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sum(" alive " in line for line in c.peers()) == 2  # the peer link works over TLS
        job = c.submit("echo over tls")
        c.wait(job, timeout_s=10)
        assert c.result(job).stdout == b"over tls\n"
    # Plain text on a TLS port gets nowhere (and does not hurt the peer).
    with socket.create_connection(("127.0.0.1", a.port), timeout=5) as s:
        s.sendall(b"PEERS\n")
        s.settimeout(5)
        try:
            data = s.recv(100)
        except OSError:
            data = b""
        assert not data.startswith(b"OK")
    with Client(a.addr, ssl_context=ctx) as c:
        assert c.members()
