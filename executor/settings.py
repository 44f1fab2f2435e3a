"""Settings of `peerjobs`: a TOML file, environment variables and flags.

Precedence, highest first: **flags > environment > file > defaults**. Every
resolved value remembers where it came from (`peerjobs node --print-config`).

The file (`--config FILE`, or `PEERJOBS_CONFIG`):

    [node]                      # the flags of `peerjobs node`
    data = "./d1"
    listen = "127.0.0.1:7001"
    slots = 4
    name = "n1"
    join = ["127.0.0.1:7002"]
    http = "127.0.0.1:8001"     # dashboard and /metrics; off when absent
    preset = "local"            # "local" (loopback timers) or "lan"
    verbose = false
    secret_file = "/etc/peerjobs/secret"   # cluster secret (docs/security.md)
    token_file = "/etc/peerjobs/token"     # client token
    allow_commands = "/etc/peerjobs/allow" # SUBMIT allow-list
    tls_cert = "cert.pem"       # TLS for every connection (with tls_key, tls_ca)
    insecure = false            # listen beyond loopback without secret or token

    [config]                    # any field of executor.config.Config
    wait_max_s = 600

    [config.gossip]             # any field of gossip.config.GossipConfig
    probe_interval_s = 0.5

    [client]                    # the client commands (submit, status, top, ...)
    peer = "127.0.0.1:7001"

Environment: `PEERJOBS_<NODE KEY>` (`PEERJOBS_DATA`, `PEERJOBS_LISTEN`,
`PEERJOBS_JOIN` comma-separated, ...), `PEERJOBS_<CONFIG FIELD>`
(`PEERJOBS_WAIT_MAX_S`), `PEERJOBS_GOSSIP_<FIELD>`, and `PEERJOBS_ADDR` for
the clients' peer. The secrets themselves are never flags (`ps` shows
flags): `PEERJOBS_SECRET` holds the cluster secret when no `secret_file` is
set, `PEERJOBS_TOKEN` the client token when no `token_file` is set (the
client commands send it too), and `PEERJOBS_TLS_CA` is the CA file client
commands verify a TLS peer with. (`PEERJOBS_PEER`, `PEERJOBS_JOB_ID` and `PEERJOBS_ATTEMPT`
are what a peer sets in a job's environment; they are not settings.)
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import ssl
import stat
import re
import socket
import tomllib
from dataclasses import dataclass
from typing import Any

from executor.config import AllowList, Config, Security
from executor.core.numbers import parse_float, parse_int
from gossip.config import GossipConfig

ENV_PREFIX = "PEERJOBS_"
ENV_CONFIG = "PEERJOBS_CONFIG"
ENV_ADDR = "PEERJOBS_ADDR"
ENV_SECRET = "PEERJOBS_SECRET"
ENV_TOKEN = "PEERJOBS_TOKEN"
ENV_TLS_CA = "PEERJOBS_TLS_CA"
DEFAULT_PEER = "127.0.0.1:7001"
PRESETS = {"local": Config.local, "lan": Config.lan}

_NAME = re.compile(r"[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*\Z")

SETTING_INT_MAX = 2**63 - 1
"""Largest integer setting: every count and byte bound fits a signed 64-bit
integer (what LevelDB, CBOR and the peer frames carry)."""

SETTING_FLOAT_MAX = 1e9
"""Largest real-valued setting (seconds, multipliers): about 31 years; more
is a typo, and an infinite timer would never fire."""

SLOTS_MAX = 65536
"""Largest `--slots`: jobs one peer runs at once (each is a process)."""


class SettingsError(Exception):
    """A setting that cannot be used; the message names it and its source."""


# ---------------------------------------------------------------------------
# Value parsers (shared with the CLI's flags)


def parse_hostport(text: str, *, allow_zero: bool = True) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        raise ValueError(f"{str(text)[:80]!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", parse_int(port, f"the port of {str(text)[:80]!r}",
                                                      lo=0 if allow_zero else 1, hi=65535)


def parse_name(text: str) -> str:
    if not _NAME.match(text) or len(text) > 64:
        raise ValueError(f"{text!r}: a peer name is letters, digits, '_', '.' and inner '-' (at most 64)")
    return text


def parse_positive(text: Any) -> int:
    """A count of slots: 1 to `SLOTS_MAX` (a flag, an env var or a TOML integer)."""
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise ValueError(f"{text!r} is not a positive integer")
    return parse_int(text.strip() if isinstance(text, str) else text, "the value", lo=1, hi=SLOTS_MAX)


def parse_bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not true or false")


def default_name(port: int) -> str:
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname().split(".")[0]) or "peer"
    return f"{host}.{port}"


def _join_list(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        item = str(item).strip()
        if item:
            h, p = parse_hostport(item, allow_zero=False)
            out.append(f"{h}:{p}")
    return out


def _hostport_text(value: Any) -> str:
    h, p = parse_hostport(value)
    return f"{h}:{p}"


def _http(value: Any) -> str | None:
    if value in (None, "", "off", False):
        return None
    return _hostport_text(value)


NODE_KEYS: dict[str, Any] = {
    # key: parser
    "data": str,
    "listen": _hostport_text,
    "slots": parse_positive,
    "name": parse_name,
    "join": _join_list,
    "http": _http,
    "preset": lambda v: _one_of(v, PRESETS),
    "verbose": parse_bool,
    "secret_file": str,
    "token_file": str,
    "allow_commands": str,
    "tls_cert": str,
    "tls_key": str,
    "tls_ca": str,
    "insecure": parse_bool,
}


def _one_of(value: Any, choices) -> str:
    if value not in choices:
        raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
    return value


def _integer(value: Any) -> int:
    """An integer setting (a count or a bound): 0 to `SETTING_INT_MAX`, through
    the one bounded number parser (executor/core/numbers.py)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    return parse_int(value.strip() if isinstance(value, str) else value, "the value", lo=0, hi=SETTING_INT_MAX)


