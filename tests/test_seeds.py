"""The seed library: 47 known losses, each checked against a trusted reference.

Where TRL 1.16 computes a loss (DPOTrainer._compute_loss, CPOTrainer.cpo_loss,
ORPOTrainer.odds_ratio_loss) the reference is TRL's own code, run on the same
log-probs through a stub trainer (and, for DPOTrainer, a stub model that returns
those log-probs). The losses TRL 1.16 lacks are compared with plain formulas in
Python floats, each saying which paper, authors' release or TRL lines it mirrors.
Seeds are loaded the way the evaluator loads them: `seed_paths` -> `read_spec` ->
`load_loss` -> `call_loss`.
"""

from __future__ import annotations

import ast
import math
import re
import statistics
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from lossearch.contract import TOKEN_INPUTS, TRAINING_STATE_INPUTS, call_loss, load_loss, read_spec
from lossearch.search.seeds import seed_paths

EXPECTED_HYPERPARAMETERS = {
    "alpha_dpo": {"beta": 2.5, "gamma_beta_ratio": 0.6, "alpha": 0.2},
    "alpha_po": {"beta": 2.5, "gamma": 0.1, "alpha": 0.25},
    "aot": {"beta": 0.1},
    "aot_unpaired": {"beta": 0.1},
    "apo_down": {"beta": 0.1},
    "apo_zero": {"beta": 0.1},
    "beta_dpo": {"beta": 0.1, "alpha": 0.6},
    "bco_pair": {"beta": 0.1},
    "cal_dpo": {"beta": 0.1},
    "cdpo": {"beta": 0.1, "epsilon": 0.1},
    "chi_po": {"beta": 0.1},
    "cpo": {"beta": 0.1, "alpha": 1.0},
    "discopop": {"beta": 0.1, "tau": 0.05},
    "dpo": {"beta": 0.1},
    "dpo_shift": {"beta": 0.1, "rejected_scale": 0.95},
    "dpo_shift_linear": {"beta": 0.1, "rejected_scale_start": 0.75, "rejected_scale_end": 1.0},
    "dpop": {"beta": 0.1, "penalty_weight": 50.0},
    "dr_dpo": {"beta": 0.1, "beta_prime": 1.0},
    "exo_pair": {"beta": 0.1, "epsilon": 1e-3},
    "fdpo_alpha": {"beta": 0.1, "alpha": 0.5},
    "fdpo_forward_kl": {"beta": 0.1},
    "fdpo_js": {"beta": 0.1},
    "gpo_exponential": {"beta": 0.1},
    "gpo_savage": {"beta": 0.1},
    "gpo_truncated_quadratic": {"beta": 0.1},
    "h_dpo": {"beta": 0.1, "alpha": 0.95},
    "hinge": {"beta": 0.1},
    "ipo": {"beta": 0.1},
    "kto_pair": {"beta": 0.1},
    "ld_dpo": {"beta": 0.1, "alpha": 0.5},
    "minor_dpo": {"beta": 0.1},
    "nca_pair": {"beta": 0.1},
    "odpo": {"beta": 0.1, "alpha": 1.0, "min_gap": 0.01},
    "orpo": {"beta": 0.1},  # beta is ORPO's lambda, as in TRL's ORPOConfig
    "rdpo": {"beta": 0.1, "alpha": 0.01},
    "robust": {"beta": 0.1, "epsilon": 0.1},
    "rpo": {"beta": 0.1, "alpha": 1.0},
    "sampo": {"beta": 0.1},
    "sft": {"beta": 0.1},  # takes no beta; the contract still records the default
    "sigmoid_norm": {"beta": 0.1},
    "simper": {"beta": 0.1},  # takes no beta either: SimPER has no hyperparameter
    "simpo": {"beta": 2.0, "gamma": 0.5},
    "slic": {"beta": 0.1, "delta": 1.0},  # beta is SLiC-HF's regularizer weight lambda
    "sppo_hard": {"beta": 0.1},
    "tdpo": {"beta": 0.1, "alpha": 0.5},
    "tdpo1": {"beta": 0.1},
    "wpo": {"beta": 0.1},
}

# seed -> the DPOConfig fields that select the same loss in TRL 1.16
TRL_DPO_CASES = {
    "dpo": {"loss_type": "sigmoid"},
    "hinge": {"loss_type": "hinge"},
    "ipo": {"loss_type": "ipo"},
    "robust": {"loss_type": "robust", "label_smoothing": 0.1},
    "exo_pair": {"loss_type": "exo_pair", "label_smoothing": 1e-3},
    "nca_pair": {"loss_type": "nca_pair"},
    "bco_pair": {"loss_type": "bco_pair"},
    "sppo_hard": {"loss_type": "sppo_hard"},
    "aot": {"loss_type": "aot"},
    "aot_unpaired": {"loss_type": "aot_unpaired"},
    "apo_zero": {"loss_type": "apo_zero"},
    "apo_down": {"loss_type": "apo_down"},
    "discopop": {"loss_type": "discopop", "discopop_tau": 0.05},
    "sigmoid_norm": {"loss_type": "sigmoid_norm"},
    "sft": {"loss_type": "sft"},
    "fdpo_forward_kl": {"loss_type": "sigmoid", "f_divergence_type": "forward_kl"},
    "fdpo_js": {"loss_type": "sigmoid", "f_divergence_type": "js_divergence"},
    "rpo": {"loss_type": ("sigmoid", "sft"), "loss_weights": (1.0, 1.0)},
    "wpo": {"loss_type": "sigmoid", "use_weighting": True},
}
# their i-th output is a quantile's or the batch's loss (or holds a batch term), not pair i's: compare
# batch means only
BATCH_LEVEL = {"aot", "aot_unpaired", "sft", "rpo"}
BETAS = (0.1, 0.5, 2.0)
BATCH_SIZE = 6
LOGP_NAMES = ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps")
TOLERANCE = {"rtol": 1e-6, "atol": 1e-9}


@pytest.fixture(scope="module")
def seeds():
    """name -> (spec, loss function), loaded through the contract as the evaluator loads them."""
    loaded = {}
    for path in seed_paths():
        spec = read_spec(path)
        loaded[spec.name] = (spec, load_loss(spec.source, spec.name))
    return loaded


