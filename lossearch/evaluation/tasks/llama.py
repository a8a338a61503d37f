"""A compact Llama: the tasks' base-model architecture without the `transformers` machinery.

It holds exactly the named parameters of `transformers`' LlamaForCausalLM for the same
config (tied embeddings included), so the same safetensors file loads into either, and
computes the same logits at every real token (tests/test_tasks.py compares them). What
it leaves out is what a 0.6 M-parameter model pays for and never uses: importing
`transformers` (about a second in every process that builds a model), cache classes,
mask builders, hooks and output dataclasses. It supports the plain Llama the task
worlds build (default RoPE, SiLU MLP, no biases, no scaling); `supports(config)` says
whether a config is one; any other model goes through `transformers`.

Stacked runs: every weight may carry a leading run dimension R (`stack_runs`), one copy of the
model per independent training run; the batch's rows are then R equal groups, run r's rows the
r-th, and each group meets only its own run's weights (batched matrix products), so R runs
train in one pass (lossearch.evaluation.finetune.stacked).

Padding: a query that is itself padding attends to itself only, so no row of the
attention is empty (an empty row makes NaN, and NaN poisons the gradients even where
the loss ignores it); real tokens attend to the real tokens before them, as in HF.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn


class KVCache:
    """The keys and values of every token seen so far, per layer, for sampling a token at a time.

    Each step concatenates the past onto its own keys and values: a buffer that grew by doubling
    saved 4.7% of sampling here (fp32, 2-core Xeon, benchmarks/speed_tricks.py), under the 5% a
    trick must save."""

    def __init__(self, layers: int) -> None:
        self.keys: list[Optional[torch.Tensor]] = [None] * layers  # (N, KV, length, D) each
        self.values: list[Optional[torch.Tensor]] = [None] * layers
        self.length = 0
        """Columns seen in every layer."""

    def extend(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (N, KV, T, D) keys and values to the layer's; all its columns so far."""
        past_keys, past_values = self.keys[layer], self.values[layer]
        if past_keys is not None and past_values is not None:
            keys = torch.cat([past_keys, keys], dim=2)  # (N, KV, past + T, D)
            values = torch.cat([past_values, values], dim=2)
        self.keys[layer], self.values[layer] = keys, values
        return keys, values


def attention_mask_of(keys: torch.Tensor, T: int) -> torch.Tensor:
    """(N, 1, T, S) boolean attention mask of the last T of S columns over the keys `keys` (N, S) (real
    tokens): a query sees the real keys up to its own column, and itself always (see Padding above)."""
    S = keys.shape[1]
    past = S - T
    causal = torch.ones(T, S, dtype=torch.bool, device=keys.device).tril(past)  # query t sees keys <= past + t
    own = torch.zeros(T, S, dtype=torch.bool, device=keys.device)
    own[:, past:] = torch.eye(T, dtype=torch.bool, device=keys.device)
    return ((causal & keys[:, None, :]) | own)[:, None]


class Output(NamedTuple):
    logits: torch.Tensor
    """(N, T, V) next-token logits."""
    past_key_values: Optional[KVCache]
    """Every layer's keys and values so far, to pass to the next call; None unless use_cache."""


def rope_theta(config: dict) -> float:
    parameters = config.get("rope_parameters") or {}
    return float(parameters.get("rope_theta", config.get("rope_theta", 10000.0)))


def supports(config: dict) -> bool:
    """Whether `config` (a Llama config dict) is a model this module computes exactly."""
    parameters = config.get("rope_parameters") or {}
    return (config.get("model_type") == "llama" and not config.get("attention_bias", False)
            and not config.get("mlp_bias", False) and config.get("hidden_act", "silu") == "silu"
            and config.get("pretraining_tp", 1) == 1 and not config.get("rope_scaling")
            and parameters.get("rope_type", "default") == "default" and not config.get("attention_dropout", 0.0))


def project(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T: one weight (out, in), or one per run (R, out, in) applied to x's R row groups."""
    if weight.dim() == 2:
        return F.linear(x, weight)
    runs = weight.shape[0]
    return torch.bmm(x.reshape(runs, -1, x.shape[-1]), weight.transpose(1, 2)).view(*x.shape[:-1], -1)


def per_run(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """weight * x, the weight (size,) or one per run (R, size) over x's R row groups."""
    if weight.dim() == 1:
        return weight * x
    return (weight[:, None] * x.reshape(weight.shape[0], -1, x.shape[-1])).view(x.shape)


def stack_runs(model: nn.Module, runs: int) -> None:
    """Give every parameter of `model` a leading run dimension: `runs` copies of its current values."""
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            stacked = param.detach().unsqueeze(0).repeat(runs, *([1] * param.dim()))
            setattr(module, name, nn.Parameter(stacked, requires_grad=param.requires_grad))


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        return per_run(self.weight, (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)).to(dtype))


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)

    def forward(self, x, cos, sin, mask, cache: Optional[KVCache] = None, layer: int = 0, first_query: int = 0):
        """Keys and values of every column of x (after the cache's, if any); queries (and the
        output) from column `first_query` on."""
        N, T, _ = x.shape
        Q = T - first_query
        q = project(x[:, first_query:], self.q_proj.weight)
        q = q.view(N, Q, self.heads, self.head_dim).transpose(1, 2)  # (N, H, Q, D)
        k = project(x, self.k_proj.weight).view(N, T, self.kv_heads, self.head_dim).transpose(1, 2)  # (N, KV, T, D)
        v = project(x, self.v_proj.weight).view(N, T, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotate(q, cos[:, :, first_query:], sin[:, :, first_query:]), rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.extend(layer, k, v)  # (N, KV, past + T, D)
        with torch.autocast(x.device.type, enabled=False):  # in float32 even under bf16 autocast: CPU's
            # bf16 flash-attention backward ran 8x slower than float32's at these sizes
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask[:, :, first_query:],
                                                 enable_gqa=self.kv_heads != self.heads)
        return project(out.to(x.dtype).transpose(1, 2).reshape(N, Q, -1), self.o_proj.weight)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, Llama's half-split layout: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin);
    cos, sin are (N, 1, T, D)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated = F.silu(project(x, self.gate_proj.weight)) * project(x, self.up_proj.weight)
        return project(gated, self.down_proj.weight)


