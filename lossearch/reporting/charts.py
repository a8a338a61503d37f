"""The campaign's charts, drawn by matplotlib as SVG: one set for `lossearch report` and `lossearch serve`.

Each function takes a snapshot (lossearch.ranking.CampaignData) and returns one `<svg>`
element to inline in a page: no script, no fetched font (text stays text, in the page's own
sans-serif), so the report stays one offline file and the dashboard serves nothing from the
network. Names, ideas and other store strings are untrusted: matplotlib escapes the text it
writes into the SVG, mathtext is off for every label (a `$` in a name is a dollar), and the
tooltips added here are escaped too.

Large campaigns stay readable and small: scatter plots of more than `RASTER_ABOVE` points are
drawn as one embedded image (the axes, labels and legend stay vector), and the lineage graph
shows at most `LINEAGE_NODES` candidates (seeds, each generation's best, and every leader's
ancestry), saying how many it left out.
"""

from __future__ import annotations

import functools
import io
import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from html import escape
from typing import TYPE_CHECKING, Any, ParamSpec

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from lossearch.ranking import CampaignData, OperatorStats
    from lossearch.reporting.results import Leaderboard
    from lossearch.store.values import LLMCall

P = ParamSpec("P")
_DRAWING = threading.Lock()
TIER_COLOURS = {"sanity": "#2ca02c", "bandit": "#1f77b4", "finetune": "#ff7f0e", "confirm": "#9467bd"}
SEED_COLOUR = "#8c8c8c"
HIGHLIGHT = "#d62728"
RASTER_ABOVE = 2000
"""Scatter plots with more points than this are embedded as one image inside the SVG."""
LINEAGE_NODES = 400
"""The most candidates the lineage graph draws; the rest are counted in its caption."""
LABELLED_NODES = 60
"""Lineage graphs with at most this many nodes name every node; larger ones name them in tooltips only."""
CANDIDATE_LINK = "#candidate-{id}"
"""Where a lineage node links to: the dashboard opens that candidate, the report jumps to its row."""
RC: dict[Any, Any] = {"svg.fonttype": "none", "font.family": "sans-serif", "font.size": 9, "axes.titlesize": 10,
      "axes.spines.top": False, "axes.spines.right": False, "legend.fontsize": 8, "legend.frameon": False,
      "text.parse_math": False}
"""Text stays text (small, selectable, searchable by a browser test); no math parsing of names."""


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _svg(figure: Figure, tips: dict[str, str] | None = None) -> str:
    """The figure as one `<svg>` element; `tips` adds a tooltip to each linked node (href -> text)."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML prologue and doctype: the SVG is inlined in HTML
    if tips:
        svg = re.sub(r'<a xlink:href="([^"]+)">', lambda m: f'{m.group(0)}<title>{escape(tips.get(m.group(1), ""))}'
                     "</title>", svg)
    return svg


def draw(function: Callable[P, str]) -> Callable[P, str]:
    """Run a chart function under the charts' matplotlib settings (not the user's rc file's)."""

    @functools.wraps(function)
    def drawn(*args: P.args, **kwargs: P.kwargs) -> str:
        import matplotlib

        with _DRAWING, matplotlib.rc_context(RC):  # rc settings are global: one chart at a time
            return function(*args, **kwargs)

    return drawn


def _empty(axes: Axes, text: str, title: str = "") -> None:
    axes.set_title(title)
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="#777")
    axes.set_axis_off()


def _integer_x(axes: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _scatter(axes: Axes, xs: Sequence[float], ys: Sequence[float], **style: Any) -> None:
    """Points; past `RASTER_ABOVE` of them, smaller, fainter and drawn as one image (the file stays small)."""
    if not xs:
        return
    crowded = len(xs) > RASTER_ABOVE
    if crowded:
        style = style | {"s": 4, "alpha": 0.35}
    axes.scatter(xs, ys, rasterized=crowded, linewidths=0 if crowded else 0.4, **style)


def _legend_below(figure: Figure, axes: Axes) -> None:
    """The legend under the plot, where no point or label can hide it."""
    handles, labels = axes.get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 4))


def tiers(data: CampaignData) -> list[str]:
    """The cascade tiers that scored some candidate on the campaign's task, cheapest first."""
    present = {e.tier for evaluations in data.evaluations.values() for e in evaluations
               if e.task == data.task and e.fitness is not None}
    return [tier for tier in ("bandit", "finetune") if tier in present]