def make_batch(seed: int, batch_size: int = BATCH_SIZE) -> dict[str, torch.Tensor]:
    """Random contract inputs in float64; the policy log-probs require grad."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch_size, generator=generator, dtype=torch.float64)

    batch = {name: uniform(-20.0, -5.0) for name in LOGP_NAMES}
    for side in ("chosen", "rejected"):
        batch[f"{side}_lengths"] = torch.randint(3, 31, (batch_size,), generator=generator).double()
        batch[f"{side}_kl"] = uniform(0.0, 2.0)
    for name in ("policy_chosen_logps", "policy_rejected_logps", "chosen_kl", "rejected_kl"):
        batch[name].requires_grad_(True)
    # drawn after the older inputs, so those keep their values; score gaps of both signs
    batch["chosen_scores"], batch["rejected_scores"] = uniform(-1.0, 1.0), uniform(-1.0, 1.0)
    batch["progress"] = torch.tensor(0.3, dtype=torch.float64)
    batch["running_margin_mean"] = torch.tensor(0.5, dtype=torch.float64)
    batch["running_margin_std"] = torch.tensor(3.0, dtype=torch.float64)
    batch.update(token_inputs(batch, generator))
    return batch


def token_inputs(batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """(B, 30) token inputs whose rows sum to the batch's sequence log-probs: each response's log-prob
    spread evenly over its first `length` positions plus noise summing to zero there; the policy's are
    functions of the policy's sequence log-probs, so gradients reach them."""
    token_batch = {}
    for side in ("chosen", "rejected"):
        lengths = batch[f"{side}_lengths"]  # (B,)
        mask = (torch.arange(30)[None, :] < lengths[:, None]).double()  # (B, 30)
        for model in ("reference", "policy"):
            noise = torch.randn(mask.shape, generator=generator, dtype=torch.float64) * mask
            noise = noise - (noise.sum(-1) / lengths)[:, None] * mask  # rows sum to 0
            spread = (batch[f"{model}_{side}_logps"] / lengths)[:, None] * mask  # (B, 30)
            token_batch[f"{model}_{side}_token_logps"] = spread + noise
        token_batch[f"{side}_mask"] = mask
    return token_batch


def pair_of(batch: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """A batch of one: pair `index` (and the batch's 0-dim inputs), detached from the original graph."""
    return {name: (value[index:index + 1] if value.dim() else value).detach().clone()
            .requires_grad_(value.requires_grad) for name, value in batch.items()}


def gradients(value: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """d value / d (policy chosen, policy rejected log-probs); zeros where value ignores one."""
    inputs = [batch["policy_chosen_logps"], batch["policy_rejected_logps"]]
    return list(torch.autograd.grad(value, inputs, allow_unused=True, materialize_grads=True))


def run_seed(seeds, name: str, batch, beta: float | None = None, **hyperparameters) -> torch.Tensor:
    spec, function = seeds[name]
    return call_loss(function, spec, batch, beta=beta, hyperparameters=hyperparameters)


# -- TRL references ----------------------------------------------------------------------


def trl_dpo_loss(batch: dict[str, torch.Tensor], beta: float, loss_type: str | tuple[str, ...],
                 label_smoothing: float = 0.0, f_divergence_type: str = "reverse_kl", discopop_tau: float = 0.05,
                 loss_weights: tuple[float, ...] | None = None, use_weighting: bool = False,
                 f_alpha_divergence_coef: float = 1.0) -> torch.Tensor:
    """TRL 1.16's DPOTrainer._compute_loss on these log-probs: the batch-mean loss.

    A stub model returns per-token log-probs that sum to the batch's summed
    log-probs (spread evenly over each response's tokens), after a one-token
    prompt, so TRL's token masks see the batch's lengths. Reference log-probs
    come in as precomputed, which skips the reference model. A tuple of loss
    types is TRL's weighted multi-loss (`loss_weights`, ones by default). The
    stub's per-token log sum_v pi(v)^2, which WPO's weighting subtracts, is zero.
    """
    loss_types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    weights = [1.0] * len(loss_types) if loss_weights is None else list(loss_weights)
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")
    logps = torch.cat([batch["policy_chosen_logps"], batch["policy_rejected_logps"]])  # (2B,) chosen then rejected
    lengths = torch.cat([batch["chosen_lengths"], batch["rejected_lengths"]]).long()  # (2B,)
    width = int(lengths.max()) + 1  # one prompt token, then the longest completion
    positions = torch.arange(width)
    completion_mask = ((positions >= 1) & (positions <= lengths[:, None])).long()  # (2B, width)
    shift_mask = completion_mask[:, 1:]  # (2B, width - 1): positions that predict a completion token
    per_token_logps = shift_mask * (logps / lengths)[:, None]  # (2B, width - 1), rows sum to logps
    zeros = torch.zeros_like(per_token_logps)
    outputs = SimpleNamespace(log_probs=per_token_logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(),
                              log_sum_sq_probs=zeros)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=False),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, use_weighting=use_weighting,
        f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha_divergence_coef,
        loss_types=loss_types, loss_weights=weights, beta=beta, label_smoothing=label_smoothing,
        args=SimpleNamespace(discopop_tau=discopop_tau),
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros_like(completion_mask),
        "attention_mask": torch.ones_like(completion_mask),
        "completion_mask": completion_mask,
        "ref_chosen_logps": batch["reference_chosen_logps"],
        "ref_rejected_logps": batch["reference_rejected_logps"],
    }
    return dpo_trainer.DPOTrainer._compute_loss(trainer, lambda **kwargs: outputs, inputs, return_outputs=False)


def trl_cpo_losses(chosen_logps, rejected_logps, beta: float, loss_type: str, simpo_gamma: float = 0.5,
                   alpha: float = 0.0, label_smoothing: float = 0.0):
    """TRL 1.16's CPOTrainer.cpo_loss: per-pair preference losses (no NLL term; AlphaPO off at alpha 0)."""
    cpo_trainer = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
    trainer = SimpleNamespace(alpha=alpha, beta=beta, loss_type=loss_type, simpo_gamma=simpo_gamma,
                              label_smoothing=label_smoothing, accelerator=SimpleNamespace(device=torch.device("cpu")))
    losses, _, _ = cpo_trainer.CPOTrainer.cpo_loss(trainer, chosen_logps, rejected_logps)
    return losses


def trl_orpo_odds_ratio_term(chosen_mean_logps, rejected_mean_logps, beta: float):
    """TRL 1.16's ORPOTrainer.odds_ratio_loss: beta * log sig(log odds ratio), per pair (float32 inside)."""
    orpo_trainer = pytest.importorskip("trl.experimental.orpo.orpo_trainer")
    trainer = SimpleNamespace(beta=beta, accelerator=SimpleNamespace(device=torch.device("cpu")))
    losses, *_ = orpo_trainer.ORPOTrainer.odds_ratio_loss(trainer, chosen_mean_logps, rejected_mean_logps)
    return losses


# -- the library as a whole ---------------------------------------------------------------


def test_library_has_the_47_seeds():
    assert len(EXPECTED_HYPERPARAMETERS) == 47
    assert sorted(path.stem for path in seed_paths()) == sorted(EXPECTED_HYPERPARAMETERS)


@pytest.mark.parametrize("name", sorted(EXPECTED_HYPERPARAMETERS))
def test_seed_has_docstring_naming_loss_and_paper(seeds, name):
    spec, _ = seeds[name]
    assert ast.get_docstring(ast.parse(spec.source)), "the module docstring is missing"
    # "IPO (Azar et al., 2023): ..." -- a name, then the authors and year in parentheses
    assert re.match(r"^\S.*\([^)]*\b(19|20)\d\d\b[^)]*\)", spec.summary), spec.summary


@pytest.mark.parametrize("name", sorted(EXPECTED_HYPERPARAMETERS))
def test_seed_hyperparameter_defaults(seeds, name):
    spec, _ = seeds[name]
    assert dict(spec.hyperparameters) == EXPECTED_HYPERPARAMETERS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_HYPERPARAMETERS))
