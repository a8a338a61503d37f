"""Proposers: one shared suite over both implementations, then each one's own tests.

The LLM proposer talks to a real OpenAI-compatible HTTP server that these tests
start on 127.0.0.1 (a ThreadingHTTPServer in a thread), scripted per test to
answer well, badly, slowly or not at all. Client timeouts are ~0.4 s and
backoffs ~10 ms so the whole file stays fast.
"""

from __future__ import annotations

import ast
import json
import random
import re
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from lossearch.contract import call_loss, load_loss, parse_spec, source_hash
from lossearch.evaluation.cascade import evaluate
from lossearch.fingerprint import same_loss
from lossearch.policy import check_policy
from lossearch.search.proposers import (
    OPERATORS,
    FailureView,
    LLMConfig,
    LLMProposer,
    MutationProposer,
    ParentView,
    Proposal,
    ProposalContext,
    Proposer,
    ProposerError,
    make_proposer,
    mutation,
    syntax,
)
from lossearch.search.proposers.llm import ModelBandit, is_local, price_of
from lossearch.search.proposers.prompt import MalformedReply, parse_reply
from lossearch.search.seeds import seed_path, seed_paths

SECRET = "sk-test-SECRET-0123456789"
SEEDS = [ParentView(index, path.stem, path.read_text(), fitness=0.1 * index, metrics={"reward": 0.5, "kl": 1.5},
                    fingerprint_summary="raises chosen on 50% of the grid")
         for index, path in enumerate(seed_paths())]
BY_NAME = {parent.name: parent for parent in SEEDS}
CONTEXT = ProposalContext(task="sentiment", task_description="positive reviews within a KL budget",
                          top=tuple(SEEDS[:3]), failures=(FailureView("bad_one", "nan", "loss returned nan"),))

GOOD_CODE = '''"""Margin DPO: DPO with a target margin gamma on the implicit reward."""
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1, gamma: float = 0.3):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * margin - gamma)
'''
GOOD_REPLY = json.dumps({"thought": "A target margin keeps pushing pairs that are barely won.",
                         "name": "margin dpo", "code": GOOD_CODE})


# -- a scripted OpenAI-compatible server on loopback -----------------------------------------

@dataclass
class Reply:
    """One scripted answer: an HTTP status, a body (a chat completion's content, or raw JSON), headers, a delay."""

    content: str | None = GOOD_REPLY
    status: int = 200
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    raw: dict | None = None


def completion(content: str, model: str) -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}}