# -- fitness ---------------------------------------------------------------------------------


@draw
def fitness_by_generation(data: CampaignData) -> str:
    """Every candidate's fitness by generation, one panel per tier (their scales differ), with the best so far."""
    shown = tiers(data)
    figure = _figure(4.2 * max(len(shown), 1), 3.0)
    panels = figure.subplots(1, max(len(shown), 1), squeeze=False)[0]
    if not shown:
        _empty(panels[0], "no candidate has a fitness yet")
    for axes, tier in zip(panels, shown):
        points = {"seed": ([], []), "child": ([], [])}  # type: dict[str, tuple[list[float], list[float]]]
        best: dict[int, float] = {}
        for index, candidate in enumerate(data.candidates.values()):
            score = data.score(candidate.id, tier=tier)
            if score is None:
                continue
            xs, ys = points["seed" if candidate.proposer == "seed" else "child"]
            xs.append(candidate.generation + ((index * 7) % 9 - 4) * 0.035)  # a little jitter: points stay apart
            ys.append(score.fitness)
            best[candidate.generation] = max(best.get(candidate.generation, score.fitness), score.fitness)
        _scatter(axes, *points["seed"], s=14, marker="s", color=SEED_COLOUR, label="seeds", alpha=0.8)
        _scatter(axes, *points["child"], s=14, color=TIER_COLOURS[tier], label="children", alpha=0.8)
        generations = sorted(best)
        running = [max(best[g] for g in generations[:i + 1]) for i in range(len(generations))]
        axes.step(generations, running, where="post", color="#222", linewidth=1.2, label="best so far")
        axes.set(title=f"{tier} tier", xlabel="generation", ylabel=f"fitness on {data.task}")
        _integer_x(axes)
    _legend_below(figure, panels[0])
    return _svg(figure)


@draw
def fitness_over_time(data: CampaignData) -> str:
    """The best fitness found so far against minutes since the campaign started, per tier."""
    figure = _figure(4.6, 3.0)
    axes = figure.subplots()
    start = data.campaign.created_at
    drawn = False
    for tier in tiers(data):
        times, best, running = [], [], -math.inf
        scored = sorted((e.created_at, e.fitness) for evaluations in data.evaluations.values() for e in evaluations
                        if e.tier == tier and e.task == data.task and e.fitness is not None)
        for moment, fitness in scored:
            running = max(running, float(fitness))
            times.append(_minutes(moment, start))
            best.append(running)
        if times:
            axes.step(times, best, where="post", color=TIER_COLOURS[tier], label=f"best so far ({tier})")
            drawn = True
    if not drawn:
        _empty(axes, "no candidate has a fitness yet", "Best fitness over time")
        return _svg(figure)
    axes.set(title="Best fitness over time", xlabel="minutes since the campaign started",
             ylabel=f"fitness on {data.task}")
    axes.legend(loc="lower right")
    return _svg(figure)


def _minutes(moment: datetime, start: datetime) -> float:
    return max((moment - start).total_seconds() / 60, 0.0)


@draw
def reward_against_kl(data: CampaignData, tier: str) -> str:
    """Reward against KL for every candidate scored at `tier`; seeds grey squares, DPO a black star,
    the three best children named, the task's KL budget dashed."""
    figure = _figure(4.8, 3.4)
    axes = figure.subplots()
    scored = [(c, s) for c in data.candidates.values() if (s := data.score(c.id, tier=tier)) is not None
              and "reward" in s.metrics and "kl" in s.metrics]
    if not scored:
        _empty(axes, f"no reward and KL at the {tier} tier yet", f"Reward against KL ({tier} tier, {data.task})")
        return _svg(figure)
    baseline = data.baseline
    seeds = [(s.metrics["kl"], s.metrics["reward"]) for c, s in scored if c.proposer == "seed"]
    children = [(c, s) for c, s in scored if c.proposer != "seed"]
    _scatter(axes, [x for x, _ in seeds], [y for _, y in seeds], s=16, marker="s", color=SEED_COLOUR, label="seeds")
    _scatter(axes, [s.metrics["kl"] for _, s in children], [s.metrics["reward"] for _, s in children], s=14,
             color=TIER_COLOURS.get(tier, "#1f77b4"), alpha=0.8, label="discovered")
    for candidate, score in scored:
        if baseline is not None and candidate.id == baseline.id:
            axes.scatter([score.metrics["kl"]], [score.metrics["reward"]], s=90, marker="*", color="#000",
                         label="DPO", zorder=3)
    for candidate, score in sorted(children, key=lambda pair: -pair[1].fitness)[:3]:
        axes.annotate(_short(candidate.name), (score.metrics["kl"], score.metrics["reward"]), fontsize=7,
                      xytext=(4, 3), textcoords="offset points")
    budgets = [s.metrics["kl_budget"] for _, s in scored if "kl_budget" in s.metrics]
    if budgets:
        axes.axvline(budgets[0], color="#555", linestyle="--", linewidth=0.9, label=f"KL budget {budgets[0]:g}")
    axes.set(title=f"Reward against KL ({tier} tier, {data.task})", xlabel="KL(policy ‖ reference), nats",
             ylabel="oracle reward")
    _legend_below(figure, axes)
    return _svg(figure)


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