def test_seed_is_differentiable(seeds, name):
    # small margins (policy near the reference) keep hinge-type losses inside their active region
    generator = torch.Generator().manual_seed(7)
    batch = make_batch(3)
    for side in ("chosen", "rejected"):
        noise = torch.randn(BATCH_SIZE, generator=generator, dtype=torch.float64)
        batch[f"policy_{side}_logps"] = (batch[f"reference_{side}_logps"] + noise).detach().requires_grad_(True)
    batch.update(token_inputs(batch, generator))  # the token log-probs of these policy log-probs
    (grad,) = torch.autograd.grad(run_seed(seeds, name, batch).mean(), [batch["policy_chosen_logps"]])
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(EXPECTED_HYPERPARAMETERS))
def test_seed_works_on_a_batch_of_one(seeds, name):
    # the losses that read batch statistics (sort, mean, log-mean-exp) must still work on one pair
    ours = run_seed(seeds, name, pair_of(make_batch(8), 0))
    assert ours.shape == (1,) and torch.isfinite(ours).all()


# -- seeds that TRL 1.16 computes -----------------------------------------------------------


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("name", sorted(TRL_DPO_CASES))
def test_seed_equals_trl_dpo_trainer(seeds, name, beta):
    config = TRL_DPO_CASES[name]
    for seed in (0, 1):
        batch = make_batch(seed)
        ours = run_seed(seeds, name, batch, beta=beta)
        theirs = trl_dpo_loss(batch, beta, **config)
        torch.testing.assert_close(ours.mean(), theirs, **TOLERANCE)
        # same gradients w.r.t. the policy log-probs: the same loss, not only the same value
        for our_grad, their_grad in zip(gradients(ours.mean(), batch), gradients(theirs, batch)):
            torch.testing.assert_close(our_grad, their_grad, **TOLERANCE)
        if name in BATCH_LEVEL or seed != 0:
            continue  # per pair once per beta is enough: each call re-runs TRL's whole _compute_loss
        for index in range(BATCH_SIZE):
            torch.testing.assert_close(ours[index], trl_dpo_loss(pair_of(batch, index), beta, **config), **TOLERANCE)


@pytest.mark.parametrize(("name", "hyperparameters", "config"), [
    ("robust", {"epsilon": 0.25}, {"loss_type": "robust", "label_smoothing": 0.25}),
    ("exo_pair", {"epsilon": 0.05}, {"loss_type": "exo_pair", "label_smoothing": 0.05}),
    ("discopop", {"tau": 0.5}, {"loss_type": "discopop", "discopop_tau": 0.5}),
    ("rpo", {"alpha": 0.3}, {"loss_type": ("sigmoid", "sft"), "loss_weights": (1.0, 0.3)}),
])
def test_seed_hyperparameter_matches_trl_config_field(seeds, name, hyperparameters, config):
    batch = make_batch(4)
    ours = run_seed(seeds, name, batch, beta=0.3, **hyperparameters)
    torch.testing.assert_close(ours.mean(), trl_dpo_loss(batch, 0.3, **config), **TOLERANCE)


def test_discopop_stays_finite_where_trl_overflows(seeds):
    # exp(-logits) overflows at logits = -1000 and TRL gets 0 * inf = nan; the seed gives the limit, -log sig
    batch = make_batch(5)
    batch["policy_chosen_logps"] = (batch["reference_chosen_logps"] - 10_000.0).detach()
    ours = run_seed(seeds, "discopop", batch, beta=0.1)
    margin = (batch["policy_chosen_logps"] - batch["reference_chosen_logps"]
              - batch["policy_rejected_logps"] + batch["reference_rejected_logps"])
    expected = torch.nn.functional.softplus(-0.1 * margin)
    torch.testing.assert_close(ours, expected.detach(), **TOLERANCE)


@pytest.mark.parametrize(("beta", "gamma"), [(2.0, 0.5), (0.5, 1.0), (2.5, 0.0)])
def test_simpo_equals_trl_cpo_simpo(seeds, beta, gamma):
    batch = make_batch(10)
    ours = run_seed(seeds, "simpo", batch, beta=beta, gamma=gamma)
    # TRL feeds SimPO the per-token average log-probs (get_batch_logps(average_log_prob=True))
    theirs = trl_cpo_losses(batch["policy_chosen_logps"] / batch["chosen_lengths"],
                            batch["policy_rejected_logps"] / batch["rejected_lengths"],
                            beta, "simpo", simpo_gamma=gamma)
    torch.testing.assert_close(ours, theirs, **TOLERANCE)
    for our_grad, their_grad in zip(gradients(ours.sum(), batch), gradients(theirs.sum(), batch)):
        torch.testing.assert_close(our_grad, their_grad, **TOLERANCE)


@pytest.mark.parametrize(("beta", "alpha"), [(0.1, 1.0), (0.5, 0.0), (1.0, 0.3)])
def test_cpo_is_trl_cpo_sigmoid_plus_per_pair_nll(seeds, beta, alpha):
    batch = make_batch(11)
    ours = run_seed(seeds, "cpo", batch, beta=beta, alpha=alpha)
    # TRL's NLL is a token mean over the whole batch; the seed's is per pair, as in the CPO paper's sum
    nll = -batch["policy_chosen_logps"] / batch["chosen_lengths"]
    theirs = trl_cpo_losses(batch["policy_chosen_logps"], batch["policy_rejected_logps"], beta, "sigmoid") + alpha * nll
    torch.testing.assert_close(ours, theirs, **TOLERANCE)
    for our_grad, their_grad in zip(gradients(ours.sum(), batch), gradients(theirs.sum(), batch)):
        torch.testing.assert_close(our_grad, their_grad, **TOLERANCE)


@pytest.mark.parametrize("beta", BETAS)
def test_orpo_is_nll_minus_trl_odds_ratio_term(seeds, beta):
    batch = make_batch(12)
    ours = run_seed(seeds, "orpo", batch, beta=beta)
    chosen_mean = batch["policy_chosen_logps"] / batch["chosen_lengths"]
    rejected_mean = batch["policy_rejected_logps"] / batch["rejected_lengths"]
    # ORPOTrainer: loss = NLL - mean(odds_ratio_loss); TRL casts to float32, hence the looser tolerance
    theirs = -chosen_mean - trl_orpo_odds_ratio_term(chosen_mean, rejected_mean, beta).double()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for our_grad, their_grad in zip(gradients(ours.sum(), batch), gradients(theirs.sum(), batch)):
        torch.testing.assert_close(our_grad, their_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("beta", "gamma", "alpha"), [(2.5, 0.1, 0.25), (2.0, 0.5, 0.1), (1.0, 0.0, 0.5)])
def test_alpha_po_equals_trl_cpo_alphapo(seeds, beta, gamma, alpha):
    batch = make_batch(13)
    ours = run_seed(seeds, "alpha_po", batch, beta=beta, gamma=gamma, alpha=alpha)
    # TRL's AlphaPO is its SimPO (per-token average log-probs) with `alpha` set
    theirs = trl_cpo_losses(batch["policy_chosen_logps"] / batch["chosen_lengths"],
                            batch["policy_rejected_logps"] / batch["rejected_lengths"],
                            beta, "simpo", simpo_gamma=gamma, alpha=alpha)
    torch.testing.assert_close(ours, theirs, **TOLERANCE)
    for our_grad, their_grad in zip(gradients(ours.sum(), batch), gradients(theirs.sum(), batch)):
        torch.testing.assert_close(our_grad, their_grad, **TOLERANCE)


