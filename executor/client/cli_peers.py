"""The cluster commands: `peers` (members and their load), `stats` (one
peer's counters) and `top` (a live view of every peer's rates).
"""

from __future__ import annotations

import functools
import time

import click

from executor.client import Client, PeerError, PeerInfo
from executor.client.cli_common import (
    _client_kw,
    _console,
    _n,
    _print_json,
    _state_style,
    cli,
    client_command,
    plural,
)


def _peers_table(members: list[PeerInfo], stats: dict[str, dict] | None = None, rates: dict[str, float] | None = None):
    """`peers` shows addresses; `top` (with stats) shows rates and steals instead."""
    from rich.table import Table
    from rich.text import Text

    table = Table(expand=False, header_style="bold", pad_edge=False, box=None, padding=(0, 2, 0, 0))
    cols = [("peer", "left")] + ([("address", "left")] if stats is None else [])
    cols += [("state", "left"), ("queued", "right"), ("running", "right"), ("slots", "right"), ("busy", "left")]
    if stats is not None:
        cols += [("jobs/s", "right"), ("stolen in", "right"), ("given", "right"), ("done", "right"), ("failed", "right")]
    for col, justify in cols:
        table.add_column(col, justify=justify, no_wrap=True)
    for m in members:
        name = Text(m.id, style="bold") + (Text(" *", style="dim") if m.is_self else Text(""))
        if m.slots:
            width = min(m.slots, 12)
            filled = round(width * min(m.running or 0, m.slots) / m.slots)
            bar = Text("█" * filled, style="cyan") + Text("░" * (width - filled), style="dim")
        else:
            bar = Text("")
        row = [name] + ([m.addr] if stats is None else [])
        row += [Text(m.state, style=_state_style(m.state)), _n(m.queued), _n(m.running), _n(m.slots), bar]
        if stats is not None:
            s = stats.get(m.id)
            rate = (rates or {}).get(m.id)
            row += [f"{rate:.1f}" if rate is not None else "–"]
            row += [_n(s.get(k)) if s else "–" for k in ("jobs_steals_in", "jobs_steals_out", "jobs_finished", "jobs_failed")]
        table.add_row(*row)
    return table
def balance_summary(members: list[PeerInfo]) -> str:
    alive = [m for m in members if m.state == "alive" and m.slots]
    if not alive:
        return "no alive peer reports its load yet"
    running = sum(m.running or 0 for m in alive)
    queued = sum(m.queued or 0 for m in alive)
    slots = sum(m.slots for m in alive)
    loads = [((m.queued or 0) + (m.running or 0)) / m.slots for m in alive]
    spread = max(loads) - min(loads)
    verdict = "balanced" if spread <= 1.0 else ("balancing" if spread <= 4 else "unbalanced")
    return (f"{len(alive)}/{len(members)} alive · {running}/{plural(slots, 'slot')} busy · {queued:,} queued · "
            f"load per slot {min(loads):.1f}–{max(loads):.1f} ({verdict})")


@cli.command()
@client_command
def peers(addr, as_json) -> int:
    """List the members of the cluster with their state and load."""
    with Client(addr, **_client_kw()) as c:
        members = c.members()
    if as_json:
        _print_json([m.to_dict() for m in members])
    else:
        console = _console()
        console.print(_peers_table(members))
        console.print(balance_summary(members), style="dim")
    return 0



@cli.command()
@client_command
def stats(addr, as_json) -> int:
    """Print the peer's counters."""
    with Client(addr, **_client_kw()) as c:
        counters = c.stats()
    if as_json:
        _print_json(counters)
    else:
        width = max(map(len, counters))
        for k, v in counters.items():
            click.echo(f"{k.ljust(width)}  {v}")
    return 0


@cli.command()
@click.option("--interval", type=click.FloatRange(0.05, 60), default=1.0, show_default=True, help="seconds between refreshes")
@click.option("--once", is_flag=True, help="print one frame and exit (rates over one --interval)")
@client_command
def top(interval, once, addr, as_json) -> int:
    """A live table of the peers: state, load, jobs/s and steals."""
    import trio

    return trio.run(functools.partial(_top, addr, interval, once or as_json, as_json))


async def _sample(addr: str) -> tuple[list[PeerInfo], dict[str, dict]]:
    import trio

    from executor.client import AsyncClient

    async with AsyncClient(addr, timeout_s=5, **_client_kw()) as c:
        members = await c.members()
    stats: dict[str, dict] = {}

    async def one(m: PeerInfo) -> None:
        try:
            async with AsyncClient(m.addr, timeout_s=1, **_client_kw()) as pc:
                stats[m.id] = await pc.stats()
        except (OSError, TimeoutError, PeerError):
            pass  # that peer's counters are unknown this round

    async with trio.open_nursery() as nursery:
        for m in members:
            if m.state != "dead":
                nursery.start_soon(one, m)
    return members, stats


async def _top(addr: str, interval: float, once: bool, as_json: bool) -> int:
    import trio
    from rich.console import Group
    from rich.live import Live
    from rich.panel import Panel
    from rich.text import Text

    previous: tuple[float, dict[str, dict]] | None = None

    def frame(members, stats, rates):
        title = Text.assemble(("peerjobs top", "bold"), f"  via {addr}  ", (time.strftime("%H:%M:%S"), "dim"))
        return Panel(Group(_peers_table(members, stats, rates), Text(""), Text(balance_summary(members))),
                     title=title, title_align="left", border_style="blue")

    def rates_of(now, stats):
        if previous is None:
            return {}
        then, old = previous
        dt = max(now - then, 1e-6)
        return {pid: (s.get("jobs_started", 0) - old[pid].get("jobs_started", 0)) / dt
                for pid, s in stats.items() if pid in old}

    if once:
        _, first = await _sample(addr)
        previous = (time.monotonic(), first)
        await trio.sleep(interval)
        members, stats = await _sample(addr)
        rates = rates_of(time.monotonic(), stats)
        if as_json:
            _print_json({"peers": [dict(m.to_dict(), stats=stats.get(m.id), jobs_per_s=rates.get(m.id))
                                   for m in members], "summary": balance_summary(members)})
        else:
            console = _console()
            if not console.is_terminal:
                console.width = max(console.width, 100)
            console.print(frame(members, stats, rates))
        return 0
    console = _console()
    with Live(console=console, auto_refresh=False, screen=False, transient=False) as live:
        while True:
            members, stats = await _sample(addr)
            now = time.monotonic()
            live.update(frame(members, stats, rates_of(now, stats)), refresh=True)
            previous = (now, stats)
            await trio.sleep(interval)
