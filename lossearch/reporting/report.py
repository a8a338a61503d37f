"""The campaign report: one self-contained HTML file that opens without a network.

Plots are inline SVG drawn by matplotlib through lossearch.reporting.charts, the charts
`lossearch serve` shows too (no JavaScript, no fetched fonts, styles or images): fitness over
generations and over time, reward against KL with the seeds and DPO marked, the lineage graph
(each node links to its leaderboard row), the leaders' gradient fingerprints as heatmaps, the
operators' success, throughput and failures; then the leaderboard with each candidate's verdict,
the confirmation stage's comparisons (lossearch.search.confirm: the only place a claim against
DPO comes from) and, when `lossearch transfer` has run, the held-out table. Every string from the store (names,
ideas, code, records) is escaped: candidates are untrusted text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

from lossearch import __version__
from lossearch.ranking import (
    CampaignData,
    OperatorStats,
    instruction_stats,
    load_campaign_data,
    load_campaign_sample,
    model_stats,
    operator_stats,
)
from lossearch.reporting import charts
from lossearch.reporting.results import (
    VERDICT_NOTE,
    Leaderboard,
    LeaderboardRow,
    NoResults,
    TransferTable,
    build_leaderboard,
    first_page,
    held_out_results,
)
from lossearch.reporting.views import collapse, interval, p_value, rate, signed_3, verdict_p
from lossearch.store import Campaign, Store
from lossearch.store.locate import CampaignHandle

REPORT_ROWS = 300
"""The leaderboard rows a report lists; `lossearch leaderboard` lists them all."""
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { padding: 3px 8px; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f6f6f6; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.seed td { color: #777; font-style: italic; } tr.failed td { color: #b22; }
.yes { color: #1a7f37; font-weight: 600; } .no { color: #9a6700; } .plots { display: flex; flex-wrap: wrap; gap: 1em; }
.scroll { overflow-x: auto; } .leader { border: 1px solid #eee; padding: 0.5em 1em; margin: 0.5em 0; }
pre { background: #f8f8f8; padding: 0.6em; overflow-x: auto; font-size: 0.8em; } .muted { color: #777; }
"""


def default_report_path(handle: CampaignHandle) -> Path:
    """runs/NAME/report.html beside a SQLite campaign file, else NAME-report.html here."""
    location = Path(handle.location)
    if handle.location.endswith(".db") and location.parent.is_dir():
        return location.parent / "report.html"
    return Path(f"{handle.campaign.name}-report.html")


SAMPLED_ABOVE = 5_000
"""Campaigns up to this many candidates are reported from a snapshot of all of them. A larger one is
plotted from a uniform sample of this many (with their parents, the seeds and the leaderboard's rows),
and its leaderboard comes from the scores the store keeps (lossearch.ranking.rank_top): at 100,000
candidates a full snapshot alone takes longer than the whole sampled report (benchmarks/store_scale.py)."""


@dataclass(frozen=True)
class ReportInputs:
    """What a report is written from."""

    data: CampaignData
    """The candidates the plots draw: the whole campaign, or a sample of it (`sampled_from`)."""
    board: Leaderboard
    statuses: dict[str, int]
    """Every candidate of the campaign counted by status."""
    sampled_from: int | None = None
    """The campaign's size when `data` is a sample of it, else None."""
    ranked: int | None = None
    """How many candidates rank, when `board` holds only the first of them (a sampled campaign)."""

    @property
    def ranked_total(self) -> int:
        return len(self.board.rows) if self.ranked is None else self.ranked


def report_inputs(store: Store, campaign: Campaign) -> ReportInputs:
    """The whole campaign while it has at most `SAMPLED_ABOVE` candidates, else a sample and the first rows."""
    statuses = {status: count for status, count in store.candidate_counts(campaign.id).items()
                if status not in ("proposed", "finetuned")}
    size = sum(statuses.values())
    if size <= SAMPLED_ABOVE:
        data = load_campaign_data(store, campaign)
        return ReportInputs(data, build_leaderboard(data), statuses)
    board, ranked = first_page(store, campaign, REPORT_ROWS)
    data = load_campaign_sample(store, campaign, SAMPLED_ABOVE, keep=[row.id for row in board.rows])
    return ReportInputs(data, board, statuses, sampled_from=size, ranked=ranked)


def write_report(handle: CampaignHandle, out: str | Path | None = None, *, leaders: int = 6) -> Path:
    """Write the report of the campaign to `out` (see `default_report_path`); returns the path."""
    path = Path(out) if out is not None else default_report_path(handle)
    html = report_html(report_inputs(handle.store, handle.campaign), leaders=leaders)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