@pytest.mark.parametrize(("beta", "epsilon"), [(0.1, 0.1), (0.5, 0.25), (2.0, 0.0)])
def test_cdpo_equals_trl_cpo_sigmoid_with_label_smoothing_on_log_ratios(seeds, beta, epsilon):
    batch = make_batch(14)
    ours = run_seed(seeds, "cdpo", batch, beta=beta, epsilon=epsilon)
    # CPO's sigmoid loss on log-ratios instead of log-probs is DPO's, label smoothing included
    theirs = trl_cpo_losses(batch["policy_chosen_logps"] - batch["reference_chosen_logps"],
                            batch["policy_rejected_logps"] - batch["reference_rejected_logps"],
                            beta, "sigmoid", label_smoothing=epsilon)
    torch.testing.assert_close(ours, theirs, **TOLERANCE)
    for our_grad, their_grad in zip(gradients(ours.sum(), batch), gradients(theirs.sum(), batch)):
        torch.testing.assert_close(our_grad, their_grad, **TOLERANCE)


@pytest.mark.parametrize(("beta", "alpha"), [(0.1, 0.5), (0.5, 0.3), (2.0, 0.8)])
def test_fdpo_alpha_equals_trl_alpha_divergence(seeds, beta, alpha):
    # TRL's alpha-divergence branch only runs in fp16/bf16/fp32 (its clamp table has no float64);
    # its coefficient a is the paper's 1 - alpha
    batch = {name: value.detach().float().requires_grad_(value.requires_grad) for name, value in make_batch(15).items()}
    ours = run_seed(seeds, "fdpo_alpha", batch, beta=beta, alpha=alpha)
    theirs = trl_dpo_loss(batch, beta, "sigmoid", f_divergence_type="alpha_divergence",
                          f_alpha_divergence_coef=1.0 - alpha)
    torch.testing.assert_close(ours.mean(), theirs, rtol=1e-5, atol=1e-6)
    for our_grad, their_grad in zip(gradients(ours.mean(), batch), gradients(theirs, batch)):
        torch.testing.assert_close(our_grad, their_grad, rtol=1e-5, atol=1e-6)


# -- seeds TRL 1.16 lacks: hand references in Python floats -------------------------------


def softplus(x: float) -> float:
    """log(1 + e^x) without overflow; -log sig(z) = softplus(-z)."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def sigmoid(x: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * x))


def rows(batch: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    """The batch as one dict of Python floats per pair (a 0-dim input is every pair's)."""
    columns = {name: value.detach().tolist() for name, value in batch.items()}
    return [{name: column[index] if isinstance(column, list) else column for name, column in columns.items()}
            for index in range(BATCH_SIZE)]


def implicit_margin(row: dict[str, float]) -> float:
    return ((row["policy_chosen_logps"] - row["reference_chosen_logps"])
            - (row["policy_rejected_logps"] - row["reference_rejected_logps"]))


@pytest.mark.parametrize(("beta", "alpha"), [(0.1, 0.01), (0.5, 0.1), (2.0, 0.0)])
def test_rdpo_matches_paper_formula(seeds, beta, alpha):
    # R-DPO (Park et al., 2024, eq. 9): -log sig(beta * margin + alpha * (|y_w| - |y_l|))
    batch = make_batch(20)
    ours = run_seed(seeds, "rdpo", batch, beta=beta, alpha=alpha)
    expected = [softplus(-(beta * implicit_margin(row) + alpha * (row["chosen_lengths"] - row["rejected_lengths"])))
                for row in rows(batch)]
    torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float64), **TOLERANCE)


@pytest.mark.parametrize(("beta", "alpha"), [(0.1, 0.5), (0.5, 1.0), (2.0, 0.2)])
def test_tdpo_matches_tdpo2_formula_and_stops_chosen_kl_gradient(seeds, beta, alpha):
    # TDPO2 (Zeng et al., 2024; the authors' tdpo_loss with if_tdpo2=True):
    # logits = margin - alpha * (rejected_kl - sg(chosen_kl)); loss = -log sig(beta * logits)
    batch = make_batch(21)
    ours = run_seed(seeds, "tdpo", batch, beta=beta, alpha=alpha)
    logits = [beta * (implicit_margin(row) - alpha * (row["rejected_kl"] - row["chosen_kl"])) for row in rows(batch)]
    torch.testing.assert_close(ours, torch.tensor([softplus(-z) for z in logits], dtype=torch.float64), **TOLERANCE)
    chosen_kl_grad, rejected_kl_grad = torch.autograd.grad(
        ours.sum(), [batch["chosen_kl"], batch["rejected_kl"]], allow_unused=True, materialize_grads=True)
    assert torch.equal(chosen_kl_grad, torch.zeros_like(chosen_kl_grad))
    # d/d rejected_kl of softplus(-z), z = beta * (... - alpha * rejected_kl): beta * alpha * sig(-z)
    expected = torch.tensor([beta * alpha * sigmoid(-z) for z in logits], dtype=torch.float64)
    torch.testing.assert_close(rejected_kl_grad, expected, **TOLERANCE)


def trl_08_kto_pair(batch: dict[str, torch.Tensor], beta: float) -> torch.Tensor:
    """TRL 0.8 DPOTrainer.dpo_loss, loss_type="kto_pair", as it was written there; returns the batch mean.

    chosen_KL = (policy_chosen - reference_chosen).mean().clamp(min=0), likewise
    rejected_KL, with no detach; the chosen half is scored against rejected_KL
    and the rejected half against chosen_KL; the 2B losses are concatenated.
    """
    chosen_logratios = batch["policy_chosen_logps"] - batch["reference_chosen_logps"]
    rejected_logratios = batch["policy_rejected_logps"] - batch["reference_rejected_logps"]
    chosen_kl = chosen_logratios.mean().clamp(min=0)
    rejected_kl = rejected_logratios.mean().clamp(min=0)
    losses = torch.cat((1 - torch.sigmoid(beta * (chosen_logratios - rejected_kl)),
                        1 - torch.sigmoid(beta * (chosen_kl - rejected_logratios))), 0)
    return losses.mean()