def _number(value: Any) -> float:
    """A real-valued setting (seconds, multipliers): finite, 0 to `SETTING_FLOAT_MAX`."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    return parse_float(value.strip() if isinstance(value, str) else value, "the value", lo=0.0, hi=SETTING_FLOAT_MAX)


def _field_parser(kind: Any):
    return {"bool": parse_bool, "int": _integer, "float": _number, bool: parse_bool, int: _integer,
            float: _number}.get(kind, str)


# ---------------------------------------------------------------------------
# Resolution


@dataclass
class Setting:
    value: Any
    source: str


@dataclass
class NodeSettings:
    node: dict[str, Setting]
    config: Config
    config_sources: dict[str, str]  # "wait_max_s", "gossip.probe_interval_s" -> source
    path: str | None

    def value(self, key: str) -> Any:
        return self.node[key].value

    def to_dict(self) -> dict:
        out = {"node": {k: {"value": s.value, "source": s.source} for k, s in self.node.items()}, "config": {}}
        for key, source in self.config_sources.items():
            out["config"][key] = {"value": _config_value(self.config, key), "source": source}
        return out

    def render_toml(self) -> str:
        """The effective settings as a TOML file, each value's source in a comment."""
        lines = [f"# peerjobs node: effective settings (flags > environment > file{' ' + self.path if self.path else ''} > defaults)",
                 "", "[node]"]
        rows = [(k, s.value, s.source) for k, s in self.node.items()]
        lines += _toml_rows(rows)
        for section, prefix in (("config", ""), ("config.gossip", "gossip.")):
            lines += ["", f"[{section}]"]
            rows = [(k[len(prefix):], _config_value(self.config, k), src) for k, src in self.config_sources.items()
                    if k.startswith(prefix) and (prefix or not k.startswith("gossip."))]
            lines += _toml_rows(rows)
        return "\n".join(lines) + "\n"


def _config_value(config: Config, key: str) -> Any:
    if key.startswith("gossip."):
        return getattr(config.gossip, key[len("gossip."):])
    return getattr(config, key)


def _toml_value(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(str(value))


def _toml_rows(rows: list[tuple[str, Any, str]]) -> list[str]:
    cells = [(f"{k} = {_toml_value(v)}", src if v is not None else f"off; {src}") for k, v, src in rows]
    width = max((len(c) for c, _ in cells), default=0)
    return [f"{c.ljust(width)}  # {src}" for c, src in cells]


def config_path(flag: str | None, env: dict[str, str]) -> tuple[str | None, str]:
    if flag:
        return flag, "flag --config"
    if env.get(ENV_CONFIG):
        return env[ENV_CONFIG], f"env {ENV_CONFIG}"
    return None, ""


def load_file(path: str | None) -> dict:
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"node", "config", "client"}
    if unknown:
        raise SettingsError(f"{path}: unknown section [{sorted(unknown)[0]}] (known: node, config, client)")
    return data


def _parse(parser, value: Any, where: str) -> Any:
    try:
        return parser(value)
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"{where}: {exc}") from None


