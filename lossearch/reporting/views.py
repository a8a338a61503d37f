"""Rich renderables and plain-text formats for lossearch.reporting.results; nothing here prints.

The CLI prints what these return through its one console; `--out` files get the
same content as text, Markdown or HTML.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from lossearch.reporting.results import (
    VERDICT_NOTE,
    CampaignOverview,
    CandidateReport,
    Leaderboard,
    LeaderboardRow,
    Lineage,
    LineageNode,
    Relative,
    TransferTable,
)

if TYPE_CHECKING:  # the stage imports the finetune tier and torch; rendering its report needs neither
    from lossearch.search.confirm import ConfirmationReport


def number(value: float | None, spread: float | None = None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" + (f" ± {spread:.2g}" if spread else "")


def signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


VERDICT_STYLES = {"confirmed": "bold green", "not confirmed": "yellow"}
"""How a verdict cell looks; the others (unconfirmed, seed, baseline) are dim."""
COMPARISON_STYLES = {"better": "bold green", "worse": "red"}
"""How a comparison's verdict looks; `no detectable difference` is dim."""


def verdict_text(verdict: str) -> Text:
    return Text(verdict, style=VERDICT_STYLES.get(verdict, "dim"))


def comparison_text(verdict: str) -> Text:
    return Text(verdict, style=COMPARISON_STYLES.get(verdict, "dim"))