@pytest.mark.parametrize("beta", BETAS)
def test_kto_pair_equals_trl_08(seeds, beta):
    for seed in (22, 23):
        batch = make_batch(seed)
        # shift the chosen policy up so the chosen KL estimate is positive and its clamp is inactive
        batch["policy_chosen_logps"] = (batch["reference_chosen_logps"] + torch.linspace(-1.0, 5.0, BATCH_SIZE,
                                        dtype=torch.float64)).detach().requires_grad_(True)
        ours = run_seed(seeds, "kto_pair", batch, beta=beta)
        table = rows(batch)
        chosen_kl = max(0.0, sum(r["policy_chosen_logps"] - r["reference_chosen_logps"] for r in table) / BATCH_SIZE)
        rejected_kl = max(0.0, sum(r["policy_rejected_logps"] - r["reference_rejected_logps"]
                                   for r in table) / BATCH_SIZE)
        expected = [0.5 * ((1 - sigmoid(beta * (r["policy_chosen_logps"] - r["reference_chosen_logps"] - rejected_kl)))
                           + (1 - sigmoid(beta * (chosen_kl
                                                  - r["policy_rejected_logps"] + r["reference_rejected_logps"]))))
                    for r in table]
        torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float64), **TOLERANCE)
        # gradients too: TRL 0.8 lets them flow through the KL estimates (no detach)
        theirs = trl_08_kto_pair(batch, beta)
        for our_grad, their_grad in zip(gradients(ours.mean(), batch), gradients(theirs, batch)):
            torch.testing.assert_close(our_grad, their_grad, **TOLERANCE)


@pytest.mark.parametrize(("beta", "delta"), [(0.1, 1.0), (0.5, 5.0), (0.0, 2.0)])
def test_slic_matches_slic_hf_formula(seeds, beta, delta):
    # SLiC-HF (Zhao et al., 2023): max(0, delta - log P(y+) + log P(y-)) - lambda * log P(y+) per token
    batch = make_batch(24)
    ours = run_seed(seeds, "slic", batch, beta=beta, delta=delta)
    expected = [max(0.0, delta - row["policy_chosen_logps"] + row["policy_rejected_logps"])
                - beta * row["policy_chosen_logps"] / row["chosen_lengths"] for row in rows(batch)]
    torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float64), **TOLERANCE)


def logratios(row: dict[str, float]) -> tuple[float, float]:
    """(chosen, rejected) policy-minus-reference log-ratios of one pair."""
    return (row["policy_chosen_logps"] - row["reference_chosen_logps"],
            row["policy_rejected_logps"] - row["reference_rejected_logps"])


def assert_matches(ours: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float64), **TOLERANCE)


LOGRATIO_LOSSES = {
    # name -> (hyperparameter cases, the per-pair loss of the chosen and rejected log-ratios r_c, r_r)
    # DPOP (Pal et al., 2024): -log sig(beta (r_c - r_r - lambda max(0, log pi_ref(y_c) - log pi(y_c))))
    "dpop": ([{"penalty_weight": 50.0}, {"penalty_weight": 5.0}, {"penalty_weight": 0.0}],
             lambda c, r, beta, penalty_weight: softplus(-beta * (c - r - penalty_weight * max(0.0, -c)))),
    # Cal-DPO (Xiao et al., 2024; Cal-DPO/Cal-DPO with shift=0.5):
    # -log sig(r_c - r_r) + (r_c - 1/(2 beta))^2 + (r_r + 1/(2 beta))^2
    "cal_dpo": ([{}], lambda c, r, beta: softplus(-(c - r)) + (c - 1 / (2 * beta)) ** 2 + (r + 1 / (2 * beta)) ** 2),
    # chi-PO (Huang et al., 2024): DPO with phi(z) = z + log z of z = pi / pi_ref in place of log z
    "chi_po": ([{}], lambda c, r, beta: softplus(-beta * ((math.exp(c) + c) - (math.exp(r) + r)))),
    # MinorDPO (Xie et al., 2024): -log sig(beta (r_c - max(0, r_r)))
    "minor_dpo": ([{}], lambda c, r, beta: softplus(-beta * (c - max(0.0, r)))),
    # DPO-Shift (Yang et al., 2025; Meaquadddd/DPO-Shift): -log sig(beta (r_c - lambda r_r))
    "dpo_shift": ([{"rejected_scale": 0.95}, {"rejected_scale": 0.75}, {"rejected_scale": 1.0}],
                  lambda c, r, beta, rejected_scale: softplus(-beta * (c - rejected_scale * r))),
}


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize(("name", "case"), [(name, case) for name, (cases, _) in sorted(LOGRATIO_LOSSES.items())
                                            for case in range(len(cases))])
def test_seed_matches_its_papers_formula_of_the_log_ratios(seeds, name, case, beta):
    cases, formula = LOGRATIO_LOSSES[name]
    hyperparameters = cases[case]
    batch = make_batch(30 + case)
    ours = run_seed(seeds, name, batch, beta=beta, **hyperparameters)
    assert_matches(ours, [formula(*logratios(row), beta, **hyperparameters) for row in rows(batch)])


def test_simper_matches_authors_formula_and_ignores_beta(seeds):
    # SimPER (Xiao et al., 2025; tengxiao1/SimPER): -exp(mean log p(y_c)) + exp(mean log p(y_r))
    batch = make_batch(33)
    expected = [-math.exp(row["policy_chosen_logps"] / row["chosen_lengths"])
                + math.exp(row["policy_rejected_logps"] / row["rejected_lengths"]) for row in rows(batch)]
    for beta in BETAS:
        assert_matches(run_seed(seeds, "simper", batch, beta=beta), expected)


@pytest.mark.parametrize(("beta", "beta_prime"), [(0.1, 1.0), (0.5, 0.3), (2.0, 4.0)])
def test_dr_dpo_is_the_authors_batch_loss_with_softmax_weighted_gradients(seeds, beta, beta_prime):
    # Dr. DPO (Wu et al., 2024; junkangwu/Dr_DPO): -beta' log mean_i exp(-L_i / beta'), L_i DPO's loss
    batch = make_batch(34)
    ours = run_seed(seeds, "dr_dpo", batch, beta=beta, beta_prime=beta_prime)
    margins = [implicit_margin(row) for row in rows(batch)]
    dpo_losses = [softplus(-beta * margin) for margin in margins]
    batch_loss = -beta_prime * math.log(sum(math.exp(-value / beta_prime) for value in dpo_losses) / BATCH_SIZE)
    assert_matches(ours, [batch_loss] * BATCH_SIZE)
    # d batch / d policy_chosen_i = w_i * dL_i/dm_i, w = softmax(-L / beta'), dL_i/dm_i = -beta sig(-beta m_i)
    scores = [math.exp(-value / beta_prime) for value in dpo_losses]
    expected = [score / sum(scores) * -beta * sigmoid(-beta * margin) for score, margin in zip(scores, margins)]
    (grad,) = torch.autograd.grad(ours.mean(), [batch["policy_chosen_logps"]])
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64), **TOLERANCE)
    # a batch of one is that pair's DPO loss
    torch.testing.assert_close(run_seed(seeds, "dr_dpo", pair_of(batch, 0), beta=beta, beta_prime=beta_prime),
                               torch.tensor([dpo_losses[0]], dtype=torch.float64), **TOLERANCE)


GPO_LOSSES = {
    # GPO (Tang et al., 2024): f(beta * margin) for a function f of the scaled implicit reward margin
    "gpo_exponential": lambda x: math.exp(-x),
    "gpo_truncated_quadratic": lambda x: max(0.0, 1.0 - x) ** 2,
    "gpo_savage": lambda x: 1.0 / (1.0 + math.exp(x)) ** 2,
}


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("name", sorted(GPO_LOSSES))
def test_gpo_seeds_match_their_f(seeds, name, beta):
    batch = make_batch(35)
    ours = run_seed(seeds, name, batch, beta=beta)
    assert_matches(ours, [GPO_LOSSES[name](beta * implicit_margin(row)) for row in rows(batch)])


