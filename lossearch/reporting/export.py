"""Export discovered losses as standalone Python modules (DESIGN §5: leaderboard/).

An exported module is the candidate's own code, unchanged, under a docstring
that records where it came from (campaign, parents, metrics, the confirmation stage's
verdict, date), followed by
the TRL adapter of lossearch.reporting.trl_adapter and two one-line entry points bound to
this module's `loss`. It imports torch (and the stdlib `math` where the loss
does) and nothing else at import time, so the loss runs anywhere torch does;
TRL is imported only when the adapter is used.

Because the code is the stored code, `loss` gives exactly the values of the
stored candidate.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lossearch import __version__
from lossearch.contract import EXPORTED_ADAPTER_MARKER, parse_spec
from lossearch.errors import ConfigError
from lossearch.failures import CandidateError
from lossearch.ranking import CampaignData, load_campaign_part
from lossearch.reporting.results import (
    NoResults,
    confirmation_summary,
    find_candidate,
    first_page,
    verdict_of,
)
from lossearch.store import BASELINE_SEED, Candidate
from lossearch.store.locate import CampaignHandle

ENTRY_POINTS = '''

def dpo_trainer_class(**hyperparameters):
    """A trl.DPOTrainer subclass that trains with this module's `loss` (beta from DPOConfig.beta)."""
    return make_dpo_trainer_class(loss, **hyperparameters)


def use_in_dpo_trainer(trainer, **hyperparameters):
    """Make an existing trl.DPOTrainer train with this module's `loss`; returns the trainer."""
    return patch_dpo_trainer(trainer, loss, **hyperparameters)
