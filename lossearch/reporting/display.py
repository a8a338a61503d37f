"""The live view of a running campaign: one rich panel, refreshed as the loop records things."""

from __future__ import annotations

from types import TracebackType

from rich.columns import Columns
from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from lossearch.search.campaign import CampaignStats


def stats_table(stats: CampaignStats, title: str) -> Table:
    """The campaign's numbers as a two-column table."""
    table = Table(title=title, show_header=False, expand=False)
    table.add_column(style="bold")
    table.add_column()
    best = "-" if stats.best_fitness is None else f"{stats.best_fitness:.4f}  {stats.best_name}"
    rows = [
        ("generation", str(stats.generation)),
        ("proposed", str(stats.proposed)),
        ("rejected / duplicates", f"{stats.rejected} / {stats.duplicates}"),
        ("failed", str(stats.failed)),
        ("evaluated (finetuned)", f"{stats.evaluated} ({stats.finetuned})"),
        ("best fitness", best),
        ("seconds per candidate", f"{stats.seconds_per_candidate:.2f}"),
        ("LLM calls / tokens / cost", f"{stats.llm_calls} / {stats.llm_tokens} / ${stats.llm_cost:.4f}"),
    ]
    if stats.tier_agreement:
        rows.append(("bandit vs finetune", stats.tier_agreement))
    if stats.message:
        rows.append(("now", stats.message))
    for row in rows:
        table.add_row(*row)
    if stats.runs is not None:  # the candidate being finetuned: its training runs so far
        done, total = stats.runs
        table.add_row("runs", Columns([ProgressBar(total=max(total, 1), completed=done, width=30),
                                       f"{done:.0f}/{total:.0f}"]))
    return table


class CampaignDisplay:
    """A Live panel on a terminal; one line per generation elsewhere (logs, CI)."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self.live = Live(console=console, refresh_per_second=4, transient=False) if console.is_terminal else None
        self.last_generation = -1

    def __enter__(self) -> "CampaignDisplay":
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.live:
            self.live.__exit__(exc_type, exc, traceback)

    def update(self, stats: CampaignStats) -> None:
        if self.live:
            self.live.update(stats_table(stats, self.title))
        elif stats.completed_generation != self.last_generation:
            self.last_generation = stats.completed_generation
            best = "-" if stats.best_fitness is None else f"{stats.best_fitness:.4f} ({stats.best_name})"
            self.console.print(f"generation {stats.completed_generation} done: proposed {stats.proposed}, "
                               f"evaluated {stats.evaluated} (finetuned {stats.finetuned}), failed {stats.failed}, "
                               f"duplicates {stats.duplicates}, best {best}", markup=False)
            if stats.tier_agreement:
                self.console.print(f"  bandit vs finetune: {stats.tier_agreement}", markup=False)