@pytest.mark.parametrize(("beta", "alpha"), [(0.1, 0.95), (0.5, 0.5), (2.0, 1.5)])
def test_h_dpo_matches_paper_formula(seeds, beta, alpha):
    # H-DPO (Omura et al., 2024): implicit reward alpha beta log pi - beta log pi_ref
    batch = make_batch(38)
    ours = run_seed(seeds, "h_dpo", batch, beta=beta, alpha=alpha)
    expected = [softplus(-(alpha * beta * (row["policy_chosen_logps"] - row["policy_rejected_logps"])
                           - beta * (row["reference_chosen_logps"] - row["reference_rejected_logps"])))
                for row in rows(batch)]
    assert_matches(ours, expected)
    # alpha = 1 is DPO
    torch.testing.assert_close(run_seed(seeds, "h_dpo", batch, beta=beta, alpha=1.0),
                               run_seed(seeds, "dpo", batch, beta=beta), **TOLERANCE)


@pytest.mark.parametrize("beta", BETAS)
def test_tdpo1_matches_tdpo1_formula_with_gradients_through_both_kls(seeds, beta):
    # TDPO1 (Zeng et al., 2024; the authors' tdpo_loss with if_tdpo2=False):
    # logits = margin - (rejected_kl - chosen_kl); loss = -log sig(beta * logits)
    batch = make_batch(39)
    ours = run_seed(seeds, "tdpo1", batch, beta=beta)
    logits = [beta * (implicit_margin(row) - (row["rejected_kl"] - row["chosen_kl"])) for row in rows(batch)]
    assert_matches(ours, [softplus(-z) for z in logits])
    chosen_kl_grad, rejected_kl_grad = torch.autograd.grad(ours.sum(), [batch["chosen_kl"], batch["rejected_kl"]])
    # d/d kl of softplus(-z): -beta sig(-z) for the chosen KL, +beta sig(-z) for the rejected one
    expected = torch.tensor([beta * sigmoid(-z) for z in logits], dtype=torch.float64)
    torch.testing.assert_close(chosen_kl_grad, -expected, **TOLERANCE)
    torch.testing.assert_close(rejected_kl_grad, expected, **TOLERANCE)


# -- seeds that read the wider contract: scores, the run's running margin statistics ----------


def test_every_new_input_is_read_by_some_seed(seeds):
    read = {name for spec, _ in seeds.values() for name in spec.inputs}
    assert {"chosen_scores", "rejected_scores", *TRAINING_STATE_INPUTS, *TOKEN_INPUTS} <= read
    assert "progress" in seeds["dpo_shift_linear"][0].inputs


def dpo_shift_lambda(strategy: str, lambda_min: float, lambda_max: float, step: int, max_steps: int) -> float:
    """DPO-Shift's scheduled lambda as Meaquadddd/DPO-Shift scripts/dposhift_trainer.py (DPOShiftTrainer.dpo_loss)
    computes it from the scheduler's step (0 at the first optimizer step) and the run's max_steps."""
    if strategy == "increase_linear":
        return lambda_min + (lambda_max - lambda_min) * (step / max_steps)
    return lambda_max - (lambda_max - lambda_min) * (step / max_steps)


# (strategy, lambda_min, lambda_max) -> the seed's (rejected_scale_start, rejected_scale_end)
DPO_SHIFT_SCHEDULES = [("increase_linear", 0.75, 1.0), ("decrease_linear", 0.75, 1.0), ("increase_linear", 0.5, 0.9)]


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize(("strategy", "lambda_min", "lambda_max"), DPO_SHIFT_SCHEDULES)
def test_dpo_shift_linear_follows_the_authors_lambda_schedule(seeds, beta, strategy, lambda_min, lambda_max):
    # -log sig(beta (r_c - lambda r_r)), lambda from the authors' step-based schedule at progress = step / max_steps
    start, end = (lambda_min, lambda_max) if strategy == "increase_linear" else (lambda_max, lambda_min)
    batch = make_batch(36)
    for step, max_steps in ((0, 10), (3, 10), (9, 10), (7, 8)):
        batch["progress"] = torch.tensor(step / max_steps, dtype=torch.float64)
        scale = dpo_shift_lambda(strategy, lambda_min, lambda_max, step, max_steps)
        ours = run_seed(seeds, "dpo_shift_linear", batch, beta=beta, rejected_scale_start=start,
                        rejected_scale_end=end)
        logits = [beta * (c - scale * r) for c, r in map(logratios, rows(batch))]
        assert_matches(ours, [softplus(-z) for z in logits])
        # d/d pi_c = -beta sig(-z), d/d pi_r = +lambda beta sig(-z)
        chosen_grad, rejected_grad = gradients(ours.sum(), batch)
        expected = torch.tensor([-beta * sigmoid(-z) for z in logits], dtype=torch.float64)
        torch.testing.assert_close(chosen_grad, expected, **TOLERANCE)
        torch.testing.assert_close(rejected_grad, -scale * expected, **TOLERANCE)


def test_dpo_shift_linear_with_a_flat_schedule_is_dpo_shift(seeds):
    # start = end is the authors' "fixed" strategy at every step
    batch = make_batch(37)
    for progress in (0.0, 0.4, 0.9):
        batch["progress"] = torch.tensor(progress, dtype=torch.float64)
        torch.testing.assert_close(
            run_seed(seeds, "dpo_shift_linear", batch, rejected_scale_start=0.8, rejected_scale_end=0.8),
            run_seed(seeds, "dpo_shift", batch, rejected_scale=0.8), **TOLERANCE)


@pytest.mark.parametrize(("beta", "alpha", "min_gap"), [(0.1, 1.0, 0.01), (0.5, 0.5, 0.1), (2.0, 2.0, 1e-3)])
def test_odpo_matches_the_authors_offset_loss(seeds, beta, alpha, min_gap):
    # ODPO (Amini et al., 2024; rycolab/odpo trainers.py): -log sig(beta * margin - alpha * log(s_c - s_r)),
    # the gap floored at min_gap where the scores disagree with the label (or tie)
    batch = make_batch(30)
    table = rows(batch)
    assert any(row["chosen_scores"] <= row["rejected_scores"] for row in table)  # the floor is exercised
    ours = run_seed(seeds, "odpo", batch, beta=beta, alpha=alpha, min_gap=min_gap)
    gaps = [max(row["chosen_scores"] - row["rejected_scores"], min_gap) for row in table]
    logits = [beta * implicit_margin(row) - alpha * math.log(gap) for row, gap in zip(table, gaps)]
    assert_matches(ours, [softplus(-z) for z in logits])
    chosen_grad, rejected_grad = gradients(ours.sum(), batch)
    expected = torch.tensor([-beta * sigmoid(-z) for z in logits], dtype=torch.float64)
    torch.testing.assert_close(chosen_grad, expected, **TOLERANCE)
    torch.testing.assert_close(rejected_grad, -expected, **TOLERANCE)