def report_html(inputs: CampaignData | ReportInputs, *, leaders: int = 6) -> str:
    """The whole report as one HTML document, from a snapshot or from `report_inputs`; `NoResults` when no
    candidate has a fitness yet."""
    if isinstance(inputs, CampaignData):
        inputs = ReportInputs(inputs, build_leaderboard(inputs), dict(Counter(c.status for c in
                                                                             inputs.candidates.values())))
    data, board = inputs.data, inputs.board
    if not board.rows:
        raise NoResults(f"campaign {data.campaign.name!r} has no candidate with a fitness yet: nothing to report")
    sections = [
        _header(data, board, inputs.statuses),
        _sample_note(inputs),
        _section("Fitness", '<div class="plots">' + charts.fitness_by_generation(data)
                 + charts.fitness_over_time(data) + "</div>"),
        _section("Reward against KL", '<div class="plots">'
                 + "".join(charts.reward_against_kl(data, tier) for tier in charts.tiers(data)) + "</div>"),
        _section("Lineage", '<p class="muted">Squares are seeds; colour is the leaderboard rank (bright = high); red '
                 'edges lead to the best discovered loss; a node links to its row below.</p><div class="scroll">'
                 + charts.lineage_graph(data, board) + "</div>"),
        _section("Fingerprints of the leaders", fingerprints(data, board, leaders)),
        _section("Leaderboard", leaderboard_table_html(board, limit=REPORT_ROWS, total=inputs.ranked_total)),
        _section("Confirmation", confirmation_html(data, board)),
    ]
    held_out = held_out_results(data)
    if held_out is not None:
        sections.append(_section("Held-out tasks", transfer_table_html(held_out)))
    operators = operator_stats(data)
    if operators:
        sections.append(_section("Mutation operators", charts.operator_success(operators) + operators_html(operators)))
    instructions = instruction_stats(data)
    if instructions:
        sections.append(_section("LLM instructions", charts.operator_success(instructions, "instruction")
                                 + operators_html(instructions, "instruction")))
    models = model_stats(data)
    if models:
        sections.append(_section("LLM models", charts.operator_success(models, "LLM model")
                                 + operators_html(models, "LLM model")))
    sections.append(_section("Throughput and failures", '<div class="plots">' + charts.throughput(data)
                             + charts.failures(data) + "</div>"))
    return _page(f"lossearch campaign {data.campaign.name}", "".join(sections))


def leaderboard_page(board: Leaderboard) -> str:
    """The leaderboard alone as an HTML document (`lossearch leaderboard --format html`)."""
    return _page(f"lossearch campaign {board.campaign}: leaderboard on {board.task}",
                 f"<h1>Campaign {escape(board.campaign)}: leaderboard on {escape(board.task)}</h1>"
                 + leaderboard_table_html(board))


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{body}<p class=\"muted\">Written by lossearch {__version__} on "
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p></body></html>\n")


def _section(title: str, body: str) -> str:
    return f"<h2>{escape(title)}</h2>{body}"


def _header(data: CampaignData, board: Leaderboard, statuses: Mapping[str, int]) -> str:
    campaign, config = data.campaign, data.campaign.config
    best = board.rows[0]
    facts = [("status", f"{campaign.status}" + (f" ({campaign.stop_reason})" if campaign.stop_reason else "")),
             ("selected on", data.task), ("proposer", str(config.get("proposer", "-"))),
             ("generations x population", f"{config.get('generations', '-')} x {config.get('population', '-')}"),
             ("finetune tier", "on" if config.get("finetune") else "off"),
             ("candidates", ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))),
             ("best", f"#{best.id} {best.name}: fitness {_num(best.fitness)} ({best.tier})"),
             ("created", f"{campaign.created_at:%Y-%m-%d %H:%M} UTC")]
    rows = "".join(f"<tr><th>{escape(key)}</th><td>{escape(value)}</td></tr>" for key, value in facts)
    return f"<h1>lossearch campaign {escape(campaign.name)}</h1><table>{rows}</table>"


def _sample_note(inputs: ReportInputs) -> str:
    if inputs.sampled_from is None:
        return ""
    return (f'<p class="muted">This campaign holds {inputs.sampled_from} candidates. Its plots, lineage graph and '
            f"operator tables are drawn from {len(inputs.data.candidates)} of them: a uniform sample of "
            f"{SAMPLED_ABOVE}, their parents, the seeds and the leaderboard's first {len(inputs.board.rows)} rows, "
            "so counts there are of that sample and shares are estimates from it. The leaderboard and the "
            "candidate counts above are of the whole campaign.</p>")


