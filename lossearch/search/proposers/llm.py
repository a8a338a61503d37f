"""The LLM proposer: asks an OpenAI-compatible chat endpoint for new losses.

Works with any server that speaks `/v1/chat/completions` (OpenAI, vLLM,
llama.cpp, Ollama, ...). The API key comes from `OPENAI_API_KEY` and goes to
the HTTP client only: it is never stored, logged or put in a message. A
loopback or private-network server needs no key.

Each request is one `LLMUsage` (tokens, cost, latency, outcome); the campaign
drains them with `drain_usage()` to enforce its budget. Requests that fail for
a transient reason (429, 5xx, timeout, no connection) are retried with
exponential backoff and jitter, honouring `Retry-After`, within a hard
deadline per proposal. With several models, a UCB bandit picks one per
proposal by fitness improvement per dollar, fed by `record_outcome`.
"""

from __future__ import annotations

import ipaddress
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping, Sequence
from urllib.parse import urlsplit

import openai
from openai.types.chat import ChatCompletionMessageParam

from lossearch.search.proposers.base import LLMUsage, ParentView, Proposal, ProposalContext, ProposerError
from lossearch.search.proposers.prompt import (
    MalformedReply,
    applicable_instructions,
    build_messages,
    notes_messages,
    parse_reply,
)
from lossearch.search.proposers.ucb import ArmStats, ucb_choice

# US dollars per 1M (prompt, completion) tokens: OpenAI list prices of mid-2025. They go stale;
# pass `prices` to override. A model matches its longest key prefix ("gpt-4o-2024-08-06" ->
# "gpt-4o"); a model matching no key costs 0 (local servers), so `--max-cost` cannot stop it.
DEFAULT_PRICES: Mapping[str, tuple[float, float]] = MappingProxyType({
    "gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00), "gpt-4.1-mini": (0.40, 1.60), "gpt-4.1-nano": (0.10, 0.40),
    "o3": (2.00, 8.00), "o4-mini": (1.10, 4.40),
    "gpt-5": (1.25, 10.00), "gpt-5-mini": (0.25, 2.00), "gpt-5-nano": (0.05, 0.40),
})
LOCAL_PLACEHOLDER_KEY = "lossearch-local"  # local servers ignore the key, but the client wants one
RETRIED_STATUSES = (408, 409, 429)  # and every 5xx


@dataclass(frozen=True)
class LLMConfig:
    """How to reach the LLM and how hard to try."""

    base_url: str = "https://api.openai.com/v1"
    """The OpenAI-compatible endpoint, ending in `/v1` for most servers."""
    models: tuple[str, ...] = ("gpt-4o-mini",)
    """Model names; with several, a bandit picks one per proposal."""
    timeout: float = 60.0
    """Seconds one request may take."""
    deadline: float = 180.0
    """Seconds one proposal may take across all its retries; then `ProposerError`."""
    max_retries: int = 4
    """Retries after the first request, on 429, 5xx, timeouts and connection errors."""
    backoff: float = 1.0
    """First retry delay in seconds; it doubles per retry, with jitter."""
    max_backoff: float = 30.0
    """Cap on one retry delay, `Retry-After` included."""
    temperature: float | None = None
    """One sampling temperature for every request; None: draw one of `temperatures` per proposal."""
    temperatures: tuple[float, ...] = (0.7, 1.0)
    """Temperatures a proposal's request draws from (recorded with the candidate, so their success
    rates compare); empty sends none (the server's default; some models accept no other)."""
    max_tokens: int | None = None
    """Cap on completion tokens; None sends none."""
    top_k: int = 4
    """How many of the best candidates the prompt shows besides the parents."""
    max_failures: int = 5
    """How many recent failures the prompt shows."""
    prices: Mapping[str, tuple[float, float]] = field(default_factory=lambda: DEFAULT_PRICES)
    """US dollars per 1M (prompt, completion) tokens by model-name prefix."""
    exploration: float = 1.0
    """The bandit's UCB exploration weight."""

    def __post_init__(self) -> None:
        if isinstance(self.models, str):
            object.__setattr__(self, "models", (self.models,))
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "temperatures", tuple(float(value) for value in self.temperatures))
        if not self.models or not all(isinstance(model, str) and model.strip() for model in self.models):
            raise ProposerError("give at least one LLM model name (--llm-model)")
        if urlsplit(self.base_url).scheme not in ("http", "https") or not urlsplit(self.base_url).hostname:
            raise ProposerError(f"the LLM base URL {self.base_url!r} is not an http(s) URL: pass e.g. http://127.0.0.1:8000/v1")
        if self.timeout <= 0 or self.deadline <= 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("timeout and deadline must be positive, backoff and max_backoff not negative")
        if self.max_retries < 0 or self.top_k < 0 or self.max_failures < 0:
            raise ValueError("max_retries, top_k and max_failures may not be negative")


