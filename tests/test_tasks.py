"""Tasks: text worlds and oracles, the tokenizer, the cache, base models and pairs (tiny configs)."""

from __future__ import annotations

import json
import multiprocessing
import random
import time

import pytest
import torch
from conftest import TINY_DATA_FIELDS, tiny_world

from lossearch.evaluation.tasks import cache, text
from lossearch.evaluation.tasks.build import DataConfig
from lossearch.evaluation.tasks.catalog import TASKS, WORLD_VOCABULARIES, WorldConfig, reward_of_ids
from lossearch.evaluation.tasks.lm import (
    forward_logits,
    make_sequences,
    pad_left,
    safetensors_bytes,
    sample_responses,
    sequence_kl,
    sequence_logps,
)
from lossearch.evaluation.tasks.load import load_task, load_user_task, task_summaries
from lossearch.evaluation.tasks.tokenizer import build_tokenizer
from lossearch.evaluation.tasks.user import SettingError, UserSetting

TINY_WORLDS = {"sentiment": tiny_world("sentiment"), "sort": tiny_world("sort")}
TINY_DATA = DataConfig(**TINY_DATA_FIELDS)


# -- the worlds and their oracles ----------------------------------------------------------

@pytest.mark.parametrize("response, expected", [
    ("plot was good .", 0.6),
    ("plot was very good .", 1.0),
    ("plot was not good .", -0.3),
    ("acting seemed not dull .", 0.3),
    ("music is truly awful .", -1.0),
    ("ending felt slow .", 0.0),
    ("plot was very good . cast is bad .", 0.2),
    ("plot good was .", -1.0),  # malformed
    ("", -1.0),  # an empty review
    ("plot was very", -1.0),  # unfinished
])
def test_sentiment_oracle_scores_clauses(response, expected):
    assert text.sentiment_reward(response.split()) == pytest.approx(expected)


def test_sort_oracle_gives_full_credit_only_for_the_sorted_digits():
    prompt = "sort 3 1 2 :".split()
    assert text.sort_reward(prompt, ["1", "2", "3"]) == 1.0
    assert text.sort_reward(prompt, ["1", "3", "2"]) == pytest.approx(0.5 / 3)
    assert text.sort_reward(prompt, ["1", "2"]) == pytest.approx(0.5 * 2 / 3)
    assert text.sort_reward(prompt, []) == 0.0


def test_every_generated_document_is_in_the_vocabulary_and_the_corpus_is_mixed():
    for world, sample in (("sentiment", text.sample_review), ("sort", text.sample_sort_problem)):
        vocabulary = set(WORLD_VOCABULARIES[world])
        rng = random.Random(0)
        documents = [sample(rng) for _ in range(300)]
        assert all(set(prompt + response) <= vocabulary for prompt, response in documents)
    rewards = [text.sentiment_reward(text.sample_review(random.Random(i))[1]) for i in range(300)]
    assert min(rewards) < -0.5 and max(rewards) > 0.5 and abs(sum(rewards) / len(rewards)) < 0.2


def test_length_labels_like_long_answers_that_the_oracle_dislikes():
    vocabulary = WORLD_VOCABULARIES["sentiment"]
    ids = {word: i for i, word in enumerate(vocabulary)}
    prompt = [ids[w] for w in "<bos> drama : plot was good .".split()]
    short = [ids[w] for w in "plot was good . <eos>".split()]
    long = [ids[w] for w in "plot was good . cast was good . story was good . <eos>".split()]
    oracle, labels = reward_of_ids("length"), reward_of_ids("length", labels=True)
    assert oracle(prompt, short) > oracle(prompt, long)
    assert labels(prompt, long) > labels(prompt, short)
    assert reward_of_ids("sentiment")(prompt, short) == reward_of_ids("sentiment")(prompt, long) == pytest.approx(0.6)


# -- the tokenizer --------------------------------------------------------------------------