def real(value: Any) -> float | None:
    """A number read from a stored record (JSON), or None when it holds something else."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def interval(ci: Any) -> str:
    """A stored 95% interval `[low, high]` as `[-0.010, +0.034]`."""
    if isinstance(ci, Sequence) and not isinstance(ci, str) and len(ci) == 2:
        low, high = real(ci[0]), real(ci[1])
        if low is not None and high is not None:
            return f"[{low:+.3f}, {high:+.3f}]"
    return "-"


def p_value(value: Any) -> str:
    number = real(value)
    return "-" if number is None else f"{number:.3g}"


def rate(value: Any) -> str:
    number = real(value)
    return "-" if number is None else f"{number:.0%}"


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
LEFT_COLUMNS = ("name", "status", "task", "verdict", "tier", "parents", "proposer", "last activity", "database")


def narrow_table(title: str, columns: tuple[str, ...], caption: str | None = None) -> Table:
    table = Table(title=title, caption=caption)
    for column in columns:
        folds = column in ("name", "database")
        table.add_column(column, justify="left" if column in LEFT_COLUMNS else "right", no_wrap=not folds,
                         overflow="fold" if folds else "ellipsis", max_width=32 if column == "name" else None)
    return table


def campaigns_table(overviews: list[CampaignOverview], width: int = WIDE) -> Table:
    columns: tuple[str, ...] = ("name", "status", "task", "cands", "evaluated", "failed", "best", "confirmed",
                                "LLM $", "last activity", "database")
    if width < WIDE:
        columns = ("name", "status", "cands", "best", "last activity")
    table = narrow_table(f"{len(overviews)} campaign(s), most recently active first", columns,
                         "* the default campaign of the other commands (the most recently active); "
                         "best: its leaderboard's first; confirmed: discoveries confirmed on fresh seeds "
                         "(lossearch confirm)")
    for index, overview in enumerate(overviews):
        listing = overview.listing
        summary, campaign = listing.summary, listing.summary.campaign
        cells = {"name": campaign.name + (" *" if index == 0 else ""), "status": campaign.status,
                 "task": str(campaign.config.get("task", "-")), "cands": str(summary.candidates),
                 "evaluated": str(summary.evaluated), "failed": str(summary.failed),
                 "best": number(overview.leader_fitness), "confirmed": str(overview.confirmed),
                 "LLM $": f"{summary.llm_cost:.2f}",
                 "last activity": summary.last_activity.astimezone().strftime("%Y-%m-%d %H:%M"),
                 "database": listing.location}
        plain_row(table, [cells[column] for column in columns])
    return table


# -- leaderboard -----------------------------------------------------------------------------

LEADERBOARD_COLUMNS = ("rank", "id", "name", "fitness", "reward", "kl", "pref_acc", "verdict", "tier", "gen",
                       "parents", "proposer")
NARROW_LEADERBOARD = ("rank", "id", "name", "fitness", "reward", "kl", "verdict", "tier")


def leaderboard_cells(row: LeaderboardRow) -> list[str]:
    name = row.name + (" (seed)" if row.is_seed else "")
    return [str(row.rank) if row.rank is not None else "-", str(row.id), name,
            number(row.fitness, row.fitness_std), number(row.reward), number(row.kl, digits=3),
            number(row.pref_acc, digits=3), row.verdict, row.tier or "-", str(row.generation),
            ",".join(map(str, row.parents)) or "-", row.proposer if not row.model else f"{row.proposer}:{row.model}"]


def leaderboard_table(board: Leaderboard, width: int = WIDE) -> Table:
    columns = LEADERBOARD_COLUMNS if width >= WIDE else NARROW_LEADERBOARD
    table = narrow_table(f"campaign {board.campaign}: leaderboard on {board.task}", columns,
                         f"{VERDICT_NOTE}; seeds are the baselines (dim)")
    for row in board.rows:
        cells: dict[str, Any] = dict(zip(LEADERBOARD_COLUMNS, leaderboard_cells(row)))
        cells["verdict"] = verdict_text(row.verdict)
        plain_row(table, [cells[column] for column in columns],
                  "dim" if row.is_seed else ("red" if row.rank is None else None))
    return table


def leaderboard_markdown(board: Leaderboard) -> str:
    """A GitHub-flavoured Markdown table with the meaning of its verdicts under it."""
    escape = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = [f"## Campaign {board.campaign}: leaderboard on {board.task}", "",
             "| " + " | ".join(LEADERBOARD_COLUMNS) + " |",
             "|" + "|".join("---" if column in LEFT_COLUMNS else "---:" for column in LEADERBOARD_COLUMNS) + "|"]
    for row in board.rows:
        cells = leaderboard_cells(row)
        if row.is_seed:
            cells[2] = f"*{cells[2]}*"
        lines.append("| " + " | ".join(escape(cell) for cell in cells) + " |")
    note = VERDICT_NOTE[0].upper() + VERDICT_NOTE[1:]
    lines += ["", f"{note}. Seeds (in italics) are the baselines from the seed library.", ""]
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
        lines.append(Text(f"fitness {number(score.fitness, score.spread)} on {score.task} ({score.tier}), {rank}"))
    lines += verdict_lines(report)
    if candidate.failure_kind or candidate.failure_message:
        lines.append(Text(f"{candidate.failure_kind or candidate.status}: {candidate.failure_message}", style="red"))
    lines.append(Text(f"idea: {candidate.idea or '-'}"))
    if candidate.instruction:
        temperature = "" if candidate.temperature is None else f" at temperature {candidate.temperature:g}"
        lines.append(Text(f"asked to: {candidate.instruction}{temperature}"))
    if report.operator is not None:
        record = report.operator
        lines.append(Text(f"operator {record.operator} in this campaign: {record.children} children, {record.valid} "
                          f"valid, {record.improved} improved on their parents ({rate(record.success_rate)} of "
                          f"{record.scored} with a verdict)"))
    if report.hyperparameters:
        lines.append(Text("hyperparameters: " + ", ".join(f"{k}={v:g}" for k, v in report.hyperparameters.items())))
    lines.append(Syntax(candidate.source, "python", line_numbers=True, word_wrap=True))
    lines.append(evaluations_table(report))
    if report.fingerprint_summary:
        lines.append(Text(f"fingerprint: {report.fingerprint_summary['text']}"))
    lines.append(relatives_table("parents", report.parents))
    lines.append(relatives_table("children", report.children))
    return Group(*lines)


def verdict_lines(report: CandidateReport) -> list[RenderableType]:
    """The verdict; once the confirmation stage judged the candidate, its summary and its comparisons."""
    line = Text.assemble("verdict: ", verdict_text(report.verdict))
    if report.verdict == "unconfirmed":
        line.append("  (never compared with DPO on fresh seeds: run `lossearch confirm`)", style="dim")
    record = report.confirmation
    if record is None:
        return [line]
    comparisons = [c for c in record.get("comparisons") or () if isinstance(c, Mapping)]
    lines: list[RenderableType] = [line, Text(str(record.get("summary", "")))]
    return lines + ([comparisons_table(comparisons)] if comparisons else [])


SHOWN_COMPARISON = ("baseline", "task", "verdict", "difference\n95% CI", "Holm p", "n", "collapse")
"""The comparisons table of `lossearch show` (the candidate is the page's; n: the seeds paired)."""
COMPARISON_WIDTHS = {"candidate": (10, 24), "baseline": (8, 16), "verdict": (10, 13)}
"""(min, max) widths of the columns that wrap; the others never do."""


def comparisons_table(comparisons: Sequence[Mapping[str, Any]], columns: Sequence[str] = SHOWN_COMPARISON,
                      title: str = "confirmation on fresh seeds (n: seeds paired; collapse: runs that diverged, "
                                   "candidate / baseline)", caption: str | None = None) -> Table:
    """Comparisons as `Comparison.to_dict` writes them (what a confirmation record stores), one row each."""
    table = Table(title=title, caption=caption, show_edge=False)  # no edges: it fits 80 columns
    for column in columns:
        widths = COMPARISON_WIDTHS.get(column)
        table.add_column(column, justify="left" if column in ("candidate", "baseline", "task", "verdict", "test")
                         else "right", no_wrap=widths is None, overflow="fold",
                         min_width=widths[0] if widths else None, max_width=widths[1] if widths else None)
    for comparison in comparisons:
        seeds = comparison.get("seeds")
        cells: dict[str, Any] = {
            "candidate": str(comparison.get("candidate", "?")), "baseline": str(comparison.get("baseline", "?")),
            "task": str(comparison.get("task", "?")), "verdict": comparison_text(str(comparison.get("verdict", "?"))),
            "difference": signed_3(comparison.get("difference")), "95% CI": interval(comparison.get("ci")),
            "difference\n95% CI": f"{signed_3(comparison.get('difference'))}\n{interval(comparison.get('ci'))}",
            "p": p_value(comparison.get("p_value")), "Holm p": p_value(verdict_p(comparison)),
            "test": str(comparison.get("test", "-")), "n": str(len(seeds)) if isinstance(seeds, list) else "-",
            "collapse": collapse(comparison)}
        plain_row(table, [cells[column] for column in columns])
    return table


def signed_3(value: Any) -> str:
    number = real(value)
    return "-" if number is None else f"{number:+.3f}"


def collapse(comparison: Mapping[str, Any]) -> str:
    """Collapse rates, candidate / baseline."""
    return f"{rate(comparison.get('candidate_collapse_rate'))} / {rate(comparison.get('baseline_collapse_rate'))}"


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
                 caption="each task: fitness, then Δ DPO (minus DPO's fitness there: a raw difference, not a test; "
                         f"lossearch confirm --tasks tests it); {table.ran} evaluation(s) run now, the rest were "
                         "stored")
    view.add_column("id", justify="right")
    view.add_column("name")
    view.add_column(f"{table.selected_on} (selected)", justify="right")
    for task in table.tasks:
        view.add_column(task, justify="right")
    for row in table.rows:
        name = row.name + (" (seed)" if row.is_seed else "") + (" (baseline)" if row.is_baseline else "")
        cells: list[Any] = [str(row.id), name, number(row.selected_fitness)]
        for task in table.tasks:
            cell = row.cells[task]
            if cell.failure:
                cells.append(Text(cell.failure.split(":")[0], style="red"))
                continue
            text = Text(number(cell.fitness, cell.spread))
            if cell.dpo_delta is not None:
                text.append(f"\nΔ DPO {signed(cell.dpo_delta)}", style="dim")
            cells.append(text)
        plain_row(view, cells, "dim" if row.is_seed and not row.is_baseline else None)
    return view