def is_local(base_url: str) -> bool:
    """Whether the URL names this machine or a private network (where servers need no key)."""
    host = (urlsplit(base_url).hostname or "").lower()
    if host in ("localhost", "host.docker.internal") or host.endswith((".localhost", ".local")):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_unspecified


def price_of(model: str, prices: Mapping[str, tuple[float, float]]) -> tuple[float, float]:
    """Per-1M-token prices of the longest matching key; (0, 0) for an unknown model."""
    name = model.split("/")[-1]  # "openai/gpt-4o" on routers
    matches = [key for key in prices if name == key or name.startswith(key + "-")]
    return prices[max(matches, key=len)] if matches else (0.0, 0.0)


def public_url(base_url: str) -> str:
    """The URL without any user:password part, fit for a message."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc, query="").geturl()


class ModelBandit:
    """UCB1 over models, rewarding fitness improvement per dollar (lossearch.search.proposers.ucb)."""

    def __init__(self, models: Sequence[str], exploration: float = 1.0, cost_floor: float = 1e-4) -> None:
        self.stats = {model: ArmStats() for model in models}
        self.exploration = exploration
        self.cost_floor = cost_floor

    def choose(self, rng: random.Random) -> str:
        chosen = ucb_choice(self.stats, rng, self.exploration, self.cost_floor)
        self.stats[chosen].selections += 1
        return chosen

    def record(self, model: str, improvement: float, cost: float) -> None:
        if model not in self.stats:
            return
        stats = self.stats[model]
        stats.outcomes += 1
        stats.improvement += max(0.0, float(improvement))
        stats.cost += max(0.0, float(cost))


def _one_line(text: object, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _retry_after(error: Exception) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms` or `retry-after`), if it did."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            value = float(headers.get(header, ""))
        except ValueError:
            continue
        if math.isfinite(value) and value >= 0:
            return value / divisor
    return None


class LLMProposer:
    """Proposes losses by asking an LLM; see the module docstring."""

    name = "llm"
    concurrent = True
    """Its proposals may be requested several at once (the campaign's `llm_concurrency`)."""

    def __init__(self, config: LLMConfig) -> None:
        key = os.environ.get("OPENAI_API_KEY", "").strip()
        if not key:
            if not is_local(config.base_url):
                raise ProposerError(f"OPENAI_API_KEY is not set: export the API key for {public_url(config.base_url)} "
                                    "(or use a local server, which needs none)")
            key = LOCAL_PLACEHOLDER_KEY
        self.config = config
        self.url = public_url(config.base_url)
        self.bandit = ModelBandit(config.models, config.exploration)
        self._client = openai.OpenAI(base_url=config.base_url, api_key=key, timeout=config.timeout, max_retries=0)
        self._usage: list[LLMUsage] = []
        self._lock = threading.Lock()  # the campaign keeps several proposals in flight, one thread each
        self._jitter = random.Random()  # not the campaign's rng: retry timing must not shift its draws

    # -- the Proposer protocol ------------------------------------------------------------------
    def propose(self, parents: Sequence[ParentView], context: ProposalContext,
                rng: random.Random) -> list[Proposal]:
        """One proposal from the chosen model, or [] for a reply with no usable loss."""
        parents = list(parents)[:2]
        temperature = self.config.temperature
        if temperature is None and self.config.temperatures:
            temperature = rng.choice(self.config.temperatures)
        kind = self.choose_instruction(parents, context, rng)
        with self._lock:
            model = self.bandit.choose(rng)
        messages = build_messages(parents, context, self.config.top_k, self.config.max_failures, kind)
        text, usage = self._complete(model, messages, temperature)
        try:
            draft = parse_reply(text)
        except MalformedReply as error:
            self._record(usage("malformed", str(error)))
            return []
        self._record(usage("ok", ""))
        used = parents[:1] if kind == "improve" else parents if kind == "combine" else []
        if used:
            parent_ids = tuple(parent.id for parent in used)
            relation = "crossover" if len(used) == 2 else "mutation"
        else:
            shown = [candidate.id for candidate in context.top][: self.config.top_k]
            parent_ids, relation = tuple(shown), "inspiration"
        idea = _one_line(draft.thought, 300) or f"{model}'s proposal"
        return [Proposal(source=draft.code, name=draft.name, idea=idea, parent_ids=parent_ids, relation=relation,
                         operator="llm", proposer=self.name, model=model, instruction=kind, temperature=temperature)]

    def choose_instruction(self, parents: Sequence[ParentView], context: ProposalContext, rng: random.Random) -> str:
        """UCB1 over the instructions that apply, by the campaign's record of each (`context.instructions`)."""
        arms = {}
        for kind in applicable_instructions(parents, context):
            record = context.instructions.get(kind)
            arms[kind] = (ArmStats() if record is None else
                          ArmStats(selections=record.children, outcomes=record.scored, improvement=record.gain))
        return ucb_choice(arms, rng, self.config.exploration)

    def write_notes(self, context: ProposalContext, rng: random.Random) -> tuple[str, str] | None:
        """(model, text): the model's own summary of the campaign so far, or None for an empty reply."""
        with self._lock:
            model = self.bandit.choose(rng)
        text, usage = self._complete(model, notes_messages(context), self.config.temperature)
        if not text or not text.strip():
            self._record(usage("malformed", "the notes reply is empty"))
            return None
        self._record(usage("ok", ""))
        return model, text.strip()[:3000]

    def _record(self, usage: LLMUsage) -> None:
        with self._lock:
            self._usage.append(usage)

    def drain_usage(self) -> list[LLMUsage]:
        """The usage records of the requests made since the last drain."""
        with self._lock:
            drained, self._usage = self._usage, []
        return drained

    def record_outcome(self, model: str, improvement: float, cost: float) -> None:
        """Feed the model bandit: the fitness gain a proposal by `model` brought, and what it cost."""
        with self._lock:
            self.bandit.record(model, improvement, cost)

    # -- talking to the endpoint ----------------------------------------------------------------
    def _request_options(self, temperature: float | None) -> dict:
        options: dict = {}
        if temperature is not None:
            options["temperature"] = temperature
        if self.config.max_tokens is not None:
            options["max_tokens"] = self.config.max_tokens
        return options

    def _complete(self, model: str, messages: list[ChatCompletionMessageParam],
                  temperature: float | None) -> tuple[str | None, Callable[[str, str], LLMUsage]]:
        """The reply text and a maker of its `LLMUsage`; failed attempts are recorded here."""
        deadline = time.monotonic() + self.config.deadline
        attempt = 0
        while True:
            timeout = max(0.01, min(self.config.timeout, deadline - time.monotonic()))
            sent = time.monotonic()
            try:
                response = self._client.chat.completions.create(
                    model=model, messages=messages, timeout=timeout, **self._request_options(temperature))
            except openai.APIError as error:
                outcome, retry = self._classify(error)
                self._record(LLMUsage(model, 0, 0, 0.0, time.monotonic() - sent, outcome, self._detail(error)))
                attempt += 1
                delay = self._delay(error, attempt)
                if not retry or attempt > self.config.max_retries or time.monotonic() + delay >= deadline:
                    raise ProposerError(self._give_up(error, model, attempt, retry)) from None
                time.sleep(delay)
                continue
            return self._read(response, model, time.monotonic() - sent)

    def _read(self, response, model: str, latency: float) -> tuple[str | None, Callable[[str, str], LLMUsage]]:
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        input_price, output_price = price_of(model, self.config.prices)
        cost = (prompt_tokens * input_price + completion_tokens * output_price) / 1e6
        try:
            text = response.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            text = None
        text = text if isinstance(text, str) else None

        def make_usage(outcome: str, detail: str) -> LLMUsage:
            return LLMUsage(model, prompt_tokens, completion_tokens, cost, latency, outcome, self._redact(detail))

        return text, make_usage

    @staticmethod
    def _classify(error: Exception) -> tuple[str, bool]:
        """(LLMUsage outcome, whether to retry) for a failed request."""
        if isinstance(error, openai.APITimeoutError):
            return "timeout", True
        if isinstance(error, openai.APIConnectionError):
            return "unreachable", True
        status = getattr(error, "status_code", None)
        if status == 429:
            return "rate_limited", True
        if isinstance(status, int) and (status >= 500 or status in RETRIED_STATUSES):
            return ("timeout" if status == 408 else "server_error"), True
        return "rejected", False

    def _delay(self, error: Exception, attempt: int) -> float:
        """Retry-After when the server sent one, else exponential backoff with jitter; capped."""
        asked = _retry_after(error)
        if asked is not None:
            return min(asked, self.config.max_backoff)
        base = min(self.config.backoff * 2 ** (attempt - 1), self.config.max_backoff)
        return base * (0.5 + 0.5 * self._jitter.random())

    def _detail(self, error: Exception) -> str:
        """`HTTP 404: <the server's own message>`, or the connection error's cause."""
        status = getattr(error, "status_code", None)
        body = getattr(error, "body", None)
        reason = body.get("message") if isinstance(body, dict) else body if isinstance(body, str) else None
        if isinstance(error, openai.APIConnectionError):
            reason = error.__cause__ or error.__context__ or error
        reason = _one_line(reason or getattr(error, "message", error))
        return self._redact(f"HTTP {status}: {reason}" if status else reason)

    def _redact(self, text: str) -> str:
        key = self._client.api_key
        return text.replace(key, "[key]") if key and len(key) >= 4 else text

    def _give_up(self, error: Exception, model: str, attempts: int, retried: bool) -> str:
        """The one line a user reads when the endpoint cannot be used."""
        status = getattr(error, "status_code", None)
        where = f"the LLM endpoint at {self.url}"
        tries = f"after {attempts} attempt{'s' if attempts > 1 else ''}"
        if status == 401:
            return f"{where} rejected the API key (HTTP 401): check OPENAI_API_KEY"
        if status == 403:
            return f"{where} refused access to model {model!r} (HTTP 403): check OPENAI_API_KEY's permissions"
        if isinstance(error, openai.APITimeoutError):
            return (f"{where} did not answer within {self.config.timeout:g} s ({tries}):"
                    " check that the server is up or raise the timeout")
        if isinstance(error, openai.APIConnectionError):
            return (f"cannot reach {where} ({self._detail(error)}) {tries}:"
                    " check the base URL (--llm-base-url) and that the server is running")
        if retried:
            return f"{where} kept failing ({self._detail(error)}) {tries}: try again later or check the server"
        return (f"{where} refused the request for model {model!r} ({self._detail(error)}):"
                " check the model name and options")