# -- lineage ---------------------------------------------------------------------------------


def lineage_shown(data: CampaignData, board: Leaderboard, limit: int | None = None) -> list[int]:
    """The candidates the lineage graph draws: all when they fit, else the seeds, the ancestry of the ten
    best, then each generation's best in turn, up to `limit` (`LINEAGE_NODES`)."""
    limit = LINEAGE_NODES if limit is None else limit
    if len(data.candidates) <= limit:
        return list(data.candidates)
    chosen: dict[int, None] = dict.fromkeys(c.id for c in data.candidates.values() if c.proposer == "seed")
    for row in board.rows[:10]:
        chosen.update(dict.fromkeys(ancestry(data, row.id)))
    order = {row.id: index for index, row in enumerate(board.rows)}
    by_generation: dict[int, list[int]] = {}
    for candidate in sorted(data.candidates.values(), key=lambda c: order.get(c.id, len(order))):
        by_generation.setdefault(candidate.generation, []).append(candidate.id)
    depth = 0
    while len(chosen) < limit and any(depth < len(ids) for ids in by_generation.values()):
        for ids in by_generation.values():
            if depth < len(ids) and len(chosen) < limit:
                chosen.setdefault(ids[depth])
        depth += 1
    return list(chosen)


def ancestry(data: CampaignData, candidate_id: int) -> set[int]:
    """The candidate and every ancestor of it in the snapshot (a sampled one may hold a child without its parent)."""
    found, stack = {candidate_id}, [candidate_id]
    while stack:
        for edge in data.parents.get(stack.pop(), ()):
            if edge.parent_id not in found and edge.parent_id in data.candidates:
                found.add(edge.parent_id)
                stack.append(edge.parent_id)
    return found