'''
ADDED_NAMES = frozenset({"make_dpo_trainer_class", "patch_dpo_trainer", "dpo_trainer_class", "use_in_dpo_trainer",
                         "TUNED_BETA", "TUNED_HYPERPARAMETERS"})


class ExportError(ConfigError):
    """The candidate cannot be exported (its code does not parse, or clashes with the adapter's names)."""


@dataclass(frozen=True)
class ExportedModule:
    candidate_id: int
    name: str
    source: str
    path: Path | None = None


def module_name(candidate: Candidate, rank: int | None = None) -> str:
    """A file stem that is a valid module name: `rank01_name` or `name`."""
    stem = re.sub(r"\W+", "_", candidate.name).strip("_").lower() or f"candidate_{candidate.id}"
    if stem[0].isdigit():
        stem = f"loss_{stem}"
    return f"rank{rank:02d}_{stem}" if rank is not None else stem


def export_candidate(handle: CampaignHandle, ident: str | int, out: str | Path | None = None) -> ExportedModule:
    """The module for one candidate, written to `out` when given (from a snapshot of it and its parents)."""
    found = find_candidate(handle.store, handle.campaign, ident)
    data = _with_parents(handle, [found.id])
    candidate = data.candidates[found.id]
    exported = ExportedModule(candidate.id, module_name(candidate), module_source(data, candidate))
    return _write(exported, Path(out)) if out is not None else exported


def export_top(handle: CampaignHandle, top: int, out_dir: str | Path) -> list[ExportedModule]:
    """The top `top` of the leaderboard as modules in `out_dir`, with a README.md holding the leaderboard."""
    from lossearch.reporting.views import leaderboard_markdown

    if top < 1:
        raise ConfigError("--top must be at least 1")
    board, _ = first_page(handle.store, handle.campaign, top, count=False)
    if not board.rows:
        raise NoResults(f"campaign {handle.campaign.name!r} has no ranked candidate to export yet")
    data = _with_parents(handle, [row.id for row in board.rows])
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[ExportedModule] = []
    listing: list[str] = []
    for row in board.rows:
        candidate = data.candidates[row.id]
        exported = ExportedModule(candidate.id, module_name(candidate, row.rank), module_source(data, candidate))
        path = folder / f"{exported.name}.py"
        written.append(_write(exported, path))
        listing.append(f"- [{path.name}]({path.name}): #{candidate.id} {candidate.name}")
    files = "\n".join(listing)
    (folder / "README.md").write_text(f"{leaderboard_markdown(board)}\n## Modules\n\n{files}\n\n"
                                      f"Exported by lossearch {__version__} on {_today()}.\n", encoding="utf-8")
    return written


def _with_parents(handle: CampaignHandle, candidate_ids: list[int]) -> CampaignData:
    """A snapshot of the candidates, their parents (named in the provenance) and DPO (the baseline)."""
    store, campaign = handle.store, handle.campaign
    parents = [edge.parent_id for edge in store.parents_of(candidate_ids)]
    baseline = [c.id for c in store.candidates(campaign.id, name=BASELINE_SEED, fingerprints=False)]
    return load_campaign_part(store, campaign, [*candidate_ids, *parents, *baseline])


def _write(exported: ExportedModule, path: Path) -> ExportedModule:
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(exported.source, encoding="utf-8")
    return ExportedModule(exported.candidate_id, exported.name, exported.source, path)


def module_source(data: CampaignData, candidate: Candidate) -> str:
    """The standalone module: provenance docstring, future imports, the candidate's code, the adapter."""
    try:
        spec = parse_spec(candidate.source, candidate.name)
        tree = ast.parse(candidate.source)
    except (CandidateError, SyntaxError) as error:
        raise ExportError(f"candidate #{candidate.id} {candidate.name} cannot be exported: its code does not parse "
                          f"({error})") from None
    clashes = _top_level_names(tree) & ADDED_NAMES
    if clashes:
        raise ExportError(f"candidate #{candidate.id} defines {', '.join(sorted(clashes))}, which the export adds")
    body, futures = _split_source(candidate.source, tree)
    beta, values = _tuned(data, candidate, spec.hyperparameters["beta"])
    parts = [_quote_docstring(provenance(data, candidate, ast.get_docstring(tree) or "", beta, values))]
    parts += futures
    parts.append(body.strip("\n"))
    parts.append(f"\n\n# the beta the campaign found best for this loss; pass it as DPOConfig(beta=TUNED_BETA)\n"
                 f"TUNED_BETA = {beta!r}")
    parts.append("# the other hyperparameters the campaign's tuning moved from their defaults (empty: none);\n"
                 "# pass them as dpo_trainer_class(**TUNED_HYPERPARAMETERS)\n"
                 f"TUNED_HYPERPARAMETERS = {values!r}")
    parts.append("\n\n" + adapter_source().strip("\n") + "\n" + ENTRY_POINTS)
    return "\n".join(parts).rstrip("\n") + "\n"


def adapter_source() -> str:
    """lossearch.reporting.trl_adapter from its marker line on: the part every exported module carries."""
    text = (Path(__file__).resolve().parent / "trl_adapter.py").read_text(encoding="utf-8")
    return text[text.index(EXPORTED_ADAPTER_MARKER):]


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
    return names


def _split_source(source: str, tree: ast.Module) -> tuple[str, list[str]]:
    """The source without its module docstring and `from __future__` lines, and those lines."""
    lines = source.splitlines()
    dropped: set[int] = set()
    futures = []
    for index, node in enumerate(tree.body):
        is_docstring = (index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                        and isinstance(node.value.value, str))
        is_future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        if is_docstring or is_future:
            assert node.end_lineno is not None  # ast.parse sets every statement's end line
            span = range(node.lineno - 1, node.end_lineno)
            if is_future:
                futures.append("\n".join(lines[line] for line in span))
            dropped.update(span)
    return "\n".join(line for number, line in enumerate(lines) if number not in dropped), futures


def _tuned(data: CampaignData, candidate: Candidate, default: float) -> tuple[float, dict[str, float]]:
    """The best trial's beta and other hyperparameters (those tuning drew; {} when it drew none)."""
    score = data.score(candidate.id)
    metrics: dict[str, Any] = dict(score.metrics) if score is not None else {}
    beta = metrics.get("beta")
    values = {name: float(value) for name, value in (metrics.get("hyperparameters") or {}).items()}
    return (float(beta) if beta is not None else float(default)), values


def provenance(data: CampaignData, candidate: Candidate, original_doc: str, beta: float,
               values: dict[str, float]) -> str:
    """The exported module's docstring."""
    config = data.campaign.config
    parents = [f"#{edge.parent_id} {data.candidates[edge.parent_id].name} ({edge.relation})"
               for edge in data.parents.get(candidate.id, ()) if edge.parent_id in data.candidates]
    summary = original_doc.strip().splitlines()[0] if original_doc.strip() else "a preference-optimization loss"
    lines = [
        f"{candidate.name}: {summary}", "",
        "Provenance (written by `lossearch export`)", "-" * 42,
        f"campaign:   {data.campaign.name} (selected on task {data.task}, proposer {config.get('proposer', '-')}, "
        f"seed {config.get('seed', 0)})",
        f"candidate:  #{candidate.id}, generation {candidate.generation}, island {candidate.island}, status "
        f"{candidate.status}, tier {candidate.tier or '-'}",
        f"written by: {candidate.proposer}" + (f" ({candidate.model})" if candidate.model else "")
        + (" -- a seed loss from the literature, one of the baselines" if candidate.proposer == "seed" else ""),
        f"idea:       {candidate.idea or '-'}",
        f"parents:    {', '.join(parents) if parents else 'none'}",
        f"verdict:    {verdict_line(data, candidate)}",
        "metrics:",
        *_metric_lines(data, candidate),
        f"tuned beta: {beta:g} (TUNED_BETA)",
        *([f"tuned:      {', '.join(f'{name} {value:.4g}' for name, value in values.items())} "
           "(TUNED_HYPERPARAMETERS)"] if values else []),
        f"code hash:  {candidate.code_hash[:16]}",
        f"created:    {candidate.created_at:%Y-%m-%d %H:%M} UTC; exported {_today()} by lossearch {__version__}",
        "", "Train with TRL", "-" * 14,
        "    from trl import DPOConfig",
        "    Trainer = dpo_trainer_class(**TUNED_HYPERPARAMETERS)  # a trl.DPOTrainer subclass using `loss`",
        "    trainer = Trainer(model=model, args=DPOConfig(beta=TUNED_BETA, ...), train_dataset=pairs,",
        "                      processing_class=tokenizer)",
        "    trainer.train()",
        "", "or switch a trainer you already built: `use_in_dpo_trainer(trainer)`. This module imports only",
        "torch (and math); TRL is imported when the adapter is used.",
    ]
    if original_doc.strip():
        lines += ["", "The candidate's own description", "-" * 31, original_doc.strip()]
    return "\n".join(lines) + "\n"


VERDICT_EXPLANATIONS = {
    "unconfirmed": "unconfirmed (not compared with DPO on fresh seeds; run `lossearch confirm`)",
    "seed": "seed (a baseline from the seed library, not a discovery)",
    "baseline": "baseline (DPO, what discoveries are confirmed against)",
}


def verdict_line(data: CampaignData, candidate: Candidate) -> str:
    """The verdict (lossearch.reporting.results.verdict_of), with the confirmation's summary where there is one."""
    verdict = verdict_of(data, candidate)
    summary = confirmation_summary(data, candidate.id)
    if summary is None:
        return VERDICT_EXPLANATIONS.get(verdict, verdict)
    summary = " ".join(summary.split())  # one line, whatever the record holds
    return summary if summary.startswith(verdict) else f"{verdict}: {summary}"


def _metric_lines(data: CampaignData, candidate: Candidate) -> list[str]:
    seen = sorted({(e.tier, e.task) for e in data.evaluations.get(candidate.id, ()) if e.fitness is not None})
    lines = []
    for tier, task in seen:
        score = data.score(candidate.id, task, tier)
        if score is None:
            continue
        values = ", ".join(f"{key} {score.metrics[key]:.4g}" for key in ("reward", "kl", "pref_acc")
                           if key in score.metrics)
        spread = f" ± {score.spread:.2g}" if score.spread else ""
        lines.append(f"    {tier} tier, {task}: fitness {score.fitness:.4g}{spread}, {values} "
                     f"({score.seeds} evaluation(s))")
    return lines or ["    none recorded"]


def _quote_docstring(text: str) -> str:
    """`text` as a triple-quoted literal, escaped so that any text round-trips."""
    escaped = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if escaped.endswith('"'):
        escaped += "\n"
    return f'"""{escaped}"""'


def _today() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")