def test_tokenizer_is_a_standard_fast_tokenizer_that_round_trips(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = build_tokenizer(WORLD_VOCABULARIES["sentiment"])
    encoded = tokenizer("comedy : plot was good .")["input_ids"]
    assert encoded[0] == tokenizer.bos_token_id and len(encoded) == 7
    assert tokenizer.decode(encoded, skip_special_tokens=True) == "comedy : plot was good ."
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("comedy : plot was good .")["input_ids"] == encoded
    assert reloaded.pad_token == "<pad>" and reloaded.eos_token == "<eos>"


# -- the cache ------------------------------------------------------------------------------

def _build_slowly(root: str, marker: str) -> None:
    def build(folder):
        with open(marker, "a") as log:
            log.write("built\n")
        time.sleep(0.5)
        (folder / "data.txt").write_text("complete")

    cache.cached_artifact(cache.Path(root), "thing-abc", build)


def test_concurrent_builders_build_once_and_never_expose_a_partial_artifact(tmp_path):
    marker = tmp_path / "builds.log"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_build_slowly, args=(str(tmp_path / "cache"), str(marker))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    assert marker.read_text().count("built") == 1
    assert (tmp_path / "cache" / "thing-abc" / "data.txt").read_text() == "complete"
    assert not [path for path in (tmp_path / "cache").iterdir() if path.name.startswith(".thing")]


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def broken(folder):
        (folder / "half.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.cached_artifact(tmp_path, "broken-1", broken)
    assert [path.name for path in tmp_path.iterdir()] == ["broken-1.lock"]


def test_config_key_depends_on_every_field():
    base = WorldConfig("sentiment")
    assert cache.config_key(base) == cache.config_key(WorldConfig("sentiment"))
    assert cache.config_key(base) != cache.config_key(WorldConfig("sentiment", seed=1))


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LOSSEARCH_CACHE", str(tmp_path))
    assert cache.cache_root() == tmp_path
    monkeypatch.delenv("LOSSEARCH_CACHE")
    assert cache.cache_root().name == "lossearch"


# -- language-model plumbing ----------------------------------------------------------------

def test_sequence_logps_match_a_hand_computation(tiny_task):
    from safetensors.torch import load_file

    from lossearch.evaluation.tasks.lm import load_parameters, make_model

    model = make_model(tiny_task.model_config)
    load_parameters(model, load_file(str(tiny_task.parameters_file)))
    prompts, responses = [[1, 5, 6], [1, 7]], [[8, 9, 2], [10, 2]]
    batch = make_sequences(prompts, responses, pad_id=0)
    ours = sequence_logps(model, batch).detach()
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        ids = torch.tensor([prompt + response])
        logps = model(input_ids=ids).logits[0, :-1].log_softmax(-1)  # (T - 1, V)
        expected = sum(float(logps.detach()[len(prompt) - 1 + i, token]) for i, token in enumerate(response))
        assert float(ours[row]) == pytest.approx(expected, abs=1e-4)
    logits = forward_logits(model, batch)
    assert torch.allclose(sequence_kl(logits, logits, batch), torch.zeros(2), atol=1e-6)


def test_sampling_stops_at_eos_and_masks_what_follows(tiny_task):
    from safetensors.torch import load_file

    from lossearch.evaluation.tasks.lm import load_parameters, make_model

    model = make_model(tiny_task.model_config)
    load_parameters(model, load_file(str(tiny_task.parameters_file)))
    ids, attention = pad_left([[1, 5], [1, 6, 7, 8]], tiny_task.pad_id)
    batch = sample_responses(model, ids, attention, 12, tiny_task.eos_id, tiny_task.pad_id,
                             torch.Generator().manual_seed(0))
    for row in range(2):
        response = batch.ids[row][batch.response[row]].tolist()
        assert 1 <= len(response) <= 12
        assert tiny_task.eos_id not in response[:-1]  # nothing after an eos belongs to the response
        assert (batch.attention[row] >= batch.response[row]).all()


def test_handwritten_safetensors_load_with_the_official_reader():
    from safetensors.torch import load

    tensors = {"w": torch.randn(3, 4), "i": torch.arange(5), "b": torch.tensor([True, False]),
               "h": torch.randn(2, dtype=torch.bfloat16)}
    loaded = load(safetensors_bytes(tensors))
    assert all(torch.equal(loaded[name], tensors[name]) for name in tensors)


# -- built tasks ----------------------------------------------------------------------------

def test_a_tiny_task_builds_with_pairs_reference_logps_and_heldout_sets(tiny_task, tiny_cache):
    assert len(tiny_task.train) == 48 and len(tiny_task.heldout) == 16
    assert tiny_task.heldout_prompts[0].shape[0] == 24
    assert torch.isfinite(tiny_task.train.reference_chosen_logps).all()
    assert (tiny_task.train.reference_chosen_logps < 0).all()
    assert tiny_task.reward is not None and tiny_task.kl_budget == TASKS["sentiment"].kl_budget
    meta = json.loads((tiny_cache / tiny_task.key / "meta.json").read_text())
    assert meta["train_pairs"] == 48 and 0 <= meta["labels_agree_with_oracle"] <= 1
    # the held-out pairs are ordered by the oracle
    from lossearch.evaluation.tasks.lm import split_sequences

    prompt_width = int((tiny_task.heldout.chosen.response.long().cumsum(1) == 0).sum(1).min())
    prompts, chosen = split_sequences(tiny_task.heldout.chosen, prompt_width)
    _, rejected = split_sequences(tiny_task.heldout.rejected, prompt_width)
    assert all(tiny_task.reward(p, c) > tiny_task.reward(p, r) for p, c, r in zip(prompts, chosen, rejected))


def test_building_is_deterministic_and_cached(tiny_task, tiny_cache, tmp_path):
    again = load_task("sentiment", tiny_cache, data=TINY_DATA, world=TINY_WORLDS["sentiment"])
    assert again.key == tiny_task.key
    elsewhere = load_task("sentiment", tmp_path, data=TINY_DATA, world=TINY_WORLDS["sentiment"])
    assert elsewhere.parameters_file.read_bytes() == tiny_task.parameters_file.read_bytes()
    assert torch.equal(elsewhere.train.chosen.ids, tiny_task.train.chosen.ids)


def test_noisy_shares_the_base_model_and_flips_a_third_of_the_labels(tiny_task, tiny_cache):
    noisy = load_task("noisy", tiny_cache, data=TINY_DATA, world=TINY_WORLDS["sentiment"])
    assert noisy.parameters_file == tiny_task.parameters_file
    assert noisy.key != tiny_task.key


def test_sort_task_builds(tiny_cache):
    task = load_task("sort", tiny_cache, data=TINY_DATA, world=TINY_WORLDS["sort"])
    assert len(task.train) == 48 and task.max_new_tokens == TASKS["sort"].max_new_tokens


def test_unknown_task_and_mismatched_world_are_refused(tiny_cache):
    with pytest.raises(ValueError, match="unknown task"):
        load_task("poetry", tiny_cache)
    with pytest.raises(ValueError, match="world"):
        load_task("sort", tiny_cache, data=TINY_DATA, world=TINY_WORLDS["sentiment"])


def test_task_summaries_list_every_task_and_what_is_built(tiny_cache):
    rows = task_summaries(tiny_cache)
    assert [row["name"] for row in rows] == ["sentiment", "sort", "length", "noisy"]
    assert all(row["kl_budget"] > 0 and row["vocabulary"] > 10 for row in rows)


# -- the user's own setting -----------------------------------------------------------------

def save_tiny_user_model(folder) -> None:
    """A tiny random GPT-2 with a word-level tokenizer, saved like any Hugging Face model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    vocabulary = ["<pad>", "<bos>", "<eos>", "<unk>"] + "the cat dog sat ran on a mat rug fast slow".split()
    tokenizer = build_tokenizer(vocabulary)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocabulary), n_embd=16, n_layer=1, n_head=2, n_positions=64,
                                       bos_token_id=1, eos_token_id=2, pad_token_id=0))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def write_user_dataset(path, count: int = 12, scored: bool = False) -> None:
    """`count` pairs; with `scored`, line i has chosen_score i and rejected_score -i (scores tell lines apart)."""
    rows = [{"prompt": "the cat", "chosen": "sat on a mat", "rejected": "ran fast"},
            {"prompt": "the dog", "chosen": "sat on a rug", "rejected": "ran slow"}]
    lines = [{**rows[i % 2], **({"chosen_score": i, "rejected_score": -i} if scored else {})} for i in range(count)]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def test_a_user_model_and_dataset_load_as_a_task(tmp_path):
    save_tiny_user_model(tmp_path / "model")
    write_user_dataset(tmp_path / "pairs.jsonl")
    task = load_user_task(UserSetting(tmp_path / "model", tmp_path / "pairs.jsonl"), tmp_path / "cache")
    assert len(task.train) + len(task.heldout) == 12 and len(task.heldout) == 2
    assert task.reward is None and task.kl_budget is None and not task.online
    assert task.model_config["model_type"] == "gpt2"
    assert torch.isfinite(task.train.reference_chosen_logps).all()


def test_user_setting_mistakes_are_setting_errors(tmp_path):
    save_tiny_user_model(tmp_path / "model")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "the cat", "chosen": "sat"}\n')
    with pytest.raises(SettingError, match="line 1"):
        load_user_task(UserSetting(tmp_path / "model", bad), tmp_path / "cache")
    with pytest.raises(SettingError, match="no such folder"):
        load_user_task(UserSetting(tmp_path / "nothing", bad), tmp_path / "cache")
    write_user_dataset(tmp_path / "pairs.jsonl")
    with pytest.raises(SettingError, match="module.py:function"):
        load_user_task(UserSetting(tmp_path / "model", tmp_path / "pairs.jsonl", reward="nocolon"), tmp_path / "cache")
    not_python = tmp_path / "reward.txt"
    not_python.write_text("def reward(prompt, response):\n    return 1.0\n")
    with pytest.raises(SettingError, match="not a Python module"):
        load_user_task(UserSetting(tmp_path / "model", tmp_path / "pairs.jsonl", reward=f"{not_python}:reward"),
                       tmp_path / "cache")


# -- the compact Llama: transformers' model, without transformers -----------------------------------

def compact_and_hf(task):
    from safetensors.torch import load_file

    from lossearch.evaluation.tasks.llama import CompactLlama
    from lossearch.evaluation.tasks.lm import load_parameters, make_hf_model, make_model

    parameters = load_file(str(task.parameters_file))
    compact, hf = make_model(task.model_config), make_hf_model(task.model_config)
    assert isinstance(compact, CompactLlama) and not isinstance(hf, CompactLlama)
    for model in (compact, hf):
        load_parameters(model, parameters)
    return compact, hf


def test_the_compact_llama_has_transformers_parameters_and_logits(tiny_task):
    compact, hf = compact_and_hf(tiny_task)
    assert [(n, p.shape) for n, p in compact.named_parameters()] == [(n, p.shape) for n, p in hf.named_parameters()]
    batch = make_sequences([[1, 5, 6, 7], [1, 8], [1]], [[9, 10, 2], [11, 2], [12, 13, 14, 2]], pad_id=0)
    ours, theirs = forward_logits(compact, batch), forward_logits(hf, batch)
    real = batch.attention[:, :-1]  # logits at padding positions are nobody's business
    assert torch.allclose(ours[real], theirs[real], atol=1e-5)
    # the same gradients flow back into the same parameters
    (sequence_logps(compact, batch).sum()).backward()
    (sequence_logps(hf, batch).sum()).backward()
    hf_grads = dict(hf.named_parameters())
    for name, param in compact.named_parameters():
        assert torch.allclose(param.grad, hf_grads[name].grad, atol=1e-5), name


def test_logits_of_the_response_columns_only_are_the_full_logits_there(tiny_task):
    from lossearch.evaluation.tasks.lm import first_response_column

    compact, hf = compact_and_hf(tiny_task)
    batch = make_sequences([[1, 5, 6, 7], [1, 8], [1]], [[9, 10, 2], [11, 2], [12, 13, 14, 2]], pad_id=0)
    first = first_response_column(batch)
    assert first == 4 and not batch.response[:, :first].any()
    for model in (compact, hf):
        full = forward_logits(model, batch)  # (N, T - 1, V)
        trimmed = forward_logits(model, batch, first)  # (N, T - first, V): the last block skips the prompt's queries
        assert trimmed.shape == (3, batch.ids.shape[1] - first, full.shape[-1])
        assert torch.allclose(trimmed, full[:, first - 1:], atol=1e-5)
    # the compact model's logits_to_keep means what transformers' does
    inputs = {"input_ids": batch.ids, "attention_mask": batch.attention.long()}
    ours, theirs = compact(**inputs, logits_to_keep=3).logits, hf(**inputs, logits_to_keep=3).logits
    assert ours.shape == theirs.shape == (3, 3, full.shape[-1])
    real = batch.attention[:, -3:]
    assert torch.allclose(ours[real], theirs[real], atol=1e-5)


def test_the_compact_llama_samples_what_transformers_samples(tiny_task):
    compact, hf = compact_and_hf(tiny_task)
    ids, attention = tiny_task.heldout_prompts
    draws = [sample_responses(model.eval(), ids, attention, 8, tiny_task.eos_id, tiny_task.pad_id,
                              torch.Generator().manual_seed(3)) for model in (compact, hf)]
    assert torch.equal(draws[0].ids, draws[1].ids) and torch.equal(draws[0].response, draws[1].response)


def test_models_the_compact_llama_cannot_compute_go_through_transformers(tiny_task):
    from lossearch.evaluation.tasks.llama import CompactLlama, supports
    from lossearch.evaluation.tasks.lm import make_model

    assert supports(tiny_task.model_config)
    for change in ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, {"attention_bias": True},
                   {"hidden_act": "gelu"}, {"model_type": "gpt2"}):
        assert not supports({**tiny_task.model_config, **change}), change
    config = {**tiny_task.model_config, "attention_bias": True}
    assert not isinstance(make_model(config), CompactLlama)
    with pytest.raises(ValueError, match="plain Llama"):
        CompactLlama(config)


def test_decoding_matches_the_worlds_tokenizer():
    from lossearch.evaluation.tasks.catalog import decode_text

    rng = random.Random(0)
    for vocabulary in WORLD_VOCABULARIES.values():
        tokenizer = build_tokenizer(vocabulary)
        for _ in range(200):
            ids = [rng.randrange(len(vocabulary)) for _ in range(rng.randrange(12))]
            assert decode_text(ids, vocabulary) == tokenizer.decode(ids, skip_special_tokens=True)


def test_a_user_dataset_with_scores_on_every_line_gives_its_training_pairs_scores(tmp_path):
    from safetensors.torch import load_file

    save_tiny_user_model(tmp_path / "model")
    write_user_dataset(tmp_path / "plain.jsonl")
    plain = load_user_task(UserSetting(tmp_path / "model", tmp_path / "plain.jsonl"), tmp_path / "cache")
    assert plain.scores_file is None
    write_user_dataset(tmp_path / "scored.jsonl", scored=True)
    task = load_user_task(UserSetting(tmp_path / "model", tmp_path / "scored.jsonl"), tmp_path / "cache")
    scores = load_file(str(task.scores_file))
    chosen, rejected = scores["train_chosen_scores"], scores["train_rejected_scores"]
    assert len(chosen) == len(task.train) == 10 and torch.equal(rejected, -chosen)
    # the lines the split kept for training, in its order: each line's own score
    assert len({int(score) for score in chosen}) == 10  # ten distinct lines: each pair its own line's score


def test_a_catalog_tasks_scores_are_its_labellers_rewards(tiny_task):
    from safetensors.torch import load_file

    from lossearch.evaluation.tasks.catalog import reward_of_ids
    from lossearch.evaluation.tasks.scores import sequence_rewards

    scores = load_file(str(tiny_task.scores_file))
    labeller = reward_of_ids("sentiment", labels=True)
    assert torch.equal(scores["train_chosen_scores"], sequence_rewards(labeller, tiny_task.train.chosen))
    # prompts and responses are split right: the held-out pairs are ordered by the oracle, strictly
    oracle = reward_of_ids("sentiment")
    assert bool((sequence_rewards(oracle, tiny_task.heldout.chosen)
                 > sequence_rewards(oracle, tiny_task.heldout.rejected)).all())