class FakeOpenAI:
    """Answers POST /v1/chat/completions from a script (then with `default`); records every request."""

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.default = Reply()
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.replied_at: list[float] = []  # time.time() of each reply sent
        self.delay_of: Callable[[int], float] | None = None  # seconds to wait, by the request's arrival index
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                with fake.lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    self.answer()
                finally:
                    with fake.lock:
                        fake.in_flight -= 1
                        fake.replied_at.append(time.time())

            def answer(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                headers = {name.lower(): value for name, value in self.headers.items()}
                fake.requests.append({"path": self.path, "headers": headers, "body": body})
                reply = fake.script.popleft() if fake.script else fake.default
                time.sleep(reply.delay if fake.delay_of is None else fake.delay_of(len(fake.requests) - 1))
                if reply.status == 200:
                    payload = reply.raw or completion(reply.content, body.get("model", "?"))
                else:
                    payload = reply.raw or {"error": {"message": f"scripted {reply.status}", "type": "test"}}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(reply.status)
                    for name, value in {"Content-Type": "application/json", **reply.headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def fake_server():
    server = FakeOpenAI()
    yield server
    server.close()


@pytest.fixture
def server(fake_server, monkeypatch):
    """The shared fake server with an empty script, and OPENAI_API_KEY set to SECRET."""
    fake_server.script.clear()
    fake_server.requests.clear()
    fake_server.default = Reply()
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    return fake_server


def llm_proposer(server: FakeOpenAI, **options) -> LLMProposer:
    settings = {"base_url": server.url, "models": ("gpt-4o-mini",), "timeout": 0.4, "deadline": 5.0,
                "max_retries": 3, "backoff": 0.01, "max_backoff": 2.0, **options}
    return LLMProposer(LLMConfig(**settings))


def assert_no_secret(*values: object) -> None:
    for value in values:
        assert SECRET not in repr(value)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- the shared suite: every Proposer ---------------------------------------------------------

@pytest.fixture(params=["mutation", "llm"])
def proposer(request) -> Proposer:
    if request.param == "mutation":
        return MutationProposer()
    return llm_proposer(request.getfixturevalue("server"))


def assert_well_formed(proposal: Proposal, proposer: Proposer, parents: list[ParentView]) -> None:
    assert proposal.proposer == proposer.name
    assert proposal.name and proposal.idea
    spec = parse_spec(proposal.source, proposal.name)
    assert ast.get_docstring(ast.parse(proposal.source)), "every child carries a module docstring"
    assert spec.inputs
    assert all(source_hash(proposal.source) != source_hash(parent.source) for parent in parents)


def test_both_implementations_follow_the_protocol(proposer):
    assert isinstance(proposer, Proposer)
    assert proposer.name in ("mutation", "llm")


def test_one_parent_gives_a_mutation_that_passes_the_static_tier(proposer):
    parent = BY_NAME["dpo"]
    proposals = proposer.propose([parent], CONTEXT, random.Random(0))
    assert len(proposals) == 1
    proposal = proposals[0]
    assert_well_formed(proposal, proposer, [parent])
    assert (proposal.relation, proposal.parent_ids) == ("mutation", (parent.id,))
    assert evaluate(proposal.source, proposal.name, "static").ok


def test_two_parents_give_a_crossover(proposer):
    parents = [BY_NAME["dpo"], BY_NAME["ipo"]]
    proposal = proposer.propose(parents, CONTEXT, random.Random(1))[0]
    assert_well_formed(proposal, proposer, parents)
    assert (proposal.relation, proposal.parent_ids) == ("crossover", (parents[0].id, parents[1].id))


def test_no_parent_draws_on_the_leaders(proposer):
    proposal = proposer.propose([], CONTEXT, random.Random(2))[0]
    top_ids = {candidate.id for candidate in CONTEXT.top}
    assert proposal.parent_ids and set(proposal.parent_ids) <= top_ids
    assert proposal.relation in ("mutation", "inspiration")


def test_proposals_pass_the_sanity_tier(proposer, sandbox):
    rng = random.Random(3)
    proposals = [proposal for parent in (BY_NAME["dpo"], BY_NAME["simpo"], BY_NAME["cpo"])
                 for proposal in proposer.propose([parent], CONTEXT, rng)]
    assert proposals
    for proposal in proposals:
        result = evaluate(proposal.source, proposal.name, "sanity", sandbox=sandbox)
        assert result.ok, (result.error, proposal.source)


def test_the_rng_seed_fixes_the_proposals(proposer):
    parents = [BY_NAME["robust"], BY_NAME["tdpo"]]
    first = [proposer.propose(parents[:n], CONTEXT, random.Random(7)) for n in (1, 2)]
    second = [proposer.propose(parents[:n], CONTEXT, random.Random(7)) for n in (1, 2)]
    assert first == second


# -- the mutation proposer --------------------------------------------------------------------

NEW_OPERATORS = ("weight_pairs", "piecewise", "batch_statistic", "gate_input", "grow_term", "modulate")
"""The operators that reach past recombination (issue 14)."""


def parents_for(operator: str) -> list[ParentView]:
    """Parents the operator applies to: the seeds; for `gate_input`, losses with a gate (blends of seeds)."""
    if operator != "gate_input":
        return SEEDS
    blender, rng = MutationProposer(operators=("blend",)), random.Random(3)
    blends = [blender.propose([seed, SEEDS[(seed.id + 7) % len(SEEDS)]], CONTEXT, rng)[0] for seed in SEEDS]
    return [BY_NAME["discopop"]] + [ParentView(100 + index, child.name, child.source)
                                     for index, child in enumerate(blends)]


@pytest.mark.parametrize("operator", OPERATORS)
def test_every_operator_makes_policy_valid_children_from_the_seeds(operator):
    proposer, rng, made = MutationProposer(operators=(operator,)), random.Random(11), 0
    pool = parents_for(operator)
    for parent in pool:
        parents = [parent, pool[(parent.id + 5) % len(pool)]] if operator in mutation.PAIR_OPERATORS else [parent]
        for proposal in proposer.propose(parents, CONTEXT, rng):
            made += 1
            check_policy(proposal.source)
            assert proposal.operator == operator
            assert proposal.parent_ids == tuple(p.id for p in parents)
            assert proposal.relation == ("crossover" if len(parents) == 2 else "mutation")
            docstring = ast.get_docstring(ast.parse(proposal.source))
            assert f"`{operator}`" in docstring and all(p.name in docstring for p in parents)
    assert made >= len(pool) - 2  # sft and simper have no constant to perturb (sft nothing to swap either)


# seeds added to the library after this draw's threshold was set
LATER_SEEDS = ("beta_dpo", "odpo", "ld_dpo", "sampo", "dpo_shift_linear", "alpha_dpo")


@pytest.mark.parametrize("operator", NEW_OPERATORS)
def test_the_new_operators_children_pass_the_sanity_tier_and_are_new_losses(operator, sandbox):
    proposer, rng = MutationProposer(operators=(operator,)), random.Random(21)
    # the library this draw's threshold was set on: with later seeds in the pool the same rng draws other parents,
    # and batch_statistic's novel children run 4 to 8 of 12 over rng seeds either way (5 here)
    pool = [parent for parent in parents_for(operator) if parent.name not in LATER_SEEDS]
    children = [(parent, child) for parent in rng.sample(pool, len(pool))
                for child in proposer.propose([parent], CONTEXT, rng)][:12]
    assert len(children) == 12
    passed = novel = 0
    for parent, child in children:
        result = evaluate(child.source, child.name, "sanity", sandbox=sandbox)
        passed += result.ok
        if result.ok:
            before = evaluate(parent.source, parent.name, "sanity", sandbox=sandbox).metrics["sanity"]["fingerprint"]
            novel += not same_loss(result.metrics["sanity"]["fingerprint"], before)
    assert passed >= 10, f"{passed} of 12 children of {operator} passed the sanity tier"
    assert novel >= 6, f"{novel} of {passed} passing children of {operator} differ from their parent"


def test_most_children_pass_static_and_sanity(sandbox):
    """DESIGN asks that most children pass; benchmarks/mutation_validity.py measures ~98% on 200."""
    proposer, rng, children = MutationProposer(), random.Random(5), []
    while len(children) < 30:
        parents = rng.sample(SEEDS, 2) if rng.random() < 1 / 3 else [rng.choice(SEEDS)]
        children += proposer.propose(parents, CONTEXT, rng)
    passed = sum(evaluate(child.source, child.name, "sanity", sandbox=sandbox).ok for child in children)
    assert passed / len(children) >= 0.7, f"{passed}/{len(children)} passed"


def run(source: str, tensors: dict) -> torch.Tensor:
    """Our own generated code (from trusted seeds), loaded the way the evaluator loads a loss."""
    spec = parse_spec(source)
    return call_loss(load_loss(source), spec, tensors)


def pairs(batch: int = 16, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 30, (2, batch), generator=generator).double()
    reference = -2.0 * lengths
    policy = reference + 3 * torch.randn(2, batch, generator=generator, dtype=torch.float64)
    return {"policy_chosen_logps": policy[0], "policy_rejected_logps": policy[1],
            "reference_chosen_logps": reference[0], "reference_rejected_logps": reference[1],
            "chosen_lengths": lengths[0], "rejected_lengths": lengths[1],
            "chosen_kl": torch.rand(batch, generator=generator, dtype=torch.float64),
            "rejected_kl": torch.rand(batch, generator=generator, dtype=torch.float64)}


def test_given_two_parents_both_operator_families_fire_at_the_pair_share():
    parents = [BY_NAME["dpo"], BY_NAME["ipo"]]
    rng = random.Random(0)
    proposals = [MutationProposer().propose(parents, CONTEXT, rng)[0] for _ in range(60)]
    crossovers = [p for p in proposals if p.relation == "crossover"]
    mutations = [p for p in proposals if p.relation == "mutation"]
    assert 12 <= len(crossovers) <= 36  # 0.4 of 60 expected
    assert all(p.parent_ids == (parents[0].id,) for p in mutations)  # a mutation of the first parent
    assert {p.operator for p in mutations} == set(mutation.MUTATIONS) - {"gate_input"}  # DPO has no gate
    assert {p.operator for p in crossovers} == set(mutation.CROSSOVERS)
    assert all(p.model == p.operator for p in proposals)  # the campaign stores it as the candidate's model
    never = [MutationProposer(pair_share=0.0).propose(parents, CONTEXT, rng)[0].relation for _ in range(10)]
    always = [MutationProposer(pair_share=1.0).propose(parents, CONTEXT, rng)[0].relation for _ in range(10)]
    assert set(never) == {"mutation"} and set(always) == {"crossover"}
    with pytest.raises(ValueError):
        MutationProposer(pair_share=1.5)


def test_the_operator_whose_children_improved_is_chosen_more():
    from lossearch.ranking import OperatorStats

    record = {name: OperatorStats(name, children=10, scored=10, valid=10, improved=1, gain=0.01)
              for name in mutation.MUTATIONS}
    record["add_term"] = OperatorStats("add_term", children=10, scored=10, valid=10, improved=8, gain=0.8)
    context = replace(CONTEXT, operators=record)
    rng = random.Random(0)
    chosen = Counter(MutationProposer().propose([BY_NAME["dpo"]], context, rng)[0].operator for _ in range(30))
    assert chosen["add_term"] >= 25, chosen
    # an operator never tried goes first, whatever the others' record
    del record["swap_function"]
    assert MutationProposer().propose([BY_NAME["dpo"]], replace(CONTEXT, operators=record), rng)[0].operator \
        == "swap_function"


def test_children_have_short_names_that_do_not_grow_with_the_lineage():
    rng, proposer = random.Random(4), MutationProposer()
    parent = BY_NAME["kto_pair"]
    for _ in range(6):  # six generations deep, each child the next one's parent
        other = SEEDS[rng.randrange(len(SEEDS))]
        child = proposer.propose([parent, other], CONTEXT, rng)[0]
        assert child.name.startswith("kto_pair_") and len(child.name) <= 45, child.name
        assert re.fullmatch(r"[a-z0-9_]+_[0-9a-f]{5}", child.name)
        if child.relation == "crossover":  # the second parent's root follows the operator's word
            assert f"_{child.operator.split('_')[0]}_{mutation.root_name(other.name)}_" in child.name
        again = proposer.propose([parent, other], CONTEXT, random.Random(0))[0]
        assert proposer.propose([parent, other], CONTEXT, random.Random(0))[0].name == again.name  # stable
        parent = ParentView(parent.id + 100, child.name, child.source)
    assert mutation.root_name("dpo_tanh_3fa2c") == "dpo" == mutation.root_name("dpo_blend_kto_pair_1b2c3_nll_4d5e6")
    assert mutation.root_name("fdpo_forward_kl") == "fdpo_forward_kl"  # a seed's name is its own root
    assert mutation.root_name("kto_pair_ipo_cross7fd841") == "kto_pair_ipo"  # the names children had before


def test_blend_is_discopops_gated_mix_of_the_two_parents():
    dpo, ipo = (syntax.read_module(seed_path(name).read_text(), name) for name in ("dpo", "ipo"))
    edit = mutation.blend(dpo, ipo, random.Random(0))
    syntax.prune(edit.module)
    source = syntax.write_module(edit.module, "test blend")
    spec = parse_spec(source)
    assert set(spec.hyperparameters) == {"beta", "tau"}  # beta once, plus the gate's temperature
    assert set(spec.inputs) - {"beta"} == {"policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps",
                                           "reference_rejected_logps", "chosen_lengths", "rejected_lengths"}
    tensors, beta, tau = pairs(), 0.1, spec.hyperparameters["tau"]
    margin = ((tensors["policy_chosen_logps"] - tensors["reference_chosen_logps"])
              - (tensors["policy_rejected_logps"] - tensors["reference_rejected_logps"]))
    expected_dpo = -F.logsigmoid(beta * margin)
    per_token = ((tensors["policy_chosen_logps"] - tensors["reference_chosen_logps"]) / tensors["chosen_lengths"]
                 - (tensors["policy_rejected_logps"] - tensors["reference_rejected_logps"])
                 / tensors["rejected_lengths"])
    expected_ipo = (per_token - 1 / (2 * beta)) ** 2
    gate = torch.sigmoid(beta * margin / tau)
    torch.testing.assert_close(run(source, tensors), (1 - gate) * expected_dpo + gate * expected_ipo)


def lrml_by_modulation(tau: float) -> str:
    """The first of `modulate`'s children of DPO (over rng seeds) whose variant is the exponential swap
    and whose gate's tau is `tau`: a test that fails if the operator cannot write it."""
    dpo = syntax.read_module(seed_path("dpo").read_text(), "dpo")
    for seed in range(400):
        edit = mutation.modulate(dpo.copy(), random.Random(seed))
        if edit is not None and edit.key == "modexp" and edit.module.hyperparameters.get("tau") == tau:
            return syntax.write_module(edit.module, "DPO modulated by its exponential swap")
    pytest.fail(f"no draw of modulate gave DPO and its exponential swap at tau {tau}")


def test_modulate_turns_dpo_into_discopops_lrml(sandbox):
    """DPO modulated by its own exponential swap at tau 0.05 is LRML (seeds/discopop.py) by fingerprint;
    at tau 0.5 it is not: the gate's temperature matters, and the same-loss test can tell."""
    lrml = evaluate(seed_path("discopop").read_text(), "discopop", "sanity", sandbox=sandbox)
    prints = {}
    for tau in (0.05, 0.5):
        source = lrml_by_modulation(tau)
        assert "torch.sigmoid(beta * margin / tau)" in source and "torch.exp(-(beta * margin))" in source
        result = evaluate(source, f"dpo_modexp_{tau}", "sanity", sandbox=sandbox)
        assert result.ok, (result.error, source)
        prints[tau] = result.metrics["sanity"]["fingerprint"]
    assert same_loss(prints[0.05], lrml.metrics["sanity"]["fingerprint"])
    assert not same_loss(prints[0.5], lrml.metrics["sanity"]["fingerprint"])


def test_modulate_shares_the_parents_hyperparameters_with_its_variant():
    """The variant is the parent's loss after one edit: an untouched hyperparameter stays one parameter,
    one the edit changed (perturb_constant) gets a name of its own."""
    simpo = syntax.read_module(seed_path("simpo").read_text(), "simpo")
    changed = 0
    for seed in range(40):
        edit = mutation.modulate(simpo.copy(), random.Random(seed))
        assert edit is not None
        syntax.prune(edit.module)
        names = set(parse_spec(syntax.write_module(edit.module, "test")).hyperparameters)
        assert {"beta", "gamma", "tau"} <= names, names  # the parent's own, once
        changed += "gamma_2" in names or "beta_scale" in names
        assert edit.key.startswith("mod") and edit.key.isalnum()
    assert changed, "no draw perturbed a constant of the variant"


def test_blend_keeps_each_parents_default_strength_and_renames_clashing_hyperparameters():
    cpo, simpo = (syntax.read_module(seed_path(name).read_text(), name) for name in ("cpo", "simpo"))
    edit = mutation.blend(simpo, cpo, random.Random(0))
    syntax.prune(edit.module)
    spec = parse_spec(syntax.write_module(edit.module, "test"))
    assert spec.hyperparameters["beta"] == 2.0 and spec.hyperparameters["beta_scale"] == pytest.approx(0.05)
    tdpo = syntax.read_module(seed_path("tdpo").read_text(), "tdpo")
    edit = mutation.blend(cpo, tdpo, random.Random(0))  # both have an `alpha`
    syntax.prune(edit.module)
    spec = parse_spec(syntax.write_module(edit.module, "test"))
    assert spec.hyperparameters["alpha"] == 1.0 and spec.hyperparameters["alpha_2"] == 0.5


def test_blends_of_blends_keep_their_helpers_apart(sandbox):
    proposer, rng = MutationProposer(operators=("blend",)), random.Random(4)
    first = proposer.propose([BY_NAME["dpo"], BY_NAME["hinge"]], CONTEXT, rng)[0]
    second = proposer.propose([BY_NAME["dpo"], BY_NAME["ipo"]], CONTEXT, rng)[0]
    views = [ParentView(100, first.name, first.source), ParentView(101, second.name, second.source)]
    child = proposer.propose(views, CONTEXT, rng)[0]
    assert child.source.count("def dpo_loss(") == 1 and child.source.count("def dpo_loss_2(") == 1
    assert set(parse_spec(child.source).hyperparameters) == {"beta", "tau", "tau_2", "tau_3"}
    assert evaluate(child.source, child.name, "sanity", sandbox=sandbox).ok


def test_add_nll_adds_the_chosen_per_token_nll():
    dpo = syntax.read_module(seed_path("dpo").read_text(), "dpo")
    idea = mutation.add_nll(dpo, random.Random(0))
    source = syntax.write_module(dpo, idea)
    weight = parse_spec(source).hyperparameters["nll_weight"]
    tensors = pairs()
    margin = ((tensors["policy_chosen_logps"] - tensors["reference_chosen_logps"])
              - (tensors["policy_rejected_logps"] - tensors["reference_rejected_logps"]))
    nll = -tensors["policy_chosen_logps"] / tensors["chosen_lengths"]
    torch.testing.assert_close(run(source, tensors), -F.logsigmoid(0.1 * margin) + weight * nll)


@pytest.mark.parametrize("adder, marker", [
    (mutation.add_length_normalization, "policy_chosen_logps = policy_chosen_logps / chosen_lengths"),
    (mutation.add_margin, "gamma"), (mutation.add_kl, "kl_weight"),
])
def test_each_term_adder_writes_its_term(adder, marker):
    for seed in range(4):
        dpo = syntax.read_module(seed_path("dpo").read_text(), "dpo")
        assert adder(dpo, random.Random(seed))
        source = syntax.write_module(dpo, "test")
        check_policy(source)
        assert marker in source


TOKENS_AND_SUMS = '''"""DPO plus a small pull on the chosen response's first token: reads sums and token inputs."""
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
         policy_chosen_token_logps, chosen_mask, beta: float = 0.1):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * margin) - 0.01 * (policy_chosen_token_logps * chosen_mask)[:, 0]
'''


def test_length_normalization_divides_the_sequence_sums_and_leaves_the_token_inputs(sandbox):
    """Only the (B,) sums are divided by the (B,) lengths: dividing a (B, T) token input by them was a
    shape error (a wasted proposal), and a loss that reads token inputs alone (ld_dpo) is left as it is."""
    assert evaluate(TOKENS_AND_SUMS, "both", "sanity", sandbox=sandbox).ok
    module = syntax.read_module(TOKENS_AND_SUMS, "both")
    assert mutation.add_length_normalization(module, random.Random(0))
    source = syntax.write_module(module, "test")
    assert "policy_chosen_logps = policy_chosen_logps / chosen_lengths" in source
    assert "policy_chosen_token_logps = " not in source
    assert evaluate(source, "both_normalized", "sanity", sandbox=sandbox).ok, source
    ld_dpo = syntax.read_module(seed_path("ld_dpo").read_text(), "ld_dpo")
    assert mutation.add_length_normalization(ld_dpo, random.Random(0)) is None


def test_added_names_reach_a_helper_that_needs_them(sandbox):
    """A margin or KL term added inside a blend's helper becomes that helper's parameter, passed down from `loss`."""
    blender = MutationProposer(operators=("blend",))
    blended = blender.propose([BY_NAME["dpo"], BY_NAME["ipo"]], CONTEXT, random.Random(0))[0]
    for seed in range(6):
        module = syntax.read_module(blended.source, blended.name)
        if mutation.add_kl(module, random.Random(seed)) and "chosen_kl.detach()" in ast.unparse(module.definitions[0]):
            source = syntax.write_module(module, "test")
            assert evaluate(source, "threaded", "sanity", sandbox=sandbox).ok, source
            return
    pytest.fail("no draw put the KL gap inside a helper")


def test_remove_term_drops_an_unused_hyperparameter():
    rng = random.Random(0)
    for _ in range(10):
        cpo = syntax.read_module(seed_path("cpo").read_text(), "cpo")
        edit = mutation.remove_term(cpo, rng)
        syntax.prune(edit.module)
        spec = parse_spec(syntax.write_module(edit.module, "test"))
        if "alpha * nll" in edit.idea and "to `preference`" in edit.idea:
            assert "alpha" not in spec.hyperparameters and "chosen_lengths" not in spec.inputs
            return
    pytest.fail("no draw dropped the NLL term")


def test_swapped_functions_still_push_lost_pairs_toward_winning():
    """Over margins <= 0 every swap of DPO's logsigmoid leaves the loss decreasing in the margin."""
    proposer, rng = MutationProposer(operators=("swap_function",)), random.Random(0)
    margins = torch.linspace(-40, 0, 41, dtype=torch.float64)
    zeros = torch.zeros_like(margins)
    tensors = {"policy_chosen_logps": margins, "policy_rejected_logps": zeros,
               "reference_chosen_logps": zeros, "reference_rejected_logps": zeros}
    templates = set()
    for _ in range(30):
        child = proposer.propose([BY_NAME["dpo"]], CONTEXT, rng)[0]
        templates.add(child.idea)
        values = run(child.source, tensors)
        assert bool((values[1:] <= values[:-1] + 1e-12).all()), child.source
        assert "--" not in child.source
    assert len(templates) >= 5


def test_perturb_constant_scales_one_constant():
    proposer, rng = MutationProposer(operators=("perturb_constant",)), random.Random(0)
    for _ in range(10):
        child = proposer.propose([BY_NAME["robust"]], CONTEXT, rng)[0]
        spec = parse_spec(child.source)
        changed = spec.hyperparameters["epsilon"] != 0.1 or "constant" in child.idea
        assert changed and spec.hyperparameters["beta"] == 0.1  # beta is tuned per candidate anyway


def test_no_child_rather_than_a_copy_of_the_parent():
    sft = BY_NAME["sft"]  # nothing to perturb: a "child" would be the parent itself
    assert MutationProposer(operators=("perturb_constant",)).propose([sft], CONTEXT, random.Random(0)) == []
    broken = ParentView(99, "broken", "def loss(x):\n    return x")
    assert MutationProposer().propose([broken], CONTEXT, random.Random(0)) == []


def test_different_seeds_give_different_children():
    proposer = MutationProposer()
    sources = {proposer.propose([BY_NAME["dpo"]], CONTEXT, random.Random(seed))[0].source for seed in range(8)}
    assert len(sources) >= 5


def test_unknown_operators_are_refused():
    with pytest.raises(ValueError, match="unknown mutation operators"):
        MutationProposer(operators=("teleport",))


# -- the LLM proposer: replies ----------------------------------------------------------------

def test_a_json_reply_becomes_a_proposal_with_its_usage(server):
    proposer = llm_proposer(server)
    proposal = proposer.propose([BY_NAME["dpo"]], CONTEXT, random.Random(0))[0]
    assert (proposal.name, proposal.model, proposal.operator) == ("margin_dpo", "gpt-4o-mini", "llm")
    assert proposal.source == GOOD_CODE and "target margin" in proposal.idea
    [usage] = proposer.drain_usage()
    assert (usage.outcome, usage.prompt_tokens, usage.completion_tokens) == ("ok", 1000, 500)
    assert usage.cost == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)
    assert proposer.drain_usage() == []
    assert_no_secret(proposal, usage)


def test_the_request_carries_the_key_and_the_prompt(server):
    llm_proposer(server).propose([BY_NAME["cpo"]], CONTEXT, random.Random(0))
    [request] = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {SECRET}"
    system, user = request["body"]["messages"]
    assert "policy_chosen_logps" in system["content"] and "torch.nn.functional" in system["content"]
    assert '"code"' in system["content"]
    text = user["content"]
    for expected in ("sentiment", "positive reviews within a KL budget", BY_NAME["cpo"].source.strip(),
                     "raises chosen on 50% of the grid", "reward 0.5", "bad_one [nan]: loss returned nan",
                     f"### {CONTEXT.top[0].name} (fitness 0", CONTEXT.top[2].source.strip(), "improves on cpo"):
        assert expected in text


def test_the_prompt_labels_its_numbers_and_shows_the_proposers_history_and_notes(server):
    from lossearch.search.proposers.base import IdeaRecord

    leader = replace(SEEDS[0], fitness=0.40, tier="finetune", spread=0.03, seeds=3)
    history = (IdeaRecord("twin_of_dpo", "DPO, reworded", "duplicate", "#7 dpo", instruction="improve"),
               IdeaRecord("wider_margin", "a target margin", "scored", tier="finetune", change=0.012, spread=0.05,
                          instruction="combine"),
               IdeaRecord("exploding", "an exponential", "failed", "nan: loss returned nan", instruction="novel"))
    context = replace(CONTEXT, top=(leader,), baseline={"finetune": 0.37, "bandit": 0.31},
                      noise={"finetune": 0.05}, history=history, notes="Margins helped; exponentials blew up.")
    from lossearch.ranking import OperatorStats

    proposer, rng, kinds = llm_proposer(server), random.Random(0), []
    for _ in range(8):  # the campaign's record of each instruction grows with its children, as a campaign's does
        record = {kind: OperatorStats(kind, kinds.count(kind), kinds.count(kind), kinds.count(kind), 0, 0.0)
                  for kind in set(kinds)}
        kinds.append(proposer.propose([BY_NAME["cpo"], BY_NAME["ipo"]], replace(context, instructions=record),
                                      rng)[0].instruction)
    texts = [request["body"]["messages"][1]["content"] for request in server.requests]
    text = texts[0]
    for expected in (f"### {leader.name} (finetune fitness 0.4 ± 0.03 over 3 seeds, +0.03 vs DPO",
                     "DPO's finetune fitness is 0.37", "DPO's bandit fitness is 0.31",
                     "varies by about ± 0.05 from seed to seed",
                     "## Your notes on this campaign so far\nMargins helped; exponentials blew up.",
                     "- wider_margin [combine]: a target margin -> +0.012 vs its best parent at the finetune tier "
                     "(noise ± 0.05)", "- exploding [novel]: an exponential -> failed: nan: loss returned nan",
                     "Your last proposal, twin_of_dpo, was the same loss as #7 dpo"):
        assert expected in text, expected
    # every instruction that applies is asked once before any twice (UCB over the campaign's record);
    # "repair" applies because a recent proposal failed, and names it
    assert set(kinds[:4]) == set(kinds) == {"combine", "improve", "novel", "repair"}
    assert any("Your proposal exploding (an exponential) failed" in t for t in texts)
    assert any("unlike every loss shown above" in t for t in texts)
    temperatures = {request["body"]["temperature"] for request in server.requests}
    assert temperatures == {0.7, 1.0}


@pytest.mark.parametrize("content", [
    "Here is my idea.\n```json\n" + GOOD_REPLY + "\n```\nHope it helps!",
    "Sure! " + GOOD_REPLY + " Let me know.",
    json.dumps({"thought": "t", "name": "fenced", "code": "```python\n" + GOOD_CODE + "```"}),
    GOOD_REPLY.replace("\\n", "\n"),  # raw newlines inside the JSON string: invalid JSON, common from LLMs
], ids=["fenced-json", "json-in-prose", "fenced-code-in-json", "raw-newlines"])
def test_json_is_found_inside_prose_and_fences(server, content):
    server.default = Reply(content)
    proposal = llm_proposer(server).propose([BY_NAME["dpo"]], CONTEXT, random.Random(0))[0]
    assert "def loss" in proposal.source and proposal.source.startswith('"""Margin DPO')


def test_a_python_block_alone_is_enough(server):
    server.default = Reply("I would add a margin.\n```python\n" + GOOD_CODE + "```\n")
    proposer = llm_proposer(server)
    proposal = proposer.propose([BY_NAME["dpo"]], CONTEXT, random.Random(0))[0]
    assert proposal.name == "margin_dpo" and proposal.idea.startswith("I would add a margin")
    assert proposer.drain_usage()[0].outcome == "ok"


@pytest.mark.parametrize("content", [
    "I cannot help with that.", "```json\n{\"thought\": \"no code\"}\n```", "",
    json.dumps({"thought": "t", "name": "n", "code": "def not_a_loss(x):\n    return x"}),
    json.dumps({"thought": "t", "name": "n", "code": "def loss(x):\n    return x"}),
    "{{{{ garbage ```python\nprint('hi')\n```",
], ids=["prose", "no-code", "empty", "no-loss-function", "bad-signature", "garbage"])
def test_a_malformed_reply_is_recorded_not_raised(server, content):
    server.default = Reply(content)
    proposer = llm_proposer(server)
    assert proposer.propose([BY_NAME["dpo"]], CONTEXT, random.Random(0)) == []
    [usage] = proposer.drain_usage()
    assert usage.outcome == "malformed" and usage.detail
    assert usage.prompt_tokens == 1000  # a malformed reply still costs
    assert len(server.requests) == 1


def test_code_without_a_docstring_gets_one():
    body = GOOD_CODE.split('"""\n', 2)[-1]
    draft = parse_reply(json.dumps({"thought": "Shift the margin.", "name": "shifted", "code": body}))
    assert ast.get_docstring(ast.parse(draft.code)) == "shifted: Shift the margin."
    with pytest.raises(MalformedReply):
        parse_reply(None)


# -- the LLM proposer: failures and retries ---------------------------------------------------

def test_429_is_retried_after_the_servers_retry_after(server):
    server.script.extend([Reply(status=429, headers={"Retry-After": "1"})])
    proposer, started = llm_proposer(server), time.monotonic()
    assert proposer.propose([BY_NAME["dpo"]], CONTEXT, random.Random(0))
    assert time.monotonic() - started >= 0.95
    assert [usage.outcome for usage in proposer.drain_usage()] == ["rate_limited", "ok"]


def test_5xx_is_retried_with_backoff(server):
    server.script.extend([Reply(status=500), Reply(status=502), Reply(status=503)])
    proposer = llm_proposer(server)
    assert proposer.propose([BY_NAME["dpo"]], CONTEXT, random.Random(0))
    usages = proposer.drain_usage()
    assert [usage.outcome for usage in usages] == ["server_error"] * 3 + ["ok"]
    assert usages[0].detail == "HTTP 500: scripted 500"


def test_a_timeout_is_retried(server):
    server.script.append(Reply(delay=1.0))
    proposer = llm_proposer(server)
    assert proposer.propose([BY_NAME["dpo"]], CONTEXT, random.Random(0))
    assert [usage.outcome for usage in proposer.drain_usage()] == ["timeout", "ok"]


def test_persistent_5xx_ends_in_one_clear_line(server):
    server.default = Reply(status=500)
    proposer = llm_proposer(server, max_retries=2)
    with pytest.raises(ProposerError) as caught:
        proposer.propose([BY_NAME["dpo"]], CONTEXT, random.Random(0))
    message = str(caught.value)
    assert "\n" not in message and server.url in message and "after 3 attempts" in message
    assert [usage.outcome for usage in proposer.drain_usage()] == ["server_error"] * 3
    assert_no_secret(message)


def test_the_deadline_bounds_a_proposal_across_retries(server):
    server.default = Reply(delay=0.6)
    proposer = llm_proposer(server, timeout=0.3, deadline=1.0, max_retries=50)
    started = time.monotonic()
    with pytest.raises(ProposerError, match="did not answer within 0.3 s"):
        proposer.propose([BY_NAME["dpo"]], CONTEXT, random.Random(0))
    assert time.monotonic() - started < 4.0  # 51 attempts of 0.3 s would take 15 s; slack for a loaded machine


def test_an_unreachable_endpoint_ends_in_one_clear_line(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    url = f"http://127.0.0.1:{closed_port()}/v1"
    proposer = LLMProposer(LLMConfig(base_url=url, models=("m",), timeout=0.4, max_retries=2, backoff=0.01))
    with pytest.raises(ProposerError) as caught:
        proposer.propose([BY_NAME["dpo"]], CONTEXT, random.Random(0))
    message = str(caught.value)
    assert message.startswith(f"cannot reach the LLM endpoint at {url}") and "\n" not in message
    assert "--llm-base-url" in message
    assert [usage.outcome for usage in proposer.drain_usage()] == ["unreachable"] * 3
    assert_no_secret(message)


def test_a_rejected_key_is_not_retried(server):
    server.default = Reply(status=401, raw={"error": {"message": f"Incorrect API key provided: {SECRET}"}})
    proposer = llm_proposer(server)
    with pytest.raises(ProposerError) as caught:
        proposer.propose([BY_NAME["dpo"]], CONTEXT, random.Random(0))
    assert str(caught.value) == (f"the LLM endpoint at {server.url} rejected the API key (HTTP 401):"
                                 " check OPENAI_API_KEY")
    [usage] = proposer.drain_usage()
    assert usage.outcome == "rejected" and len(server.requests) == 1
    assert_no_secret(caught.value, usage)


def test_an_unknown_model_is_one_line_with_the_servers_reason(server):
    server.default = Reply(status=404, raw={"error": {"message": f"model 'nope' not found (key {SECRET})"}})
    with pytest.raises(ProposerError) as caught:
        llm_proposer(server, models=("nope",)).propose([BY_NAME["dpo"]], CONTEXT, random.Random(0))
    message = str(caught.value)
    assert "HTTP 404" in message and "model 'nope' not found" in message and "\n" not in message
    assert_no_secret(message)


def test_a_missing_key_for_a_remote_endpoint_is_one_clear_line(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ProposerError) as caught:
        LLMProposer(LLMConfig(base_url="https://api.openai.com/v1"))
    assert str(caught.value).startswith("OPENAI_API_KEY is not set")


def test_a_local_server_needs_no_key(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    assert llm_proposer(server).propose([BY_NAME["dpo"]], CONTEXT, random.Random(0))
    assert server.requests[0]["headers"]["authorization"] == "Bearer lossearch-local"


# -- the LLM proposer: models, prices, construction ------------------------------------------

def test_several_models_are_each_tried_then_chosen_by_improvement_per_cost(server):
    proposer = llm_proposer(server, models=("gpt-4o-mini", "local-model"))
    rng = random.Random(0)
    first = [proposer.propose([BY_NAME["dpo"]], CONTEXT, rng)[0].model for _ in range(2)]
    assert sorted(first) == ["gpt-4o-mini", "local-model"]
    for _ in range(20):
        proposer.record_outcome("local-model", improvement=0.5, cost=0.0)
        proposer.record_outcome("gpt-4o-mini", improvement=0.0, cost=0.01)
    later = [proposer.propose([BY_NAME["dpo"]], CONTEXT, rng)[0].model for _ in range(10)]
    assert later.count("local-model") >= 7
    assert [request["body"]["model"] for request in server.requests] == first + later


def test_the_bandit_explores_a_neglected_model():
    bandit, rng = ModelBandit(["a", "b"], exploration=1.0), random.Random(0)
    for _ in range(2):
        bandit.choose(rng)
    bandit.record("a", 1.0, 0.001)
    bandit.record("b", 0.1, 0.001)
    choices = [bandit.choose(rng) for _ in range(60)]
    assert choices.count("a") > choices.count("b") > 0


def test_prices_match_the_longest_prefix_and_unknown_models_are_free():
    prices = {"gpt-4o": (2.5, 10.0), "gpt-4o-mini": (0.15, 0.6)}
    assert price_of("gpt-4o-mini-2024-07-18", prices) == (0.15, 0.6)
    assert price_of("openai/gpt-4o", prices) == (2.5, 10.0)
    assert price_of("qwen2.5-coder", prices) == (0.0, 0.0)


@pytest.mark.parametrize("url, local", [
    ("http://127.0.0.1:8000/v1", True), ("http://localhost:11434/v1", True), ("http://[::1]:8000/v1", True),
    ("http://192.168.1.5/v1", True), ("https://api.openai.com/v1", False), ("https://8.8.8.8/v1", False),
])
def test_local_endpoints_are_recognized(url, local):
    assert is_local(url) is local


def test_make_proposer_builds_each_kind(server):
    assert isinstance(make_proposer("mutation"), MutationProposer)
    llm = make_proposer("llm", base_url=server.url, models=["gpt-4o-mini"], timeout=0.4)
    assert isinstance(llm, LLMProposer) and llm.config.models == ("gpt-4o-mini",)
    with pytest.raises(ProposerError, match="unknown proposer 'magic': choose one of mutation, llm"):
        make_proposer("magic")
    with pytest.raises(ProposerError, match="not an http"):
        make_proposer("llm", base_url="127.0.0.1:8000")
