"""Exported modules train in TRL's DPOTrainer: a tiny random Llama, a tokenizer built here, no downloads.

The exported DPO and hinge seeds must log, step for step, the losses TRL's own
`sigmoid` and `hinge` give; a recorder shows the trainer's loss is the value our
function returned; TDPO's KL inputs are computed (zero while policy = reference); beta-DPO gets the
trainer's progress and running margin statistics, and DPO-Shift's linear schedule its lambda from that
progress; AlphaDPO the trainer's lengths; ODPO's scores, which TRL's collator drops, fail in one line;
LD-DPO on the token inputs logs TRL's own `ld_alpha` losses.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import pytest

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from lossearch.reporting.export import module_source  # noqa: E402
from lossearch.reporting.results import load_campaign_data  # noqa: E402
from lossearch.search.seeds import seed_path  # noqa: E402
from lossearch.store import Store  # noqa: E402

WORDS = "the movie film was is a good great fine bad awful boring plot acting".split()


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A saved tiny model, its tokenizer and eight preference pairs."""
    folder = tmp_path_factory.mktemp("tiny")
    vocab = {word: index for index, word in enumerate(["<pad>", "<eos>", "<unk>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         pad_token_id=0, eos_token_id=1, bos_token_id=1)
    LlamaForCausalLM(config).save_pretrained(folder / "model")
    pairs = datasets.Dataset.from_dict({"prompt": ["the movie was", "the plot is"] * 4,
                                        "chosen": [" good", " great acting", " fine", " a great film"] * 2,
                                        "rejected": [" bad", " awful acting", " boring", " a bad film"] * 2})
    return folder, tokenizer, pairs


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The dpo, hinge, tdpo, beta_dpo, dpo_shift_linear, alpha_dpo, odpo, ld_dpo and sampo seeds exported from a
    campaign database, imported as modules."""
    folder = tmp_path_factory.mktemp("exported")
    modules = {}
    with Store.for_campaign_dir(folder / "runs" / "x") as store:
        campaign = store.create_campaign("x", {"task": "sentiment"})
        for name in ("dpo", "hinge", "tdpo", "beta_dpo", "dpo_shift_linear", "alpha_dpo", "odpo", "ld_dpo", "sampo"):
            store.add_candidate(campaign.id, source=seed_path(name).read_text(), name=name, proposer="seed",
                                generation=0)
        data = load_campaign_data(store, campaign)
    for candidate in data.candidates.values():
        path = folder / f"{candidate.name}.py"
        path.write_text(module_source(data, candidate))
        spec = importlib.util.spec_from_file_location(f"exported_{candidate.name}", path)
        modules[candidate.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[candidate.name])
    return modules


def train(setting, trainer_class=trl.DPOTrainer, patch=None, **config) -> list[float]:
    """Two AdamW steps; the loss TRL logged at each."""
    folder, tokenizer, pairs = setting
    torch.manual_seed(0)
    args = trl.DPOConfig(output_dir=str(folder / "out"), per_device_train_batch_size=4, max_steps=2, logging_steps=1,
                         learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                         disable_tqdm=True, **({"beta": 0.5} | config))
    trainer = trainer_class(model=str(folder / "model"), args=args, train_dataset=pairs, processing_class=tokenizer)
    if patch is not None:
        patch(trainer)
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def recording(loss_fn, calls: list):
    """`loss_fn` with the same signature, keeping what it was called with and returned."""
    @functools.wraps(loss_fn)
    def recorder(**kwargs):
        value = loss_fn(**kwargs)
        calls.append({"loss": value.detach().mean().item(), **{k: v for k, v in kwargs.items() if k.endswith("kl")}})
        return value
    return recorder


def test_exported_dpo_and_hinge_train_exactly_like_trl(setting, exported):
    for name, loss_type in (("dpo", "sigmoid"), ("hinge", "hinge")):
        theirs = train(setting, loss_type=[loss_type])
        ours = train(setting, exported[name].dpo_trainer_class())
        assert len(ours) == 2 and ours == pytest.approx(theirs, abs=1e-6), name
    assert theirs[0] == pytest.approx(1.0)  # hinge at margin 0


def test_a_patched_trainer_logs_the_loss_our_function_returned(setting, exported):
    calls: list = []
    module = exported["hinge"]
    logged = train(setting, patch=lambda trainer: module.patch_dpo_trainer(trainer, recording(module.loss, calls)))
    assert [call["loss"] for call in calls] == pytest.approx(logged, abs=1e-6)
    assert logged[0] == pytest.approx(1.0) and logged[0] != pytest.approx(math.log(2))  # not TRL's sigmoid


def test_tdpo_gets_its_kl_inputs(setting, exported):
    calls: list = []
    module = exported["tdpo"]

    def patch(trainer):
        assert module.use_in_dpo_trainer(trainer) is trainer  # the module's own entry point
        module.patch_dpo_trainer(trainer, recording(module.loss, calls))  # the same, with a recorder

    logged = train(setting, patch=patch)
    assert len(calls) == 2 and all(math.isfinite(value) for value in logged)
    assert calls[0]["chosen_kl"].abs().max() < 1e-5 and calls[0]["rejected_kl"].abs().max() < 1e-5  # policy = reference
    assert calls[1]["rejected_kl"].min() > 0 and logged[0] == pytest.approx(math.log(2), abs=1e-5)


def test_beta_dpo_gets_the_trainers_progress_and_running_margin(setting, exported):
    calls: list = []
    module = exported["beta_dpo"]

    def recorder(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                 progress, running_margin_mean, running_margin_std, beta: float = 0.1):  # beta-DPO, reading progress
        logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
        names = ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps",
                 "progress", "running_margin_mean", "running_margin_std")
        values = (*logps, progress, running_margin_mean, running_margin_std)
        calls.append({name: value.detach().clone() for name, value in zip(names, values)})
        return module.loss(*logps, running_margin_mean, running_margin_std, beta=beta)

    logged = train(setting, patch=lambda trainer: module.patch_dpo_trainer(trainer, recorder))
    assert len(calls) == 2 and all(math.isfinite(value) for value in logged)
    assert [float(call["progress"]) for call in calls] == [0.0, 0.5]  # global_step / max_steps
    for call in calls:
        assert call["running_margin_mean"].dim() == 0 and float(call["running_margin_std"]) >= 0
    first = ((calls[0]["policy_chosen_logps"] - calls[0]["reference_chosen_logps"])
             - (calls[0]["policy_rejected_logps"] - calls[0]["reference_rejected_logps"]))
    assert float(calls[0]["running_margin_mean"]) == pytest.approx(float(first.mean()), abs=1e-6)


def train_keeping_calls(setting, module) -> tuple[list[float], list[dict]]:
    """Two steps with the exported module's loss; what TRL logged and each call's inputs (detached)."""
    calls: list = []

    def keep(**kwargs):
        calls.append({name: value.detach().clone() if isinstance(value, torch.Tensor) else value
                      for name, value in kwargs.items()})
        return module.loss(**kwargs)

    logged = train(setting, patch=lambda trainer: module.patch_dpo_trainer(trainer, functools.wraps(module.loss)(keep)))
    assert len(calls) == len(logged) == 2
    return logged, calls


def test_dpo_shift_linear_takes_its_lambda_from_the_trainers_progress(setting, exported):
    logged, calls = train_keeping_calls(setting, exported["dpo_shift_linear"])
    assert [float(call["progress"]) for call in calls] == [0.0, 0.5]  # global_step / max_steps
    for call, value in zip(calls, logged):
        scale = 0.75 + (1.0 - 0.75) * float(call["progress"])  # its default schedule, 0.75 to 1.0
        chosen = call["policy_chosen_logps"] - call["reference_chosen_logps"]
        rejected = call["policy_rejected_logps"] - call["reference_rejected_logps"]
        assert value == pytest.approx(float(-F.logsigmoid(0.5 * (chosen - scale * rejected)).mean()), abs=1e-6)
    assert logged[0] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference: every lambda gives log 2


def test_alpha_dpo_reads_the_trainers_lengths(setting, exported):
    logged, calls = train_keeping_calls(setting, exported["alpha_dpo"])
    for call, value in zip(calls, logged):
        lengths = (call["chosen_lengths"], call["rejected_lengths"])
        assert all(bool((length >= 1).all()) for length in lengths)  # TRL's completion token counts
        policy_margin = call["policy_chosen_logps"] / lengths[0] - call["policy_rejected_logps"] / lengths[1]
        gap = policy_margin - (call["reference_chosen_logps"] / lengths[0]
                               - call["reference_rejected_logps"] / lengths[1])
        target = 0.2 * (gap - gap.mean()) / gap.std().clamp(min=0.01) + 0.6  # alpha, gamma_beta_ratio at defaults
        assert value == pytest.approx(float(-F.logsigmoid(0.5 * (policy_margin - target)).mean()), abs=1e-6)
    assert logged[1] != pytest.approx(logged[0], abs=1e-4)


def test_a_loss_reading_scores_says_trls_collator_drops_them(setting, exported):
    with pytest.raises(ValueError, match="collator drops"):
        train(setting, exported["odpo"].dpo_trainer_class())


def test_exported_ld_dpo_trains_like_trls_ld_alpha_and_sampo_gets_token_inputs(setting, exported):
    # TRL 1.16's own LD-DPO (DPOConfig.ld_alpha) against the seed reading the adapter's token inputs
    folder, tokenizer, pairs = setting
    uneven = (folder, tokenizer, datasets.Dataset.from_dict({  # responses of different lengths: alpha matters
        "prompt": ["the movie was", "the plot is"] * 4,
        "chosen": [" good", " a great film", " fine acting", " great"] * 2,
        "rejected": [" a bad boring film", " bad", " awful", " the acting was awful"] * 2}))
    theirs = train(uneven, loss_type=["sigmoid"], ld_alpha=0.5)
    ours = train(uneven, exported["ld_dpo"].dpo_trainer_class())
    assert len(ours) == 2 and ours == pytest.approx(theirs, abs=1e-6)
    assert ours[1] != pytest.approx(train(uneven, loss_type=["sigmoid"])[1], abs=1e-4)  # not DPO
    calls: list = []
    module = exported["sampo"]

    def keep(**kwargs):
        calls.append(kwargs)
        return module.loss(**kwargs)

    logged = train(setting, patch=lambda trainer: module.patch_dpo_trainer(trainer, functools.wraps(module.loss)(keep)))
    first = calls[0]
    assert first["policy_chosen_token_logps"].shape == first["chosen_mask"].shape == first["rejected_mask"].shape
    # policy = reference at the first step; the masks count the completion tokens, and padding holds 0
    torch.testing.assert_close(first["policy_chosen_token_logps"].detach(), first["reference_chosen_token_logps"],
                               atol=1e-5, rtol=0)
    assert bool(((first["policy_rejected_token_logps"] != 0) <= (first["rejected_mask"] == 1)).all())
    assert logged[0] == pytest.approx(math.log(2), abs=1e-5) and math.isfinite(logged[1])
