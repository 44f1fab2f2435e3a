"""Trust settings of `peerjobs node` (docs/security.md): the cluster secret
and client token files, the SUBMIT allow-list, TLS contexts, and the check
that refuses to listen beyond loopback unguarded.

Apart from executor/settings.py (where values come from) because this is
what the node does with them once resolved: it reads files with secrets
in them and decides whether the peer may start at all. `executor.settings`
re-exports every name.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
from typing import TYPE_CHECKING

from executor.config import AllowList, Security
from executor.settings_values import (
    ENV_SECRET,
    ENV_TOKEN,
    SettingsError,
    parse_hostport,
)

if TYPE_CHECKING:
    from executor.settings import NodeSettings

def _read_secret_file(path: str, what: str, warnings: list[str]) -> bytes:
    try:
        st_ = os.stat(path)
        with open(path, "rb") as f:
            value = f.read(65536).strip()
    except OSError as exc:
        raise SettingsError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from None
    if st_.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(f"the {what} file {path} is readable by other users (chmod 600 it)")
    return value


def load_security(resolved: NodeSettings, env: dict[str, str] | None = None,
                  warnings: list[str] | None = None) -> Security:
    """The secret, token, allow-list and TLS contexts of `peerjobs node`."""
    env = dict(os.environ) if env is None else env
    warnings = [] if warnings is None else warnings
    secret = token = None
    if resolved.value("secret_file"):
        secret = _read_secret_file(resolved.value("secret_file"), "secret", warnings)
    elif env.get(ENV_SECRET):
        secret = env[ENV_SECRET].strip().encode()
    if secret is not None and len(secret) < 16:
        raise SettingsError("the cluster secret must be at least 16 bytes (e.g. `head -c 32 /dev/urandom | "
                            "base64 > secret`)")
    if resolved.value("token_file"):
        token = _read_secret_file(resolved.value("token_file"), "token", warnings)
    elif env.get(ENV_TOKEN):
        token = env[ENV_TOKEN].strip().encode()
    if token is not None and (len(token) < 16 or not token.isascii() or any(c in token for c in b" \t\r\n")):
        raise SettingsError("the client token must be at least 16 printable ASCII bytes without spaces")
    allow = None
    if resolved.value("allow_commands"):
        path = resolved.value("allow_commands")
        try:
            with open(path, encoding="utf-8") as f:
                allow = AllowList.parse(f.read())
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"cannot read the allow-list {path}: {getattr(exc, 'strerror', None) or exc}") from None
    server_ssl = client_ssl = None
    cert, key, ca = resolved.value("tls_cert"), resolved.value("tls_key"), resolved.value("tls_ca")
    if bool(cert) != bool(key):
        raise SettingsError("--tls-cert and --tls-key go together")
    if ca and not cert:
        raise SettingsError("--tls-ca needs --tls-cert and --tls-key")
    if cert:
        try:
            server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ssl.load_cert_chain(cert, key)
            client_ssl = client_tls_context(ca)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"TLS: {exc}") from None
    return Security(secret=secret, token=token, allow=allow, server_ssl=server_ssl, client_ssl=client_ssl)


def client_tls_context(ca: str | None) -> ssl.SSLContext:
    """A context that verifies the peer's certificate: against `ca` (a private
    cluster CA; any certificate it signed is accepted, whatever its name,
    since peers are addressed by IP), else against the system's CAs with
    the usual host name check."""
    if ca:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.check_hostname = False
        return ctx
    return ssl.create_default_context()


def exposure_problem(resolved: NodeSettings, security: Security) -> str | None:
    """Why this peer must not start as configured, or None. A peer listening
    beyond loopback with neither a secret nor a token lets anyone who reaches
    the port run commands as its user; the dashboard is plain HTTP (its API
    needs the client token when there is one, sent in clear)."""
    if resolved.value("insecure"):
        return None
    host, _ = parse_hostport(resolved.value("listen"))
    if not _loopback(host) and security.secret is None and security.token is None:
        return (f"refusing to listen on {host}, beyond loopback, with neither a cluster secret nor a client token: "
                f"anyone who reaches it could join as a peer or run commands as this user. Set --secret-file "
                f"(or ${ENV_SECRET}) and --token-file (or ${ENV_TOKEN}), or pass --insecure on a trusted network")
    http = resolved.value("http")
    if http and not _loopback(parse_hostport(http)[0]):
        guard = ("it is plain HTTP, so the client token would cross the network in clear" if security.token
                 else "without a client token it has no authentication")
        return (f"refusing to serve the dashboard on {http}, beyond loopback: {guard}, and it shows every job's "
                f"command and output. Use a loopback address (or a TLS proxy), or pass --insecure on a trusted network")
    return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