# -- confirmation ----------------------------------------------------------------------------

CONFIRMATION_COLUMNS = ("candidate", "baseline", "task", "verdict", "difference", "95% CI", "p", "Holm p", "test",
                        "collapse")
NARROW_CONFIRMATION = ("candidate", "baseline", "task", "verdict", "difference\n95% CI", "Holm p")


def confirmation_view(report: ConfirmationReport, width: int = WIDE) -> Group:
    """The confirmation stage's outcome: every comparison, then one line per leader with its verdict."""
    columns = CONFIRMATION_COLUMNS if width >= WIDE else NARROW_CONFIRMATION
    title = (f"confirmation on {len(report.seeds)} fresh seeds ({seed_range(report.seeds)}), budget {report.budget}, "
             f"{report.precision}; selected on {report.selected_on}")
    caption = ("difference: candidate - baseline, mean over seeds; "
               + ("p: one-sided (better); Holm p: one-sided in the verdict's direction (worse: that it is "
                  "worse), " if "p" in columns else "Holm p: one-sided in the verdict's direction, ")
               + f"corrected over the leaders; verdicts at alpha {report.alpha:g}"
               + ("; collapse: seeds that collapsed, candidate / baseline" if "collapse" in columns else ""))
    lines: list[RenderableType] = [comparisons_table(report.to_dicts(), columns, title, caption)]
    for leader in report.leaders:
        style = VERDICT_STYLES["confirmed" if leader.confirmed else "not confirmed"]
        lines.append(Text.assemble((f"{leader.candidate}: ", "bold"), (leader.summary, style)))
    lines += [Text(note, style="dim") for note in report.notes]
    lines.append(Text(f"{report.ran} training run(s) now, the rest were stored", style="dim"))
    return Group(*lines)


def verdict_p(comparison: Mapping[str, Any]) -> Any:
    """The Holm-adjusted p-value behind the verdict: that it is worse for `worse`, else that it is better."""
    return comparison.get("p_worse_adjusted") if comparison.get("verdict") == "worse" else comparison.get("p_adjusted")


def seed_range(seeds: Sequence[int]) -> str:
    """`1000000..1000004` for consecutive seeds, else the seeds themselves."""
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"seeds {seeds[0]}..{seeds[-1]}"
    return "seeds " + ", ".join(map(str, seeds))