@draw
def lineage_graph(data: CampaignData, board: Leaderboard) -> str:
    """Candidates by generation (x) and their place in it (y, best on top), parents joined to children;
    colour is the leaderboard rank, seeds are squares, the best discovery's ancestry is red. Each node
    links to `CANDIDATE_LINK` and carries a tooltip."""
    from matplotlib.collections import LineCollection

    shown = lineage_shown(data, board)
    order = {row.id: index for index, row in enumerate(board.rows)}
    place: dict[int, tuple[float, float]] = {}
    rows_in: Counter[int] = Counter()
    for candidate_id in sorted(shown, key=lambda i: (data.candidates[i].generation, order.get(i, len(order)), i)):
        generation = data.candidates[candidate_id].generation
        place[candidate_id] = (generation, -rows_in[generation])
        rows_in[generation] += 1
    tallest = max(rows_in.values(), default=1)
    figure = _figure(min(2.0 + 1.9 * len(rows_in), 16), min(1.4 + 0.16 * tallest, 40))
    axes = figure.subplots()
    best = next((row for row in board.rows if not row.is_seed), board.rows[0] if board.rows else None)
    red = ancestry(data, best.id) if best is not None else set()
    edges = [(edge.parent_id, child) for child in place for edge in data.parents.get(child, ())
             if edge.parent_id in place]
    for highlight in (False, True):
        segments = [(place[p], place[c]) for p, c in edges if (p in red and c in red) == highlight]
        axes.add_collection(LineCollection(segments, colors=HIGHLIGHT if highlight else "#9aa",
                                           linewidths=1.6 if highlight else 0.6, zorder=1))
    ranked = len(order) or 1
    tips: dict[str, str] = {}
    for is_seed in (True, False):
        ids = [i for i in place if (data.candidates[i].proposer == "seed") == is_seed]
        if not ids:
            continue
        colours = [_rank_colour(order.get(i), ranked) for i in ids]
        points = axes.scatter([place[i][0] for i in ids], [place[i][1] for i in ids], s=36 if is_seed else 30,
                              marker="s" if is_seed else "o", c=colours, edgecolors="#333", linewidths=0.5, zorder=2,
                              label="seeds" if is_seed else "children")
        points.set_urls([CANDIDATE_LINK.format(id=i) for i in ids])
        tips.update((CANDIDATE_LINK.format(id=i), _node_tip(data, i, order)) for i in ids)
    for candidate_id in place if len(place) <= LABELLED_NODES else ():  # larger graphs: names in the tooltips
        x, y = place[candidate_id]
        axes.annotate(f"#{candidate_id} {_short(data.candidates[candidate_id].name, 24)}", (x, y), fontsize=6.5,
                      xytext=(5, -2), textcoords="offset points")
    left_out = len(data.candidates) - len(place)
    axes.set(title=f"Lineage of {data.campaign.name}" + (f" ({len(place)} of {len(data.candidates)} candidates: "
                                                         f"seeds, leaders' ancestry, each generation's best)"
                                                         if left_out else ""),
             xlabel="generation", ylabel="place in its generation (best on top)")
    axes.set_xlim(-0.4, max(rows_in, default=0) + 0.9)
    axes.set_ylim(-tallest + 0.3, 0.7)
    axes.set_yticks([])
    _integer_x(axes)
    _legend_below(figure, axes)
    return _svg(figure, tips)


def _rank_colour(rank: int | None, ranked: int) -> Any:
    import matplotlib

    if rank is None:
        return "#bbbbbb"
    return matplotlib.colormaps["viridis"](1 - rank / max(ranked - 1, 1))


def _node_tip(data: CampaignData, candidate_id: int, order: dict[int, int]) -> str:
    candidate = data.candidates[candidate_id]
    score = data.score(candidate_id)
    fitness = f"fitness {score.fitness:.4g} ({score.tier})" if score is not None else candidate.status
    place = f"rank {order[candidate_id] + 1}" if candidate_id in order else "unranked"
    return f"#{candidate_id} {candidate.name}: {fitness}, {place}, generation {candidate.generation}"


# -- fingerprints ----------------------------------------------------------------------------


@draw
def fingerprint_heatmaps(fingerprint: Sequence[float]) -> str:
    """The descent push −∂L/∂ρ on ρc and on ρr over the (ρc, ρr) grid: two heatmaps sharing one scale."""
    from lossearch.fingerprint import GRID_VALUES  # imports torch: only pages with fingerprints pay for it

    size = len(GRID_VALUES)
    figure = _figure(5.6, 2.6)
    panels = figure.subplots(1, 2)
    grids = [[[-v for v in fingerprint[offset + row * size:offset + (row + 1) * size]] for row in range(size)]
             for offset in (0, size * size)]  # row i: ρc = GRID[i]; column j: ρr = GRID[j]
    scale = max((abs(v) for grid in grids for row in grid for v in row), default=1.0) or 1.0
    ticks = list(range(0, size, 2))  # the grid is denser near 0: cells are equal, the ticks say where they are
    labels = [f"{GRID_VALUES[i]:g}" for i in ticks]
    image = None
    for axes, grid, what in zip(panels, grids, ("ρc (chosen)", "ρr (rejected)")):
        image = axes.imshow(grid, origin="lower", cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto",
                            interpolation="nearest")
        axes.set(title=f"push on {what}", xlabel="ρr, nats", ylabel="ρc, nats", xticks=ticks, yticks=ticks,
                 xticklabels=labels, yticklabels=labels)
    if image is not None:
        figure.colorbar(image, ax=list(panels), label="−∂L/∂ρ", shrink=0.9)
    return _svg(figure)


# -- the campaign's machinery ----------------------------------------------------------------