def beta_dpo_reference(table: list[dict[str, float]], beta: float, alpha: float) -> tuple[list[float], list[float]]:
    """(per-pair losses, their d/d policy_chosen_logps): beta-DPO's batch beta (Wu et al., 2024; junkangwu/beta-DPO
    trainers.py: beta * (1 + a * (M_batch - M_0)), clamped at 1e-3, detached) with its filter's draw
    probabilities exp(-(M_i - M_0)^2 / 2 sigma^2) as weights normalized to mean 1, sigma floored at 0.01."""
    mean, std = table[0]["running_margin_mean"], max(table[0]["running_margin_std"], 0.01)  # its floor, MIN_STD
    margins = [implicit_margin(row) for row in table]
    raw = [math.exp(-0.5 * ((m - mean) / std) ** 2) for m in margins]
    weights = [len(raw) * w / sum(raw) for w in raw]
    batch_margin = sum(w * m for w, m in zip(weights, margins)) / len(margins)
    beta_used = max(1e-3, beta * (1 + alpha * (batch_margin - mean)))
    losses = [w * softplus(-beta_used * m) for w, m in zip(weights, margins)]
    grads = [-w * beta_used * sigmoid(-beta_used * m) / len(margins) for w, m in zip(weights, margins)]
    return losses, grads


@pytest.mark.parametrize(("beta", "alpha"), [(0.1, 0.6), (0.5, 0.0), (2.0, 1.5)])
def test_beta_dpo_matches_the_authors_batch_beta_with_the_filter_in_expectation(seeds, beta, alpha):
    batch = make_batch(31)
    losses, grads = beta_dpo_reference(rows(batch), beta, alpha)
    ours = run_seed(seeds, "beta_dpo", batch, beta=beta, alpha=alpha)
    assert_matches(ours, losses)
    # the batch beta and the weights carry no gradient: each pair's is its own weighted DPO gradient
    chosen_grad, rejected_grad = gradients(ours.mean(), batch)
    torch.testing.assert_close(chosen_grad, torch.tensor(grads, dtype=torch.float64), **TOLERANCE)
    torch.testing.assert_close(rejected_grad, -chosen_grad, **TOLERANCE)


def test_beta_dpo_without_its_filter_is_the_authors_dynamic_beta_dpo(seeds):
    # a very wide running std makes every weight 1: -log sig(beta (1 + a (mean margin - M_0)) * margin)
    batch = make_batch(32)
    batch["running_margin_std"] = torch.tensor(1e9, dtype=torch.float64)
    table = rows(batch)
    beta_used = max(1e-3, 0.1 * (1 + 0.6 * (sum(implicit_margin(row) for row in table) / BATCH_SIZE - 0.5)))
    assert_matches(run_seed(seeds, "beta_dpo", batch), [softplus(-beta_used * implicit_margin(row)) for row in table])


def alpha_dpo_reference(table: list[dict[str, float]], beta: float, gamma_beta_ratio: float,
                        alpha: float) -> tuple[list[float], list[float], list[float]]:
    """(per-pair losses, d mean / d policy_chosen_logps, d mean / d policy_rejected_logps) of AlphaDPO as
    junkangwu/alpha-DPO scripts/dpo_trainer.py (AlphaDPOTrainer.dpo_loss, loss_type "alpha-dpo", ln: true)
    computes it: per-token mean log-probs; gap = pi_logratios - ref_logratios; logits = pi_logratios -
    detach(alpha * (gap - mu) / sigma + gamma_beta_ratio); -log sig(beta * logits). mu and sigma, their EMAs,
    are the batch's mean and unbiased std of gap here (the seed's stand-in), sigma floored at 0.01 (MIN_STD)."""
    pi = [r["policy_chosen_logps"] / r["chosen_lengths"] - r["policy_rejected_logps"] / r["rejected_lengths"]
          for r in table]
    ref = [r["reference_chosen_logps"] / r["chosen_lengths"] - r["reference_rejected_logps"] / r["rejected_lengths"]
           for r in table]
    gaps = [p - q for p, q in zip(pi, ref)]
    mu = statistics.fmean(gaps)
    sigma = max(statistics.stdev(gaps) if len(gaps) > 1 else 0.0, 0.01)
    logits = [p - (alpha * (g - mu) / sigma + gamma_beta_ratio) for p, g in zip(pi, gaps)]
    losses = [softplus(-beta * z) for z in logits]
    # the target is detached: each pair's gradient is SimPO's, -beta sig(-beta z) / |y_c| (and + / |y_r|)
    pulls = [beta * sigmoid(-beta * z) / len(table) for z in logits]
    chosen = [-pull / r["chosen_lengths"] for pull, r in zip(pulls, table)]
    rejected = [pull / r["rejected_lengths"] for pull, r in zip(pulls, table)]
    return losses, chosen, rejected


@pytest.mark.parametrize(("beta", "gamma_beta_ratio", "alpha"),
                         [(2.5, 0.6, 0.2), (2.5, 0.15, 0.05), (10.0, 0.4, 0.2), (0.5, 0.0, 1.0)])
def test_alpha_dpo_matches_the_authors_adaptive_margin(seeds, beta, gamma_beta_ratio, alpha):
    batch = make_batch(40)
    losses, chosen, rejected = alpha_dpo_reference(rows(batch), beta, gamma_beta_ratio, alpha)
    ours = run_seed(seeds, "alpha_dpo", batch, beta=beta, gamma_beta_ratio=gamma_beta_ratio, alpha=alpha)
    assert_matches(ours, losses)
    chosen_grad, rejected_grad = gradients(ours.mean(), batch)
    torch.testing.assert_close(chosen_grad, torch.tensor(chosen, dtype=torch.float64), **TOLERANCE)
    torch.testing.assert_close(rejected_grad, torch.tensor(rejected, dtype=torch.float64), **TOLERANCE)


def test_alpha_dpo_at_alpha_zero_or_on_one_pair_is_simpo(seeds):
    # alpha 0 drops the adaptive term; a batch of one has no spread to normalize (its term is 0): both are
    # SimPO with gamma = beta * gamma_beta_ratio
    batch = make_batch(41)
    for beta in BETAS:
        simpo = run_seed(seeds, "simpo", batch, beta=beta, gamma=beta * 0.6)
        torch.testing.assert_close(run_seed(seeds, "alpha_dpo", batch, beta=beta, alpha=0.0), simpo, **TOLERANCE)
        torch.testing.assert_close(run_seed(seeds, "alpha_dpo", pair_of(batch, 2), beta=beta), simpo[2:3], **TOLERANCE)


def test_alpha_dpo_stays_finite_while_the_policy_is_its_reference(seeds):
    # every margin 0: the authors' (gap - mu) / sigma is 0 / 0 there; the floor on sigma makes it 0
    batch = make_batch(42)
    for side in ("chosen", "rejected"):
        batch[f"policy_{side}_logps"] = batch[f"reference_{side}_logps"].clone().requires_grad_(True)
    ours = run_seed(seeds, "alpha_dpo", batch)
    torch.testing.assert_close(ours, run_seed(seeds, "simpo", batch, beta=2.5, gamma=2.5 * 0.6), **TOLERANCE)


# -- seeds that read the token inputs --------------------------------------------------------------


