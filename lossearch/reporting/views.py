"""Rich renderables and plain-text formats for lossearch.reporting.results; nothing here prints.

The CLI prints what these return through its one console; `--out` files get the
same content as text, Markdown or HTML.
"""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from lossearch.reporting.results import (
    CampaignOverview,
    CandidateReport,
    Leaderboard,
    LeaderboardRow,
    Lineage,
    LineageNode,
    Relative,
    TransferTable,
)


def number(value: float | None, spread: float | None = None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" + (f" ± {spread:.2g}" if spread else "")


def signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def verdict(row: LeaderboardRow) -> str:
    """The "beats DPO" cell: yes / no, `baseline` on DPO's own row, - without a DPO score."""
    if row.is_baseline:
        return "baseline"
    return {True: "yes", False: "no", None: "-"}[row.beats_dpo]


def plain_row(table: Table, cells: list, style: str | None = None) -> None:
    """Add a row whose strings are shown as they are (names and messages may hold rich markup)."""
    table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells), style=style)


def as_text(renderable: RenderableType, width: int = 160) -> str:
    """What the console would print, without colours (for --out files)."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    console.print(renderable)
    return buffer.getvalue()


# -- campaigns -------------------------------------------------------------------------------


WIDE = 120
"""Consoles at least this wide get every column; narrower ones the essential ones (json has them all)."""
LEFT_COLUMNS = ("name", "status", "task", "beats DPO", "tier", "parents", "proposer", "last activity", "database")


def narrow_table(title: str, columns: tuple[str, ...], caption: str | None = None) -> Table:
    table = Table(title=title, caption=caption)
    for column in columns:
        folds = column in ("name", "database")
        table.add_column(column, justify="left" if column in LEFT_COLUMNS else "right", no_wrap=not folds,
                         overflow="fold" if folds else "ellipsis", max_width=32 if column == "name" else None)
    return table


def campaigns_table(overviews: list[CampaignOverview], width: int = WIDE) -> Table:
    columns: tuple[str, ...] = ("name", "status", "task", "cands", "evaluated", "failed", "best", "LLM $",
                                "last activity", "database")
    if width < WIDE:
        columns = ("name", "status", "cands", "best", "last activity")
    table = narrow_table(f"{len(overviews)} campaign(s), most recently active first", columns,
                         "* the default campaign of the other commands (the most recently active); "
                         "best: its leaderboard's first")
    for index, overview in enumerate(overviews):
        listing = overview.listing
        summary, campaign = listing.summary, listing.summary.campaign
        cells = {"name": campaign.name + (" *" if index == 0 else ""), "status": campaign.status,
                 "task": str(campaign.config.get("task", "-")), "cands": str(summary.candidates),
                 "evaluated": str(summary.evaluated), "failed": str(summary.failed),
                 "best": number(overview.leader_fitness), "LLM $": f"{summary.llm_cost:.2f}",
                 "last activity": summary.last_activity.astimezone().strftime("%Y-%m-%d %H:%M"),
                 "database": listing.location}
        plain_row(table, [cells[column] for column in columns])
    return table


# -- leaderboard -----------------------------------------------------------------------------

LEADERBOARD_COLUMNS = ("rank", "id", "name", "fitness", "reward", "kl", "pref_acc", "beats DPO", "tier", "gen",
                       "parents", "proposer")
NARROW_LEADERBOARD = ("rank", "id", "name", "fitness", "reward", "kl", "beats DPO", "tier")


def leaderboard_cells(row: LeaderboardRow) -> list[str]:
    name = row.name + (" (seed)" if row.is_seed else "")
    return [str(row.rank) if row.rank is not None else "-", str(row.id), name,
            number(row.fitness, row.fitness_std), number(row.reward), number(row.kl, digits=3),
            number(row.pref_acc, digits=3), verdict(row), row.tier or "-", str(row.generation),
            ",".join(map(str, row.parents)) or "-", row.proposer if not row.model else f"{row.proposer}:{row.model}"]


def leaderboard_table(board: Leaderboard, width: int = WIDE) -> Table:
    columns = LEADERBOARD_COLUMNS if width >= WIDE else NARROW_LEADERBOARD
    table = narrow_table(f"campaign {board.campaign}: leaderboard on {board.task}", columns,
                         f"beats DPO: {board.rule}; seeds are the baselines (dim)")
    for row in board.rows:
        cells: dict[str, Any] = dict(zip(LEADERBOARD_COLUMNS, leaderboard_cells(row)))
        if row.beats_dpo:
            cells["beats DPO"] = Text("yes", style="bold green")
        plain_row(table, [cells[column] for column in columns],
                  "dim" if row.is_seed else ("red" if row.rank is None else None))
    return table


def leaderboard_markdown(board: Leaderboard) -> str:
    """A GitHub-flavoured Markdown table with the rule under it."""
    escape = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = [f"## Campaign {board.campaign}: leaderboard on {board.task}", "",
             "| " + " | ".join(LEADERBOARD_COLUMNS) + " |",
             "|" + "|".join("---" if column in LEFT_COLUMNS else "---:" for column in LEADERBOARD_COLUMNS) + "|"]
    for row in board.rows:
        cells = leaderboard_cells(row)
        if row.is_seed:
            cells[2] = f"*{cells[2]}*"
        lines.append("| " + " | ".join(escape(cell) for cell in cells) + " |")
    lines += ["", f"Beats DPO: {board.rule}. Seeds (in italics) are the baselines from the seed library.", ""]
    return "\n".join(lines)


# -- one candidate ---------------------------------------------------------------------------


def candidate_view(report: CandidateReport) -> Group:
    candidate = report.candidate
    header = Text.assemble((f"#{candidate.id} {candidate.name}", "bold"),
                           f"  campaign {report.campaign}, generation {candidate.generation}, "
                           f"island {candidate.island}, "
                           f"{candidate.status} at tier {candidate.tier or '-'}, by {candidate.proposer}"
                           + (f" ({candidate.model})" if candidate.model else ""))
    score = report.score
    lines: list[RenderableType] = [header]
    if score is not None:
        rank = f"rank {report.rank}" if report.rank else "unranked"
        beats = {True: "beats DPO", False: "does not beat DPO", None: "no DPO comparison"}[report.beats_dpo]
        lines.append(Text(f"fitness {number(score.fitness, score.spread)} on {score.task} ({score.tier}), "
                          f"{rank}, {beats}"))
    if candidate.failure_kind or candidate.failure_message:
        lines.append(Text(f"{candidate.failure_kind or candidate.status}: {candidate.failure_message}", style="red"))
    lines.append(Text(f"idea: {candidate.idea or '-'}"))
    if report.hyperparameters:
        lines.append(Text("hyperparameters: " + ", ".join(f"{k}={v:g}" for k, v in report.hyperparameters.items())))
    lines.append(Syntax(candidate.source, "python", line_numbers=True, word_wrap=True))
    lines.append(evaluations_table(report))
    if report.fingerprint_summary:
        lines.append(Text(f"fingerprint: {report.fingerprint_summary['text']}"))
    lines.append(relatives_table("parents", report.parents))
    lines.append(relatives_table("children", report.children))
    return Group(*lines)


def evaluations_table(report: CandidateReport) -> Table:
    table = Table(title="evaluations by tier, task and seed")
    for column in ("tier", "task", "seed", "fitness", "reward", "kl", "pref_acc", "beta", "seconds", "failure"):
        table.add_column(column, justify="left" if column in ("tier", "task", "failure") else "right")
    for row in report.evaluations:
        plain_row(table, [row.tier, row.task, str(row.seed), number(row.fitness, row.fitness_std), number(row.reward),
                          number(row.kl, digits=3), number(row.pref_acc, digits=3), number(row.beta, digits=3),
                          f"{row.seconds:.1f}", row.failure or ""])
    return table


def relatives_table(title: str, relatives: tuple[Relative, ...]) -> RenderableType:
    if not relatives:
        return Text(f"{title}: none")
    table = Table(title=title)
    for column in ("id", "name", "relation", "fitness", "Δ child - parent"):
        table.add_column(column, justify="right" if column in ("id", "fitness", "Δ child - parent") else "left")
    for relative in relatives:
        delta = signed(relative.delta) + (f" ({relative.delta_tier})" if relative.delta_tier else "")
        plain_row(table, [str(relative.id), relative.name, relative.relation, number(relative.fitness), delta])
    return table


# -- lineage ---------------------------------------------------------------------------------


def node_label(node: LineageNode, edge_text: str = "") -> Text:
    style = "dim" if node.is_seed else ("red" if node.status in ("failed", "rejected", "duplicate") else "")
    text = Text()
    if edge_text:
        text.append(edge_text + "  ", style="cyan")
    text.append(f"#{node.id} {node.name}", style=style or "bold")
    text.append(f"  fitness {number(node.fitness)}" + (f" ({node.tier})" if node.tier else "")
                + f", gen {node.generation}" + (", seed" if node.is_seed else "")
                + ("" if node.status == "evaluated" else f", {node.status}"))
    if node.repeated:
        text.append("  (shown above)", style="dim")
    return text


def _edge(node: LineageNode) -> str:
    if node.relation is None:
        return ""
    return f"{node.relation} Δ{signed(node.delta)}" if node.delta is not None else node.relation


def lineage_tree(lineage: Lineage) -> Tree:
    """The root, then its ancestry (each branch a parent) and its descendants (each branch a child)."""
    tree = Tree(node_label(lineage.root))
    up = tree.add(Text("ancestry (Δ = child - parent along each edge)", style="italic"))
    for node in lineage.ancestors:
        _grow(up, node)
    if not lineage.ancestors:
        up.add(Text("none: a seed or an orphan", style="dim"))
    down = tree.add(Text("descendants", style="italic"))
    for node in lineage.descendants:
        _grow(down, node)
    if not lineage.descendants:
        down.add(Text("none yet", style="dim"))
    return tree


def _grow(parent: Tree, node: LineageNode) -> None:
    branch = parent.add(node_label(node, _edge(node)))
    for child in node.branches:
        _grow(branch, child)


# -- transfer --------------------------------------------------------------------------------


def transfer_view(table: TransferTable) -> Table:
    view = Table(title=f"campaign {table.campaign}: selected on {table.selected_on}, held out on "
                       f"{', '.join(table.tasks)} ({table.tier} tier)",
                 caption=f"green: beats DPO ({table.rule}); {table.ran} evaluation(s) run now, the rest were stored")
    view.add_column("id", justify="right")
    view.add_column("name")
    view.add_column(f"{table.selected_on} (selected)", justify="right")
    for task in table.tasks:
        view.add_column(task, justify="right")
    view.add_column("beats DPO on", justify="right")
    for row in table.rows:
        cells: list[Any] = [str(row.id), row.name + (" (seed)" if row.is_seed else ""), number(row.selected_fitness)]
        for task in table.tasks:
            cell = row.cells[task]
            text = cell.failure.split(":")[0] if cell.failure else number(cell.fitness, cell.spread)
            cells.append(Text(text, style="bold green" if cell.beats_dpo else ("red" if cell.failure else "")))
        cells.append("baseline" if row.is_baseline else f"{row.wins}/{len(table.tasks)}")
        plain_row(view, cells, "dim" if row.is_seed and not row.is_baseline else None)
    return view