@draw
def operator_success(stats: dict[str, OperatorStats], arm: str = "operator") -> str:
    """Per mutation operator (or LLM instruction): the share of its children that beat their best parent."""
    figure = _figure(4.8, 0.8 + 0.24 * max(len(stats), 1))
    axes = figure.subplots()
    if not stats:
        _empty(axes, f"no {arm} has children yet", f"Children that beat their best parent, by {arm}")
        return _svg(figure)
    ordered = sorted(stats.values(), key=lambda s: (s.success_rate or 0.0, s.children))
    shares = [100 * (s.success_rate or 0.0) for s in ordered]
    axes.barh([s.operator for s in ordered], shares, color="#4c72b0")
    for y, s in enumerate(ordered):
        axes.annotate(f"{s.improved}/{s.scored} ({s.children} children)", (shares[y], y), fontsize=7,
                      xytext=(3, -3), textcoords="offset points")
    axes.set(title=f"Children that beat their best parent, by {arm}", xlabel="% of children with a verdict")
    axes.set_xlim(0, max(max(shares) * 1.6, 10))
    return _svg(figure)


@draw
def throughput(data: CampaignData) -> str:
    """Evaluations finished per minute by tier, and candidates proposed, over the campaign's time."""
    figure = _figure(4.6, 3.0)
    axes = figure.subplots()
    start = data.campaign.created_at
    by_tier: dict[str, list[float]] = {}
    for evaluations in data.evaluations.values():
        for evaluation in evaluations:
            by_tier.setdefault(evaluation.tier, []).append(_minutes(evaluation.created_at, start))
    if not by_tier:
        _empty(axes, "no evaluation yet", "Evaluations finished")
        return _svg(figure)
    end = max(max(times) for times in by_tier.values())
    bins = max(1, min(60, math.ceil(end)))
    for tier, times in sorted(by_tier.items(), key=lambda item: list(TIER_COLOURS).index(item[0])
                              if item[0] in TIER_COLOURS else len(TIER_COLOURS)):
        axes.hist(times, bins=bins, range=(0, max(end, 1e-9)), histtype="step", linewidth=1.2,
                  color=TIER_COLOURS.get(tier), label=tier)
    axes.set(title="Evaluations finished", xlabel="minutes since the campaign started",
             ylabel=f"evaluations per {max(end, 1e-9) / bins:.2g} min")
    axes.legend(loc="upper right")
    return _svg(figure)


@draw
def failures(data: CampaignData) -> str:
    """Candidates that failed, by kind (policy, timeout, nan, ...), and the duplicates the fingerprint caught."""
    kinds = Counter(c.failure_kind or c.status for c in data.candidates.values()
                    if c.status in ("failed", "rejected", "duplicate"))
    figure = _figure(4.2, 0.8 + 0.24 * max(len(kinds), 1))
    axes = figure.subplots()
    if not kinds:
        _empty(axes, "no candidate has failed", "Failures by kind")
        return _svg(figure)
    names, counts = zip(*sorted(kinds.items(), key=lambda item: item[1]))
    axes.barh(names, counts, color="#c44e52")
    axes.set(title=f"Failures by kind ({sum(counts)} of {len(data.candidates)} candidates)", xlabel="candidates")
    _integer_x(axes)
    return _svg(figure)


@draw
def llm_usage(calls: Iterable[LLMCall], start: datetime) -> str:
    """Tokens and dollars spent on LLM calls, cumulative over the campaign's time."""
    ordered = sorted(calls, key=lambda call: call.created_at)
    figure = _figure(4.6, 3.0)
    axes = figure.subplots()
    if not ordered:
        _empty(axes, "no LLM call (the offline proposer needs none)", "LLM calls")
        return _svg(figure)
    times = [_minutes(call.created_at, start) for call in ordered]
    tokens: list[int] = []
    cost: list[float] = []
    for call in ordered:
        tokens.append((tokens[-1] if tokens else 0) + call.prompt_tokens + call.completion_tokens)
        cost.append((cost[-1] if cost else 0.0) + call.cost)
    axes.step(times, tokens, where="post", color="#4c72b0", label="tokens")
    axes.set(title=f"LLM calls: {len(ordered)}, {tokens[-1]:,} tokens, ${cost[-1]:.2f}",
             xlabel="minutes since the campaign started", ylabel="tokens (cumulative)")
    dollars = axes.twinx()
    dollars.step(times, cost, where="post", color="#dd8452", label="US dollars")
    dollars.set_ylabel("US dollars (cumulative)")
    dollars.spines["right"].set_visible(True)
    return _svg(figure)
