"""Small-language-model plumbing shared by task building, training and scoring.

Every batch of text uses one layout, so one set of functions serves them all:

    ids        (N, P + R) long   a left-padded prompt, then a right-padded response
    attention  (N, P + R) bool   real tokens
    response   (N, P + R) bool   the response's tokens (its end-of-sequence token included)

Left padding keeps every prompt's last token in column P - 1, where sampling starts;
positions are counted over real tokens only, so padding never shifts a token's position.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Sequences:
    """A batch of prompt + response sequences in the layout above."""

    ids: torch.Tensor
    attention: torch.Tensor
    response: torch.Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]

    def select(self, index) -> "Sequences":
        """Rows `index`, trimmed of the columns that are padding in every selected row."""
        ids, attention, response = self.ids[index], self.attention[index], self.response[index]
        used = attention.any(0).nonzero()  # (K, 1) columns with a real token in some row
        first, last = int(used[0]), int(used[-1]) + 1
        return Sequences(ids[:, first:last], attention[:, first:last], response[:, first:last])

    def rows(self, index) -> "Sequences":
        """Rows `index`, every column kept (the layout's prompt width stays the same)."""
        return Sequences(self.ids[index], self.attention[index], self.response[index])

    def to(self, device) -> "Sequences":
        return Sequences(self.ids.to(device), self.attention.to(device), self.response.to(device))

    def response_lengths(self) -> torch.Tensor:
        return self.response.sum(-1).float()  # (N,)


def widen(batch: Sequences, width: int) -> Sequences:
    """`batch` padded on the right (with masked-out columns) to `width` columns."""
    padded = (F.pad(tensor, (0, width - tensor.shape[1])) for tensor in (batch.ids, batch.attention, batch.response))
    return Sequences(*padded)


def concat_sequences(first: Sequences, second: Sequences) -> Sequences:
    """Stack two batches that share their prompt columns, padding the narrower on the right."""
    width = max(first.ids.shape[1], second.ids.shape[1])
    first, second = widen(first, width), widen(second, width)
    return Sequences(torch.cat([first.ids, second.ids]), torch.cat([first.attention, second.attention]),
                     torch.cat([first.response, second.response]))


def make_model(config: dict):
    """A fresh causal LM from a config dict: the compact Llama (lossearch.evaluation.tasks.llama) when it
    computes this config exactly, as for every task world; else `transformers`' class."""
    from lossearch.evaluation.tasks.llama import CompactLlama, supports

    return CompactLlama(config) if supports(config) else make_hf_model(config)


def make_hf_model(config: dict):
    """A fresh `transformers` causal LM from a config dict (`model_type` names the architecture)."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_config = CONFIG_MAPPING[config["model_type"]].from_dict(config)
    return AutoModelForCausalLM.from_config(model_config)


def positions(attention: torch.Tensor) -> torch.Tensor:
    """(N, T) position of each token among the real tokens of its row (padding gets 0)."""
    return (attention.long().cumsum(-1) - 1).clamp(min=0)


def first_response_column(batch: Sequences) -> int:
    """The first column holding a response token in any row (at least 1: a token needs a context)."""
    used = batch.response.any(0).nonzero()  # (K, 1)
    return max(1, int(used[0])) if used.numel() else batch.ids.shape[1] - 1


def forward_logits(model, batch: Sequences, first_target: int = 1) -> torch.Tensor:
    """(N, T - first_target, V) next-token logits predicting tokens first_target .. T - 1.

    Log-probs of responses need the logits from the last prompt column on only
    (`first_target=first_response_column(batch)`): the compact Llama then runs its last
    block's queries, MLP and head on those columns alone (logits_to_keep), which saves 5% of a
    training step here (fp32, 2-core Xeon, benchmarks/speed_tricks.py); any other model
    computes them all and drops the rest.
    """
    from lossearch.evaluation.tasks.llama import CompactLlama

    T = batch.ids.shape[1]
    inputs = {"input_ids": batch.ids, "attention_mask": batch.attention.long(),
              "position_ids": positions(batch.attention)}
    if isinstance(model, CompactLlama):
        logits = model(**inputs, logits_to_keep=T - first_target + 1).logits  # (N, T - first_target + 1, V)
        return logits[:, :-1]
    return model(**inputs).logits[:, first_target - 1:-1]


def token_logps(logits: torch.Tensor, batch: Sequences) -> torch.Tensor:
    """(N, K) log-prob of each of the last K tokens (K = logits' width, from forward_logits); zero off the response."""
    first_target = batch.ids.shape[1] - logits.shape[1]
    targets = batch.ids[:, first_target:]  # (N, K): logits[:, k] predicts token first_target + k
    # gather - logsumexp: the log-softmax of the one token, without a (N, K, V) log-softmax (no faster
    # than log_softmax + gather here, fp32, benchmarks/speed_tricks.py; as plain, and the last bits differ)
    picked = logits.gather(-1, targets[..., None])[..., 0] - logits.logsumexp(-1)
    return picked * batch.response[:, first_target:]


def sequence_logps(model, batch: Sequences) -> torch.Tensor:
    """(N,) sum of the response's token log-probs under `model`."""
    return token_logps(forward_logits(model, batch, first_response_column(batch)), batch).sum(-1)


def sequence_kl(from_logits: torch.Tensor, to_logits: torch.Tensor, batch: Sequences) -> torch.Tensor:
    """(N,) sum over response positions of KL(from || to) of the next-token distributions
    (both logits as forward_logits gives them, of the same width)."""
    from_logps = F.log_softmax(from_logits, dim=-1)  # (N, K, V)
    to_logps = F.log_softmax(to_logits, dim=-1)
    per_position = (from_logps.exp() * (from_logps - to_logps)).sum(-1)  # (N, K)
    return (per_position * batch.response[:, batch.ids.shape[1] - from_logits.shape[1]:]).sum(-1)


def cache_keyword(model) -> str:
    """What `model`'s forward calls its KV cache, in and out: `cache` in transformers >= 5.24
    (which warns on the old name and drops it in 5.40), `past_key_values` before and in CompactLlama."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def sample_responses(model, prompt_ids: torch.Tensor, prompt_attention: torch.Tensor, max_new_tokens: int,
                     eos_id: int, pad_id: int, generator: torch.Generator, temperature: float = 1.0,
                     step_logps: bool = False):
    """Sample one response per (left-padded) prompt, with a KV cache; rows stop at eos.

    With `step_logps`, returns (Sequences, (B, R, V) the model's next-token log-probs at each
    of the R steps, at temperature 1): what a KL on the samples needs from the sampler.
    """
    B = prompt_ids.shape[0]
    attention = prompt_attention.bool()
    step_ids, step_positions = prompt_ids, positions(attention)
    cache, tokens, logps = None, [], []
    cache_name = cache_keyword(model)
    finished = torch.zeros(B, dtype=torch.bool, device=prompt_ids.device)
    for _ in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=attention.long(), position_ids=step_positions,
                    use_cache=True, **{cache_name: cache})
        cache = getattr(out, cache_name)
        if step_logps:
            logps.append(F.log_softmax(out.logits[:, -1].float(), dim=-1))
        probs = F.softmax(out.logits[:, -1].float() / temperature, dim=-1)  # (B, V)
        token = torch.multinomial(probs, 1, generator=generator)[:, 0]  # (B,)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        tokens.append(token)
        finished |= token == eos_id
        attention = torch.cat([attention, ~finished[:, None] | (token == eos_id)[:, None]], dim=1)
        step_ids, step_positions = token[:, None], step_positions[:, -1:] + 1
        if bool(finished.all()):
            break
    samples = join_responses(prompt_ids, prompt_attention, torch.stack(tokens, dim=1), eos_id, pad_id)
    return (samples, torch.stack(logps, dim=1)) if step_logps else samples


def join_responses(prompt_ids, prompt_attention, response_ids, eos_id: int, pad_id: int) -> Sequences:
    """Sequences from left-padded prompts and responses whose tokens after the first eos are padding."""
    is_eos = response_ids == eos_id  # (B, R)
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # strictly after the first eos
    response = ~after_eos
    response_ids = torch.where(response, response_ids, torch.full_like(response_ids, pad_id))
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention = torch.cat([prompt_attention.bool(), response], dim=1)
    response_mask = torch.cat([torch.zeros_like(prompt_attention, dtype=torch.bool), response], dim=1)
    return Sequences(ids, attention, response_mask)


def pad_left(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention), each (N, max length), with every row's tokens flush right."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.bool)
    for index, row in enumerate(rows):
        if row:
            ids[index, width - len(row):] = torch.tensor(row)
            attention[index, width - len(row):] = True
    return ids, attention


def pad_right(rows: list[list[int]], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention), each (N, width), with every row's tokens flush left."""
    width = width or max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.bool)
    for index, row in enumerate(rows):
        row = row[:width]
        if row:
            ids[index, : len(row)] = torch.tensor(row)
            attention[index, : len(row)] = True
    return ids, attention


def make_sequences(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> Sequences:
    """Sequences from token-id lists (responses already end with eos where they should)."""
    prompt_ids, prompt_attention = pad_left(prompts, pad_id)
    response_ids, response_attention = pad_right(responses, pad_id)
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention = torch.cat([prompt_attention, response_attention], dim=1)
    response = torch.cat([torch.zeros_like(prompt_attention), response_attention], dim=1)
    return Sequences(ids, attention, response)


def split_sequences(batch: Sequences, prompt_width: int) -> tuple[list[list[int]], list[list[int]]]:
    """Token-id lists (prompts, responses) back from sequences whose prompts are `prompt_width` wide."""
    prompts = [row[mask].tolist() for row, mask in zip(batch.ids[:, :prompt_width], batch.attention[:, :prompt_width])]
    responses = [row[mask].tolist() for row, mask in zip(batch.ids, batch.response)]
    return prompts, responses


# -----------------------------------------------------------------------------
# weights in and out of a sandbox child: named parameters only, as safetensors (no pickle)

def parameter_tensors(model) -> dict[str, torch.Tensor]:
    """Every named parameter (a tied one once), detached, contiguous, on the CPU."""
    return {name: param.detach().to("cpu").contiguous() for name, param in model.named_parameters()}


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                      torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """The safetensors encoding of `tensors`, written by hand.

    safetensors' own writer goes through numpy.ctypeslib, which the sandbox child's
    audit hook refuses (it blocks ctypes); the format is an 8-byte little-endian header
    size, a JSON header of dtypes, shapes and byte offsets, then the raw bytes.
    """
    import json

    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()  # raw little-endian bytes
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # pad the header so the data starts 8-byte aligned
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def save_parameters(model, path) -> None:
    with open(path, "wb") as file:
        file.write(safetensors_bytes(parameter_tensors(model)))


def load_parameters(model, tensors: dict[str, torch.Tensor]) -> None:
    """Copy `tensors` into `model`'s parameters; refuse a missing, extra, misshapen or non-finite one."""
    params = dict(model.named_parameters())
    if set(tensors) != set(params):
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise ValueError(f"parameters do not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for name, param in params.items():
            value = tensors[name]
            if tuple(value.shape) != tuple(param.shape) or not value.is_floating_point():
                raise ValueError(f"parameter {name} has shape {tuple(value.shape)} and dtype {value.dtype}, "
                                 f"expected {tuple(param.shape)} floating point")
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"parameter {name} holds non-finite values")
            param.copy_(value)