def resolve_node(flags: dict[str, Any], *, config_flag: str | None = None,
                 env: dict[str, str] | None = None) -> NodeSettings:
    """`flags` holds the node flags that were given (absent or None: not given)."""
    env = dict(os.environ) if env is None else env
    path, _ = config_path(config_flag, env)
    data = load_file(path)
    file_node = data.get("node", {})
    for key in file_node:
        if key not in NODE_KEYS:
            raise SettingsError(f"{path}: unknown setting [node] {key} (known: {', '.join(NODE_KEYS)})")

    node: dict[str, Setting] = {}
    for key, parser in NODE_KEYS.items():
        env_name = ENV_PREFIX + key.upper()
        if flags.get(key) not in (None, (), [], False):
            node[key] = Setting(_parse(parser, flags[key], f"--{key}"), f"flag --{key}")
        elif env.get(env_name, "") != "":
            node[key] = Setting(_parse(parser, env[env_name], f"{env_name}"), f"env {env_name}")
        elif key in file_node:
            node[key] = Setting(_parse(parser, file_node[key], f"{path}: [node] {key}"), f"file {path}")
        else:
            node[key] = Setting(None, "default")
    defaults = {"data": "./peerjobs-data", "listen": "127.0.0.1:7001", "slots": os.cpu_count() or 1,
                "join": [], "http": None, "preset": "local", "verbose": False, "secret_file": None,
                "token_file": None, "allow_commands": None, "tls_cert": None, "tls_key": None, "tls_ca": None,
                "insecure": False}
    for key, value in defaults.items():
        if node[key].source == "default":
            node[key].value = value
    if node["slots"].source == "default":
        node["slots"].source = "default (CPUs)"
    if node["name"].value is None:
        node["name"] = Setting(default_name(parse_hostport(node["listen"].value)[1]), "default (HOST.PORT)")

    preset = node["preset"].value
    base = PRESETS[preset]()
    sources: dict[str, str] = {}
    overrides: dict[str, Any] = {}
    gossip_overrides: dict[str, Any] = {}
    file_config = dict(data.get("config", {}))
    file_gossip = file_config.pop("gossip", {})
    for section, fields_, out, env_prefix, prefix, file_values in (
        ("config", dataclasses.fields(Config), overrides, ENV_PREFIX, "", file_config),
        ("config.gossip", dataclasses.fields(GossipConfig), gossip_overrides,
         ENV_PREFIX + "GOSSIP_", "gossip.", file_gossip),
    ):
        names = {f.name for f in fields_ if f.name != "gossip"}
        for key in file_values:
            if key not in names:
                raise SettingsError(f"{path}: unknown setting [{section}] {key}")
        for f in fields_:
            if f.name not in names:
                continue
            name, parser = f.name, _field_parser(f.type)
            env_name = env_prefix + name.upper()
            if env.get(env_name, "") != "":
                out[name] = _parse(parser, env[env_name], env_name)
                sources[prefix + name] = f"env {env_name}"
            elif name in file_values:
                out[name] = _parse(parser, file_values[name], f"{path}: [{section}] {name}")
                sources[prefix + name] = f"file {path}"
            else:
                sources[prefix + name] = f"default (preset {preset})"
    try:
        gossip = dataclasses.replace(base.gossip, **gossip_overrides)
        config = dataclasses.replace(base, gossip=gossip, **overrides)
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"invalid configuration: {exc}") from None
    return NodeSettings(node, config, sources, path)


def resolve_peer(flag: str | None, *, config_flag: str | None = None,
                 env: dict[str, str] | None = None) -> Setting:
    """The peer a client command talks to: --peer > PEERJOBS_ADDR > [client] peer > 127.0.0.1:7001."""
    env = dict(os.environ) if env is None else env
    if flag:
        return Setting(_parse(_client_addr, flag, "--peer"), "flag --peer")
    if env.get(ENV_ADDR):
        return Setting(_parse(_client_addr, env[ENV_ADDR], ENV_ADDR), f"env {ENV_ADDR}")
    path, _ = config_path(config_flag, env)
    client = load_file(path).get("client", {})
    if "peer" in client:
        return Setting(_parse(_client_addr, client["peer"], f"{path}: [client] peer"), f"file {path}")
    return Setting(DEFAULT_PEER, "default")


def _client_addr(value: Any) -> str:
    h, p = parse_hostport(value, allow_zero=False)
    return f"{h}:{p}"


# ---------------------------------------------------------------------------
# Trust (docs/security.md)


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
