"""Length-grouped batches and gradient accumulation against plain random batches, on pairs whose lengths vary.

A user's text varies in length; the catalog tasks' barely does. This builds, in this process and
with nothing downloaded, a compact Llama (`--width`, `--layers`) and pairs of random tokens whose
prompt and response lengths are drawn uniformly up to `--max-prompt` and `--max-response` tokens,
then trains DPO on them (lossearch.evaluation.finetune.train.train_policy, the finetune child's
own loop) in a fresh process per configuration:

    plain       random batches of `--batch` pairs (the default)
    grouped     --group-by-length: the same number of steps, batches of pairs of similar length
    accum N     --grad-accum N: each step's batch as N micro-batches, gradients summed

It prints each configuration's training seconds and the resident memory its training added to the
process's peak beyond what building the model and data had reached (activations, gradients, AdamW's
moments), and their ratios to `plain` run in the same script. Precision: `--precision` (fp32, or
bf16 where the CPU computes it).

    python benchmarks/batching.py [--steps 20] [--batch 16] [--width 256] [--layers 4] [--precision fp32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CONFIGS = {"plain": {}, "grouped": {"group_by_length": True}, "accum 2": {"grad_accum": 2},
           "accum 4": {"grad_accum": 4}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--max-prompt", type=int, default=128)
    parser.add_argument("--max-response", type=int, default=128)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration; the median is shown")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child: train one configuration
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(train_one(args, CONFIGS[args.one])))
        return

    import torch
    from multi_run import cpu_name  # this folder is on the path of a script run from it

    print(f"{args.pairs} pairs, prompts 1-{args.max_prompt} and responses 2-{args.max_response} tokens, batches "
          f"of {args.batch}, {args.steps} steps, Llama width {args.width} x {args.layers} layers, {args.precision}, "
          f"CPU: {cpu_name()}, torch {torch.__version__}, 1 thread")
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for _ in range(args.repeats):  # round by round, so that a machine's changing load falls on every one alike
        for name in CONFIGS:
            runs[name].append(child(name))
    results = {name: sorted(done, key=lambda run: run["seconds"])[len(done) // 2] for name, done in runs.items()}
    plain = results["plain"]
    print(f"{'configuration':<14}{'seconds':>9}{'x plain':>9}{'training MiB':>14}{'x plain':>9}")
    for name, result in results.items():
        print(f"{name:<14}{result['seconds']:>9.2f}{result['seconds'] / plain['seconds']:>9.2f}"
              f"{result['training_mib']:>14.0f}{result['training_mib'] / plain['training_mib']:>9.2f}")


def child(name: str) -> dict:
    """Train configuration `name` in a fresh process (so its peak memory is its own)."""
    done = subprocess.run([sys.executable, *sys.argv, "--one", name], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_one(args, fields: dict) -> dict:
    import torch

    from lossearch.contract import call_loss, load_loss, read_spec
    from lossearch.evaluation.finetune.config import RunConfig
    from lossearch.evaluation.finetune.train import train_policy
    from lossearch.evaluation.tasks.data import PairSet
    from lossearch.evaluation.tasks.lm import make_model, make_sequences
    from lossearch.search.seeds import seed_path

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)

    def tokens(longest: int, shortest: int = 1) -> list[int]:
        count = int(torch.randint(shortest, longest + 1, (1,), generator=generator))
        return torch.randint(2, args.vocab, (count,), generator=generator).tolist()

    prompts = [tokens(args.max_prompt) for _ in range(args.pairs)]
    chosen = make_sequences(prompts, [tokens(args.max_response, 2) for _ in prompts], pad_id=0)
    rejected = make_sequences(prompts, [tokens(args.max_response, 2) for _ in prompts], pad_id=0)
    zeros = torch.zeros(args.pairs)  # the reference's log-probs: any fixed values train the same amount
    pairs = PairSet(chosen, rejected, zeros, zeros)
    config = {"model_type": "llama", "hidden_size": args.width, "intermediate_size": 4 * args.width,
              "num_attention_heads": 4, "num_key_value_heads": 4, "num_hidden_layers": args.layers,
              "vocab_size": args.vocab, "pad_token_id": 0, "tie_word_embeddings": True,
              "max_position_embeddings": args.max_prompt + args.max_response}
    policy = make_model(config)
    spec = read_spec(seed_path("dpo"))
    function = load_loss(spec.source, spec.name)

    def loss_fn(tensors, beta):
        return call_loss(function, spec, tensors, beta=beta)

    run = RunConfig(beta=0.1, seed=0, steps=args.steps, pairs=args.pairs, batch_size=args.batch, lr=1e-4,
                    uses_kl=False, precision=args.precision, **fields)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    losses = train_policy(loss_fn, policy, None, pairs, run)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert all(loss == loss for loss in losses)  # a check that it trained, not a figure
    return {"seconds": seconds, "training_mib": (peak - before) / 1024}


if __name__ == "__main__":
    main()
