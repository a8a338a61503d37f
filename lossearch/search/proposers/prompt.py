"""What the LLM proposer says to the model, and how it reads the answer.

`build_messages` writes the chat: a system message with the loss contract and
the reply format, and a user message with the task, how to read the numbers
(DPO's fitness and the noise of one loss, per tier), the leaders (code, fitness
labelled with its tier and spread, metrics, fingerprint summary), the parent(s),
the proposer's own notes and earlier proposals with their outcomes, recent
failures, and the instruction (INSTRUCTIONS). `notes_messages` asks for the notes.
`parse_reply` reads a reply leniently: a JSON object (bare, fenced or inside
prose), else a fenced Python block; the code must pass `parse_spec`.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from lossearch.contract import CONTRACT_INPUTS, parse_spec
from lossearch.failures import CandidateError
from lossearch.search.proposers.base import IdeaRecord, ParentView, ProposalContext
from lossearch.search.proposers.syntax import identifier, quote_docstring

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

MAX_SHOWN_SOURCE = 4000
FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)

SYSTEM_PROMPT = """\
You are a research scientist who designs new preference-optimization losses (the DPO family).
A loss is one Python module that defines a function named `loss`; it is trained into a small
language model on preference pairs and scored by an oracle reward at a KL budget.

## The loss contract
`loss` takes any of these parameters, by exactly these names; the trainer passes only those it asks for.
Every tensor has shape (B,), one entry per preference pair, except those marked "()": 0-dim tensors,
one value for the whole batch, kept by the trainer (the loss itself keeps no state between calls),
and those marked "(B, T)": one entry per response token, in order, T the batch's widest response,
0 where the mask is 0 (find a response's first k tokens with `mask.cumsum(-1) <= k`).
Scores exist only where the data has them: on data without scores a loss that reads them fails.

{inputs}

Any other parameter is a hyperparameter and must have a float default (`gamma: float = 0.5`).
Return a (B,) tensor of per-pair losses (a scalar is accepted and broadcast); the trainer takes the mean.
It must be finite, and differentiable with respect to the policy log-probs.

## Rules (checked before the code ever runs)
- Imports: only `torch`, `torch.nn.functional` (as `F`) and `math`.
- Module level: a docstring, imports, function definitions and `NAME = constant` only.
- Plain tensor arithmetic: no attribute starting with `_`, no in-place methods (`x.add_()`),
  no assignment to items or attributes (`x[0] = ...`), no `.grad`, `.data`, `.backward()`,
  hooks, `torch.autograd`, `torch.no_grad`, files, `eval`/`exec`/`getattr`, classes, `try`, `with`.
- Start the module with a docstring: one line saying what the loss is and why it should work.

## Reply format
Reply with one JSON object and nothing else:
{{"thought": "<why this loss should do better, in two or three sentences>",
 "name": "<a short snake_case name>",
 "code": "<the complete Python module, as a JSON string>"}}
"""

EXAMPLE = '''"""DPO (Rafailov et al., 2023): logistic loss on the implicit reward margin."""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * margin)
'''


def contract_table() -> str:
    rows = ["| parameter | meaning |", "|---|---|"]
    rows += [f"| `{name}` | {meaning} |" for name, meaning in CONTRACT_INPUTS.items()]
    return "\n".join(rows)


def system_prompt() -> str:
    return SYSTEM_PROMPT.format(inputs=contract_table()) + "\nFor example, DPO:\n```python\n" + EXAMPLE + "```\n"


def describe_score(candidate: ParentView, context: ProposalContext) -> str:
    """`finetune fitness 0.372 ± 0.051 over 3 seeds, +0.012 vs DPO`: the number with its tier, noise and baseline."""
    if candidate.fitness is None:
        return "not yet scored"
    tier = candidate.tier
    spread = f" ± {candidate.spread:.3g}" if candidate.spread is not None else ""
    seeds = f" over {candidate.seeds} seed{'s' if candidate.seeds != 1 else ''}" if candidate.seeds else ""
    dpo = context.baseline.get(tier) if tier else None
    versus = f", {candidate.fitness - dpo:+.3g} vs DPO" if dpo is not None and candidate.name != "dpo" else ""
    return f"{tier + ' ' if tier else ''}fitness {candidate.fitness:.4g}{spread}{seeds}{versus}"


def describe_candidate(candidate: ParentView, context: ProposalContext) -> str:
    """A heading with the labelled fitness and metrics, the fingerprint summary, and the code."""
    metrics = ", ".join(f"{key} {value:.4g}" for key, value in candidate.metrics.items()
                        if isinstance(value, (int, float)))
    lines = [f"### {candidate.name} ({describe_score(candidate, context)}{'; ' + metrics if metrics else ''})"]
    if candidate.fingerprint_summary:
        lines.append(f"How its gradient pushes the likelihoods: {candidate.fingerprint_summary}")
    source = candidate.source
    if len(source) > MAX_SHOWN_SOURCE:
        source = source[:MAX_SHOWN_SOURCE] + "\n# ... (cut)"
    lines.append(f"```python\n{source.rstrip()}\n```")
    return "\n".join(lines)


def reading_the_numbers(context: ProposalContext) -> str:
    """How to read fitness: per tier, DPO's score and the noise of one loss across seeds."""
    lines = ["## Reading the numbers",
             "Fitness is the oracle reward at the task's KL budget (higher is better). The cheap `bandit` tier "
             "and the `finetune` tier score on different scales: compare a loss with DPO at the same tier."]
    for tier in sorted(set(context.baseline) | set(context.noise)):
        facts = []
        if tier in context.baseline:
            facts.append(f"DPO's {tier} fitness is {context.baseline[tier]:.4g}")
        if tier in context.noise:
            facts.append(f"one loss's {tier} fitness varies by about ± {context.noise[tier]:.3g} from seed to seed, "
                         "so smaller differences are noise")
        lines.append(f"- {'; '.join(facts)}.")
    return "\n".join(lines)


def describe_idea(record: IdeaRecord) -> str:
    asked = f" [{record.instruction}]" if record.instruction else ""
    if record.outcome == "scored" and record.change is not None:
        noise = f" (noise ± {record.spread:.3g})" if record.spread is not None else ""
        result = f"{record.change:+.3g} vs its best parent at the {record.tier} tier{noise}"
    elif record.outcome == "duplicate":
        result = f"the same loss as {record.detail or 'an earlier one'} by fingerprint: it added nothing"
    elif record.outcome in ("failed", "rejected"):
        result = f"failed: {' '.join(record.detail.split())[:200]}"
    else:
        result = "not scored yet"
    return f"- {record.name}{asked}: {record.idea} -> {result}"


def history_section(context: ProposalContext, limit: int = 12) -> str:
    records = list(context.history)[:limit]
    if not records:
        return ""
    lines = ["## Your earlier proposals in this campaign (newest first)"] + [describe_idea(r) for r in records]
    if records[0].outcome == "duplicate":
        twin = records[0].detail or "an earlier one"
        lines.append(f"Your last proposal, {records[0].name}, was the same loss as {twin}. Propose something that "
                     "changes how the loss pushes the likelihoods, not its wording.")
    return "\n".join(lines)


INSTRUCTIONS = ("improve", "combine", "novel", "repair")
"""What a proposal may be asked: improve one parent, combine two, write something unlike everything
shown, or repair an idea that failed. The LLM proposer chooses among those that apply."""


def applicable_instructions(parents: Sequence[ParentView], context: ProposalContext) -> list[str]:
    chosen = ["novel"]
    if parents:
        chosen.insert(0, "improve")
    if len(parents) >= 2:
        chosen.insert(0, "combine")
    if any(record.outcome in ("failed", "rejected") for record in context.history[:5]):
        chosen.append("repair")
    return chosen


def instruction(parents: Sequence[ParentView], kind: str, context: ProposalContext | None = None) -> str:
    if kind == "combine" and len(parents) >= 2:
        return (f"Write one new loss that combines what works in {parents[0].name} and {parents[1].name} "
                "into something better than both.")
    if kind == "improve" and parents:
        return (f"Write one new loss that improves on {parents[0].name}: change what its numbers and "
                "fingerprint suggest is holding it back. Do not just rename it or retune a constant.")
    if kind == "repair" and context is not None:
        failed = next((r for r in context.history if r.outcome in ("failed", "rejected")), None)
        if failed is not None:
            return (f"Your proposal {failed.name} ({failed.idea}) failed: {' '.join(failed.detail.split())[:300]}. "
                    "Write a loss that keeps its idea but cannot fail that way.")
    if kind == "novel":
        return ("Write one new loss unlike every loss shown above: a different shape, weighting or use of the "
                "inputs, not a variation of one of them. Keep it sound.")
    return "Write one new loss that could beat every loss shown above. Be bold but keep it sound."


def user_prompt(parents: Sequence[ParentView], context: ProposalContext, top_k: int, max_failures: int,
                kind: str = "improve") -> str:
    parent_ids = {parent.id for parent in parents}
    shown = [candidate for candidate in context.top if candidate.id not in parent_ids][:top_k]
    parts = [f"## Task: {context.task}", context.task_description or "", reading_the_numbers(context)]
    if shown:
        parts.append("## The best losses so far (best first)")
        parts += [describe_candidate(candidate, context) for candidate in shown]
    if parents and kind in ("improve", "combine"):
        parts.append("## The loss to improve" if kind == "improve" else "## The losses to combine")
        parts += [describe_candidate(parent, context) for parent in (parents[:1] if kind == "improve" else parents)]
    if context.notes:
        parts.append("## Your notes on this campaign so far\n" + context.notes)
    parts.append(history_section(context))
    failures = list(context.failures)[:max_failures]
    if failures:
        parts.append("## Recent failures (do not repeat them)")
        parts += [f"- {failure.name} [{failure.kind}]: {' '.join(failure.message.split())}" for failure in failures]
    parts.append("## Your job\n" + instruction(parents, kind, context)
                 + '\nReply with one JSON object: {"thought": ..., "name": ..., "code": ...}.')
    return "\n\n".join(part for part in parts if part)


NOTES_PROMPT = """You keep the research notebook of a search for new preference-optimization losses. From the numbers
below, write at most 12 short lines: which ideas have improved on their parents beyond the noise,
which have not, which failed and why, and what to try next. Plain text, no code."""


def notes_messages(context: ProposalContext, top_k: int = 4) -> list[ChatCompletionMessageParam]:
    """The chat that asks the model to summarize the campaign so far (its meta-scratchpad)."""
    parts = [f"## Task: {context.task}", reading_the_numbers(context), "## The best losses so far"]
    parts += [f"- {candidate.name}: {describe_score(candidate, context)}" for candidate in list(context.top)[:top_k]]
    parts.append(history_section(context, limit=40))
    if context.notes:
        parts.append("## Your previous notes\n" + context.notes)
    return [{"role": "system", "content": NOTES_PROMPT},
            {"role": "user", "content": "\n\n".join(part for part in parts if part)}]


def build_messages(parents: Sequence[ParentView], context: ProposalContext, top_k: int = 4, max_failures: int = 5,
                   kind: str = "improve") -> list[ChatCompletionMessageParam]:
    """The chat messages for one proposal asked to do `kind` (one of INSTRUCTIONS)."""
    return [{"role": "system", "content": system_prompt()},
            {"role": "user", "content": user_prompt(parents, context, top_k, max_failures, kind)}]


# -- reading the reply -----------------------------------------------------------------------

class MalformedReply(ValueError):
    """The reply holds no usable loss; the message says why (shown in LLMUsage.detail)."""


@dataclass(frozen=True)
class Draft:
    """A loss read from a reply."""

    thought: str
    name: str
    code: str


def _json_objects(text: str) -> list[dict[str, Any]]:
    """JSON objects in the text: the whole text, fenced blocks, then any `{...}` inside prose."""
    decoder = json.JSONDecoder(strict=False)  # strict=False: raw newlines inside strings are common
    found: list[dict[str, Any]] = []
    pieces = [text.strip()] + [body.strip() for _, body in FENCE.findall(text)]
    for piece in pieces:
        for start in [index for index, char in enumerate(piece) if char == "{"][:200]:
            try:
                value, _ = decoder.raw_decode(piece, start)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                found.append(value)
                break
    return found


def _strip_fences(code: str) -> str:
    match = FENCE.search(code)
    return match.group(2) if match and "def loss" in match.group(2) else code


def _python_block(text: str) -> str | None:
    """The first fenced block that defines `loss` (labelled python, py or unlabelled)."""
    for label, body in FENCE.findall(text):
        if label.lower() in ("", "python", "py", "python3") and "def loss" in body:
            return body
    return None


def _name_from_code(code: str) -> str:
    try:
        docstring = ast.get_docstring(ast.parse(code)) or ""
    except SyntaxError:
        docstring = ""
    head = re.split(r"[:(.\n]", docstring.strip(), maxsplit=1)[0] if docstring.strip() else ""
    return identifier(" ".join(head.split()[:6]), fallback="llm_loss")


def read_draft(text: str) -> Draft:
    """Thought, name and code from a reply, before any check of the code."""
    for value in _json_objects(text):
        code = value.get("code")
        if isinstance(code, str) and code.strip():
            raw_name, raw_thought = value.get("name"), value.get("thought")
            name = raw_name if isinstance(raw_name, str) else ""
            thought = raw_thought if isinstance(raw_thought, str) else ""
            code = _strip_fences(code)
            return Draft(thought.strip(), identifier(name, fallback="") or _name_from_code(code), code)
    code = _python_block(text)
    if code is None:
        raise MalformedReply("the reply has neither a JSON object with `code` nor a ```python block defining `loss`")
    prose = " ".join(FENCE.sub(" ", text).split())
    return Draft(prose[:500], _name_from_code(code), code)


def parse_reply(text: str | None) -> Draft:
    """A checked `Draft`: its code parses, defines `loss` and obeys the contract's signature rules.

    A module without a docstring gets one made from the name and the thought.
    """
    if not text or not text.strip():
        raise MalformedReply("the reply is empty")
    draft = read_draft(text)
    code = draft.code.strip("\n") + "\n"
    try:
        parse_spec(code, draft.name)
        if ast.get_docstring(ast.parse(code)) is None:
            summary = draft.thought.split("\n")[0][:300] or "proposed by an LLM"
            code = f"{quote_docstring(f'{draft.name}: {summary}')}\n{code}"
            parse_spec(code, draft.name)
    except CandidateError as error:
        raise MalformedReply(f"the code is not a loss module ({error.failure.kind}: {error.failure.message})") from None
    return Draft(draft.thought, draft.name, code)