def _num(value: float | None, spread: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" + (f" ± {spread:.2g}" if spread else "")


# -- plots ---------------------------------------------------------------------------------


def fingerprints(data: CampaignData, board: Leaderboard, count: int) -> str:
    from lossearch.fingerprint import summarize

    rows = list(board.rows[:count])
    baseline = next((row for row in board.rows if row.is_baseline), None)
    if baseline is not None and baseline not in rows:
        rows.append(baseline)
    parts = ['<p class="muted">Each heatmap is the descent push −∂L/∂ρ on one log-ratio over a grid of '
             '(ρc, ρr), ρc up, ρr right: red raises it, blue lowers it, white leaves it (scaled per map).</p>']
    printed = data.fingerprints(row.id for row in rows)
    for row in rows:
        candidate, fingerprint = data.candidates[row.id], printed[row.id]
        if not fingerprint:
            continue
        summary = summarize(fingerprint).describe()
        parts.append(f'<div class="leader"><b>{_rank(row)} #{row.id} {escape(row.name)}</b> fitness '
                     f'{_num(row.fitness, row.fitness_std)} ({escape(row.tier or "-")})<br><span class="muted">'
                     f'{escape(summary)}</span><div class="plots">'
                     f"{charts.fingerprint_heatmaps(fingerprint)}</div>"
                     f"<details><summary>code</summary><pre>{escape(candidate.source)}</pre></details></div>")
    return "".join(parts)


def _rank(row: LeaderboardRow) -> str:
    return "DPO baseline" if row.is_baseline else (f"rank {row.rank}" if row.rank else "unranked")


# -- tables ----------------------------------------------------------------------------------


def leaderboard_table_html(board: Leaderboard, limit: int | None = None, total: int | None = None) -> str:
    """The leaderboard as a table, its first `limit` rows (all by default) of its `total` (its rows' count by
    default); each row is the target of its lineage node's link."""
    head = ("rank", "id", "name", "fitness", "reward", "kl", "pref_acc", "verdict", "tier", "gen", "parents",
            "proposer")
    rows = []
    for row in board.rows[:limit]:
        cells = [(_text(row.rank), "n"), (str(row.id), "n"), (row.name + (" (seed)" if row.is_seed else ""), ""),
                 (_num(row.fitness, row.fitness_std), "n"), (_num(row.reward), "n"), (_num(row.kl), "n"),
                 (_num(row.pref_acc), "n"), (row.verdict, VERDICT_CLASSES.get(row.verdict, "muted")),
                 (row.tier or "-", ""),
                 (str(row.generation), "n"), (", ".join(map(str, row.parents)) or "-", ""), (row.proposer, "")]
        css = "seed" if row.is_seed else ("failed" if row.rank is None else "")
        anchor = charts.CANDIDATE_LINK.format(id=row.id)[1:]
        rows.append(f'<tr class="{css}" id="{anchor}">'
                    + "".join(f'<td class="{c}">{escape(text)}</td>' for text, c in cells) + "</tr>")
    header = "".join(f"<th>{escape(name)}</th>" for name in head)
    note = VERDICT_NOTE[0].upper() + VERDICT_NOTE[1:]
    more = (len(board.rows) if total is None else total) - len(rows)
    rest = (f'<p class="muted">{more} more rows: <code>lossearch leaderboard</code> lists them all.</p>'
            if more > 0 else "")
    return (f'<p class="muted">{escape(note)}. Seeds (grey) are the baselines.</p>'
            f'<div class="scroll"><table><tr>{header}</tr>{"".join(rows)}</table></div>{rest}')


VERDICT_CLASSES = {"confirmed": "yes", "not confirmed": "no"}
COMPARISON_CLASSES = {"better": "yes", "worse": "no"}


def confirmation_html(data: CampaignData, board: Leaderboard) -> str:
    """Every stored confirmation record (in leaderboard order): its summary and its comparisons."""
    order = {row.id: index for index, row in enumerate(board.rows)}
    records = sorted(data.confirmations.values(), key=lambda record: (order.get(record.candidate_id, len(order)),
                                                                      record.candidate_id))
    if not records:
        return ('<p class="muted">No leader has been confirmed yet: every verdict above is "unconfirmed" until '
                "<code>lossearch confirm</code> retrains the leaders, DPO and the best seed on fresh seeds.</p>")
    parts = ['<p class="muted">Each leader retrained on seeds the search never saw, compared seed by seed with DPO '
             "and the best seed; difference = candidate − baseline, p one-sided (better), Holm p corrected over the "
             "leaders; collapse: the share of runs that diverged, candidate / baseline.</p>"]
    for record in records:
        candidate = data.candidates.get(record.candidate_id)
        name = candidate.name if candidate is not None else "?"
        facts = record.record
        verdict = "confirmed" if record.confirmed else "not confirmed"
        seeds = facts.get("seeds")
        parts.append(f'<div class="leader"><b>#{record.candidate_id} {escape(name)}</b>: '
                     f'<span class="{VERDICT_CLASSES[verdict]}">{verdict}</span><br>'
                     f"{escape(str(facts.get('summary', '')))}<br><span class='muted'>"
                     f"{len(seeds) if isinstance(seeds, list) else '?'} seeds, budget "
                     f"{escape(str(facts.get('budget', '-')))}, {escape(str(facts.get('precision', '-')))}, "
                     f"selected on {escape(str(facts.get('selected_on', '-')))}</span>"
                     f"{comparisons_html(facts.get('comparisons'))}</div>")
    return "".join(parts)


def comparisons_html(comparisons: Any) -> str:
    head = ("baseline", "task", "verdict", "difference", "95% CI", "p", "Holm p", "test", "seeds", "collapse")
    rows = []
    for comparison in comparisons if isinstance(comparisons, list) else ():
        if not isinstance(comparison, Mapping):
            continue
        verdict = str(comparison.get("verdict", "?"))
        seeds = comparison.get("seeds")
        cells = [(str(comparison.get("baseline", "?")), ""), (str(comparison.get("task", "?")), ""),
                 (verdict, COMPARISON_CLASSES.get(verdict, "muted")), (signed_3(comparison.get("difference")), "n"),
                 (interval(comparison.get("ci")), "n"), (p_value(comparison.get("p_value")), "n"),
                 (p_value(verdict_p(comparison)), "n"), (str(comparison.get("test", "-")), ""),
                 (str(len(seeds)) if isinstance(seeds, list) else "-", "n"), (collapse(comparison), "n")]
        rows.append("<tr>" + "".join(f'<td class="{c}">{escape(text)}</td>' for text, c in cells) + "</tr>")
    header = "".join(f"<th>{escape(name)}</th>" for name in head)
    return f'<div class="scroll"><table><tr>{header}</tr>{"".join(rows)}</table></div>' if rows else ""


def operators_html(operators: Mapping[str, OperatorStats], arm: str = "operator") -> str:
    """One row per mutation operator (or LLM instruction): its children and the share that improved on their parents."""
    rows = "".join(
        f'<tr><td>{escape(name)}</td><td class="n">{s.children}</td><td class="n">{s.valid}</td>'
        f'<td class="n">{s.improved}</td><td class="n">{rate(s.success_rate)}</td>'
        f'<td class="n">{s.gain:.3g}</td></tr>'
        for name, s in sorted(operators.items(), key=lambda item: -item[1].children))
    return (f'<p class="muted">Children of each {arm}, those the bandit tier scored (valid), those whose '
            "bandit-tier fitness beats their best parent's (improved, and its share of the children with a verdict), "
            f"and the summed gain: the record the proposer chooses its {arm}s by.</p>"
            f"<table><tr><th>{arm}</th><th>children</th><th>valid</th><th>improved</th><th>success</th>"
            f"<th>gain</th></tr>{rows}</table>")


def _text(value: int | None) -> str:
    return "-" if value is None else str(value)


def transfer_table_html(table: TransferTable) -> str:
    header = "".join(f"<th>{escape(name)}</th>" for name in
                     ("id", "name", f"{table.selected_on} (selected)",
                      *(column for task in table.tasks for column in (task, f"{task} Δ DPO"))))
    rows = []
    for row in table.rows:
        label = " (baseline)" if row.is_baseline else (" (seed)" if row.is_seed else "")
        cells = [f'<td class="n">{row.id}</td><td>{escape(row.name)}{label}</td>',
                 f'<td class="n">{_num(row.selected_fitness)}</td>']
        for task in table.tasks:
            cell = row.cells[task]
            text = cell.failure.split(":")[0] if cell.failure else _num(cell.fitness, cell.spread)
            delta = "-" if cell.dpo_delta is None else f"{cell.dpo_delta:+.4f}"
            cells.append(f'<td class="n">{escape(text)}</td><td class="n">{delta}</td>')
        rows.append(f'<tr class="{"seed" if row.is_seed else ""}">{"".join(cells)}</tr>')
    return (f'<p class="muted">Fitness on tasks the losses were not selected on ({escape(table.tier)} tier), and '
            "Δ DPO: minus DPO's fitness on that task, a raw difference and not a test (<code>lossearch confirm "
            f'--tasks</code> tests it).</p><div class="scroll"><table><tr>{header}</tr>{"".join(rows)}</table></div>')