class Block(nn.Module):
    def __init__(self, config: dict, head_dim: int) -> None:
        super().__init__()
        hidden, eps = config["hidden_size"], config.get("rms_norm_eps", 1e-6)
        heads = config["num_attention_heads"]
        self.self_attn = Attention(hidden, heads, config.get("num_key_value_heads") or heads, head_dim)
        self.mlp = MLP(hidden, config["intermediate_size"])
        self.input_layernorm = RMSNorm(hidden, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)

    def forward(self, x, cos, sin, mask, cache: Optional[KVCache] = None, layer: int = 0, first_query: int = 0):
        """The block's output from column `first_query` on (earlier columns still serve as keys)."""
        # attention first: autograd then sums x's two gradients in the order training has always
        # used; the other order changes their last bits, and some losses (fdpo_js at beta 1) end
        # elsewhere from such a nudge (KL 1.4 vs 5.3 nats)
        attended = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, first_query)
        x = x[:, first_query:] + attended
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """LlamaModel's parameters: the embedding, the blocks and the final norm (`model.*` in HF's names)."""

    def __init__(self, config: dict, head_dim: int) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        self.embed_tokens = nn.Embedding(config["vocab_size"], hidden, config.get("pad_token_id"))
        self.layers = nn.ModuleList(Block(config, head_dim) for _ in range(config["num_hidden_layers"]))
        self.norm = RMSNorm(hidden, config.get("rms_norm_eps", 1e-6))


class CompactLlama(nn.Module):
    """LlamaForCausalLM's parameters and logits; called like it with the arguments lossearch uses."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        if not supports(config):
            raise ValueError("CompactLlama computes plain Llama configs only; use transformers for this one")
        hidden, heads = config["hidden_size"], config["num_attention_heads"]
        head_dim = config.get("head_dim") or hidden // heads
        self.model = Decoder(config, head_dim)
        self.tied = bool(config.get("tie_word_embeddings", False))
        if not self.tied:
            self.lm_head = nn.Linear(hidden, config["vocab_size"], bias=False)
        frequencies = 1.0 / (rope_theta(config) ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", frequencies, persistent=False)
        std = float(config.get("initializer_range", 0.02))
        with torch.no_grad():  # HF's initialisation: normal(0, std) weights, a zero padding row, unit norms
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    module.weight.normal_(0.0, std)
            if self.model.embed_tokens.padding_idx is not None:
                self.model.embed_tokens.weight[self.model.embed_tokens.padding_idx].zero_()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        embedding = self.model.embed_tokens
        if embedding.weight.dim() == 2:
            return embedding(input_ids)
        runs, vocabulary, hidden = embedding.weight.shape  # stacked: row group r looks up in run r's table
        run = torch.arange(runs, device=input_ids.device).repeat_interleave(input_ids.shape[0] // runs)
        x = F.embedding(input_ids + (run * vocabulary)[:, None], embedding.weight.reshape(-1, hidden))
        if embedding.padding_idx is None:
            return x
        # as nn.Embedding's padding_idx: no gradient reaches the table through a padding id (a sampled
        # response may hold one as a real token)
        return torch.where((input_ids == embedding.padding_idx)[..., None], x.detach(), x)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, past_key_values=None, use_cache: bool = False,
                logits_to_keep: int = 0) -> Output:
        """`attention_mask` (N, past + T) covers the cached tokens too (default: all real);
        `position_ids` (N, T) default to past, past + 1, ... in every row, as in HF;
        `logits_to_keep` > 0: the logits of the last that many columns only, as in HF, and the
        last block computes nothing else (no other column's output depends on it)."""
        N, T = input_ids.shape
        x = self.embed(input_ids)  # (N, T, hidden)
        cache = past_key_values if past_key_values is not None else \
            KVCache(len(self.model.layers)) if use_cache else None
        if attention_mask is None:
            attention_mask = torch.ones(N, (cache.length if cache else 0) + T, dtype=torch.bool, device=x.device)
        if position_ids is None:
            S = attention_mask.shape[1]
            position_ids = torch.arange(S - T, S, device=x.device).expand(N, T)
        mask = attention_mask_of(attention_mask.bool(), T)  # (N, 1, T, S), S = past + T
        freqs = position_ids[..., None].float() * self.inv_freq  # (N, T, D/2)
        angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # (N, 1, T, D)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        last = len(self.model.layers) - 1
        first_query = T - logits_to_keep if 0 < logits_to_keep < T else 0
        for index, block in enumerate(self.model.layers):
            x = block(x, cos, sin, mask, cache, index, first_query if index == last else 0)
        if cache is not None:
            cache.length += T
        weight = self.model.embed_tokens.weight if self.tied else self.lm_head.weight
        with torch.autocast(x.device.type, enabled=False):  # logits in float32 under bf16 autocast too: the
            # losses read differences of summed log-probs, where bf16 logits would add noise (V is small)
            logits = project(self.model.norm(x.float()), weight.float())
        return Output(logits, cache if use_cache else None)
