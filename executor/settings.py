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
import json
import os
import tomllib
from dataclasses import dataclass
from typing import Any

from executor.config import Config

# Split by concern (issue 13): what a value is, and whom to trust, live in
# their own modules; every name stays importable from `executor.settings`.
from executor.settings_security import (  # noqa: F401
    client_tls_context,
    exposure_problem,
    load_security,
)
from executor.settings_values import (  # noqa: F401
    DEFAULT_PEER,
    ENV_ADDR,
    ENV_CONFIG,
    ENV_PREFIX,
    ENV_SECRET,
    ENV_TLS_CA,
    ENV_TOKEN,
    NODE_KEYS,
    PRESETS,
    SETTING_FLOAT_MAX,
    SETTING_INT_MAX,
    SLOTS_MAX,
    SettingsError,
    _field_parser,
    default_name,
    parse_bool,
    parse_hostport,
    parse_name,
    parse_positive,
)
from gossip.config import GossipConfig

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