def token_ratios(row: dict, side: str) -> list[float]:
    """The per-token log-ratios (policy - reference) of one pair's response `side`, in order, on its mask."""
    return [p - r for p, r, m in zip(row[f"policy_{side}_token_logps"], row[f"reference_{side}_token_logps"],
                                     row[f"{side}_mask"]) if m]


def token_gradient_check(ours: torch.Tensor, batch, chosen_weights, rejected_weights, beta: float, logits) -> None:
    """d sum(loss) / d policy token log-probs is -beta sig(-z) w_t (chosen), +beta sig(-z) w_t (rejected)."""
    grads = torch.autograd.grad(ours.sum(), [batch["policy_chosen_token_logps"], batch["policy_rejected_token_logps"]])
    for grad, weights, sign in zip(grads, (chosen_weights, rejected_weights), (-1.0, 1.0)):
        expected = [[sign * beta * sigmoid(-z) * w for w in row] for z, row in zip(logits, weights)]
        torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64), **TOLERANCE)


def ld_dpo_weights(row: dict, side: str, alpha: float) -> list[float]:
    """LD-DPO's weight of each of the 30 positions: 1 up to the public length min(l_c, l_r), alpha past it."""
    public = min(sum(row["chosen_mask"]), sum(row["rejected_mask"]))
    weights, seen = [], 0
    for m in row[f"{side}_mask"]:
        seen += int(m)
        weights.append(0.0 if not m else 1.0 if seen <= public else alpha)
    return weights


@pytest.mark.parametrize(("beta", "alpha"), [(0.1, 0.5), (0.5, 0.0), (2.0, 1.0)])
def test_ld_dpo_matches_the_papers_desensitized_likelihood(seeds, beta, alpha):
    # LD-DPO (Liu et al., 2024): log-likelihoods sum_{i <= l_p} + alpha * sum_{i > l_p}, l_p = min(l_c, l_r),
    # for the policy and the reference alike; then DPO's -log sig(beta * margin)
    batch = make_batch(40)
    table = rows(batch)
    assert any(row["chosen_lengths"] != row["rejected_lengths"] for row in table)  # alpha is exercised
    weights = {side: [ld_dpo_weights(row, side, alpha) for row in table] for side in ("chosen", "rejected")}

    def desensitized(row, index, side):
        ratios = [p - r for p, r in zip(row[f"policy_{side}_token_logps"], row[f"reference_{side}_token_logps"])]
        return sum(w * x for w, x in zip(weights[side][index], ratios))

    logits = [beta * (desensitized(row, i, "chosen") - desensitized(row, i, "rejected")) for i, row in enumerate(table)]
    ours = run_seed(seeds, "ld_dpo", batch, beta=beta, alpha=alpha)
    assert_matches(ours, [softplus(-z) for z in logits])
    token_gradient_check(ours, batch, weights["chosen"], weights["rejected"], beta, logits)


def test_ld_dpo_at_alpha_one_is_dpo(seeds):
    batch = make_batch(41)
    torch.testing.assert_close(run_seed(seeds, "ld_dpo", batch, alpha=1.0), run_seed(seeds, "dpo", batch), **TOLERANCE)


@pytest.mark.parametrize(("beta", "alpha"), [(0.1, 0.5), (0.5, 0.2)])
def test_ld_dpo_equals_trl_dpo_trainer_with_ld_alpha(seeds, beta, alpha):
    # TRL 1.16's DPOTrainer._compute_loss with DPOConfig.ld_alpha, its reference model run (not precomputed)
    batch = make_batch(42)
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")
    completion_mask = torch.cat([batch["chosen_mask"], batch["rejected_mask"]]).long()  # (2B, 30)
    completion_mask = torch.nn.functional.pad(completion_mask, (1, 0))  # (2B, 31): a one-token prompt first
    zeros = torch.zeros(completion_mask.shape[0], 30, dtype=torch.float64)

    def stub(prefix):
        log_probs = torch.cat([batch[f"{prefix}_chosen_token_logps"], batch[f"{prefix}_rejected_token_logps"]])
        outputs = SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(),
                                  log_sum_sq_probs=zeros)
        return lambda **kwargs: outputs

    trainer = SimpleNamespace(
        model=SimpleNamespace(training=False, is_gradient_checkpointing=False), ref_model=stub("reference"),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x),
        aux_loss_enabled=False, ld_alpha=alpha, precompute_ref_logps=False, use_weighting=False,
        f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0, loss_types=["sigmoid"], loss_weights=[1.0],
        beta=beta, label_smoothing=0.0, args=SimpleNamespace(discopop_tau=0.05, gradient_checkpointing_kwargs=None),
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )
    inputs = {"input_ids": torch.zeros_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask}
    theirs = dpo_trainer.DPOTrainer._compute_loss(trainer, stub("policy"), inputs, return_outputs=False)
    torch.testing.assert_close(run_seed(seeds, "ld_dpo", batch, beta=beta, alpha=alpha).mean(), theirs, **TOLERANCE)


@pytest.mark.parametrize("beta", BETAS)
def test_sampo_matches_the_papers_down_sampled_reward_in_expectation(seeds, beta):
    # SamPO (Lu et al., 2024): each reward sums T_m = min(T_c, T_r) of its tokens' log-ratios drawn at random;
    # in expectation T_m / T of all of them: -log sig(beta (T_m / T_c sum_c - T_m / T_r sum_r))
    batch = make_batch(43)
    table = rows(batch)
    scales = {side: [min(sum(row["chosen_mask"]), sum(row["rejected_mask"])) / sum(row[f"{side}_mask"])
                     for row in table] for side in ("chosen", "rejected")}
    logits = [beta * (scales["chosen"][i] * sum(token_ratios(row, "chosen"))
                      - scales["rejected"][i] * sum(token_ratios(row, "rejected"))) for i, row in enumerate(table)]
    ours = run_seed(seeds, "sampo", batch, beta=beta)
    assert_matches(ours, [softplus(-z) for z in logits])
    weights = {side: [[scales[side][i] * m for m in row[f"{side}_mask"]] for i, row in enumerate(table)]
               for side in ("chosen", "rejected")}
    token_gradient_check(ours, batch, weights["chosen"], weights["rejected"], beta, logits)


def test_sampo_draws_average_to_the_seed(seeds):
    # the expectation the seed keeps: the mean over many uniform draws of T_m tokens without replacement
    batch = make_batch(44)
    row = rows(batch)[0]
    chosen, rejected = token_ratios(row, "chosen"), token_ratios(row, "rejected")
    sampled = min(len(chosen), len(rejected))
    generator = torch.Generator().manual_seed(0)
    draws = 20000
    totals = {}
    for side, ratios in (("chosen", chosen), ("rejected", rejected)):
        picks = torch.stack([torch.randperm(len(ratios), generator=generator)[:sampled] for _ in range(draws)])
        totals[side] = float(torch.tensor(ratios, dtype=torch.float64)[picks].sum(-1).mean())
    expected = sampled / len(chosen) * sum(chosen) - sampled / len(rejected) * sum(rejected)
    assert abs((totals["chosen"] - totals["rejected"]) - expected) < 0.05 * max(1.0, abs(expected))
