"""``mlq simulate --plot``: the replays' samples over simulated time, one line per policy.

Imported only for ``--plot`` (matplotlib is the optional extra ``mlq[plot]``), so the CLI
starts without it. Panels: pending jobs; GPU-equivalents held, against the cluster's
GPUs; and one small panel per team (the busiest ``MAX_TEAMS``) with its use against its
guarantee. The samples come from ``simulate(..., samples=N)``: evenly spaced from the
first submission to the last, and on at the same spacing while the queue drains.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from mlq.scheduler.simulate import SimResult

MAX_TEAMS = 12
TEAM_COLUMNS = 4
DAY = 86400.0


def _busiest_teams(results: list[SimResult]) -> list[str]:
    """Teams by GPU-time held across every replay's samples, most first."""
    use: dict[str, float] = {}
    for r in results:
        for s in r.timeline:
            for team, eq in s.team_use.items():
                use[team] = use.get(team, 0.0) + eq
    for r in results:
        for team in r.guarantees:
            use.setdefault(team, 0.0)
    return sorted(use, key=lambda t: (-use[t], t))


def plot_replays(results: list[SimResult], path: Path, title: str = "") -> None:
    """Draw the replays' timelines to ``path`` (PNG or SVG, by its extension)."""
    teams = _busiest_teams(results)
    shown = teams[:MAX_TEAMS]
    team_rows = -(-len(shown) // TEAM_COLUMNS)
    fig = Figure(figsize=(13, 3.2 + 2.2 * team_rows), layout="constrained")
    grid = fig.add_gridspec(1 + team_rows, TEAM_COLUMNS, height_ratios=[1.4] + [1] * team_rows)
    queue = fig.add_subplot(grid[0, : TEAM_COLUMNS // 2])
    busy = fig.add_subplot(grid[0, TEAM_COLUMNS // 2 :], sharex=queue)
    panels = {
        t: fig.add_subplot(grid[1 + i // TEAM_COLUMNS, i % TEAM_COLUMNS], sharex=queue)
        for i, t in enumerate(shown)
    }
    origin = min((r.timeline[0].t for r in results if r.timeline), default=0.0)
    colours = [f"C{i % 10}" for i in range(len(results))]

    for i, (r, colour) in enumerate(zip(results, colours, strict=True)):
        # each line thinner than the one drawn before it, so a policy whose line matches
        # another's shows as that line's core instead of vanishing under it
        lw = max(0.7, 2.2 - 0.5 * i)
        days = [(s.t - origin) / DAY for s in r.timeline]
        queue.plot(days, [s.queued for s in r.timeline], color=colour, lw=lw, label=r.policy)
        busy.plot(days, [s.gpus_busy for s in r.timeline], color=colour, lw=lw)
        for team, ax in panels.items():
            use = [s.team_use.get(team, 0.0) for s in r.timeline]
            ax.plot(days, use, color=colour, lw=lw * 0.8)

    queue.set_title("pending jobs", loc="left", fontsize=10)
    queue.set_ylabel("jobs")
    queue.legend(loc="upper right", fontsize=9, title="policy", title_fontsize=9)
    capacity = max((r.capacity_gpus for r in results), default=0)
    busy.axhline(capacity, color="0.3", ls="--", lw=0.8)
    busy.set_title(
        f"GPUs busy (GPU-equivalents; dashed: the cluster's {capacity})", loc="left", fontsize=10
    )
    guarantees = {t: g for r in results for t, g in r.guarantees.items()}
    for team, ax in panels.items():
        if team in guarantees:
            ax.axhline(guarantees[team], color="0.3", ls="--", lw=0.8)
        ax.set_title(
            f"{team}" + (f" (guarantee {guarantees[team]:g})" if team in guarantees else ""),
            loc="left",
            fontsize=9,
        )
        ax.tick_params(labelsize=8)
        ax.set_ylim(bottom=0)
    for ax in (queue, busy):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    bottom = [panels[t] for t in shown[-TEAM_COLUMNS:]] or [queue, busy]
    for ax in bottom:
        ax.set_xlabel("simulated days since the first submission")
    more = f"; the {len(shown)} busiest of {len(teams)} teams" if len(teams) > len(shown) else ""
    fig.suptitle(
        f"{title}{': ' if title else ''}one line per policy; dashed: capacity, guarantees{more}",
        fontsize=11,
    )
    fig.savefig(path, dpi=100)
