"""Our training step against a minimal hand-written PyTorch DPO step, same model and batch.

Ours is the step the sandbox child runs (lossearch.evaluation.finetune.training_step): it picks the
batch's pairs and trims their padding, runs the policy on chosen and rejected at once,
hands the candidate loss (loaded through the contract, restricted builtins and all)
detached copies of its inputs, checks what it returns, and carries its gradients back by
the chain rule. The minimal step gets the same batch already padded and writes DPO
inline. Both run the same model class, clip gradients at 1 and step torch's AdamW (the
child's own AdamW is faster still; it is not what this measures). The two alternate, so a
busy machine slows both alike; the script prints the median time of each and their ratio
(target: at most 1.10), in float32 and in mixed bf16 (both under the same autocast).

    python benchmarks/step_overhead.py [--task sentiment] [--batch 16] [--steps 60] [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lossearch.contract import call_loss, load_loss, read_spec
from lossearch.evaluation.finetune.train import training_step
from lossearch.evaluation.tasks.lm import concat_sequences, load_parameters, make_model, positions
from lossearch.evaluation.tasks.load import load_task
from lossearch.search.seeds import seed_path


def minimal_dpo_step(policy, optimizer, ids, attention, response, reference_chosen, reference_rejected, beta,
                     precision):
    """A plain DPO step: one forward over chosen + rejected (logits from the last prompt column
    on, as ours), logps by gather, loss, backward, step."""
    first = int(response.any(0).nonzero()[0])  # the first response column
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = policy(input_ids=ids, attention_mask=attention.long(), position_ids=positions(attention),
                        logits_to_keep=ids.shape[1] - first + 1).logits[:, :-1].float()  # (2B, T - first, V)
    logps = logits.log_softmax(-1).gather(-1, ids[:, first:, None])[..., 0]  # (2B, T - first)
    logps = (logps * response[:, first:]).sum(-1)  # (2B,)
    chosen, rejected = logps.chunk(2)
    margin = (chosen - reference_chosen) - (rejected - reference_rejected)
    loss = -F.logsigmoid(beta * margin).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task(args.task)
    print(f"task {args.task}, {args.batch} pairs per step, {args.steps} steps each, {args.threads} thread(s)")
    for precision in args.precisions.split(","):
        ours_ms, minimal_ms = measure(task, args.batch, args.steps, precision)
        print(f"{precision}: ours (lossearch training_step) {ours_ms:.1f} ms per step, minimal hand-written DPO step "
              f"{minimal_ms:.1f} ms (medians); ratio ours / minimal {ours_ms / minimal_ms:.3f}  (target <= 1.10)")


def measure(task, batch: int, steps: int, precision: str) -> tuple[float, float]:
    """Median milliseconds per step of (ours, minimal), alternating."""
    parameters = load_file(str(task.parameters_file))
    ours, theirs, reference = (make_model(task.model_config) for _ in range(3))
    for model in (ours, theirs, reference):
        load_parameters(model, parameters)
    ours.train(), theirs.train(), reference.eval()
    spec = read_spec(seed_path("dpo"))
    function = load_loss(spec.source, spec.name)  # restricted builtins, as in the child

    def loss_fn(tensors, beta):
        return call_loss(function, spec, tensors, beta=beta)

    optimizers = [torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95)) for model in (ours, theirs)]
    index = torch.arange(batch)
    both = concat_sequences(task.train.chosen.select(index), task.train.rejected.select(index))  # (2B, T)
    ref_chosen, ref_rejected = task.train.reference_chosen_logps[index], task.train.reference_rejected_logps[index]

    times = {"ours": [], "minimal": []}
    for step in range(steps + 5):
        started = time.perf_counter()
        training_step(ours, reference, optimizers[0], loss_fn, task.train, index, 0.1, False, precision)
        middle = time.perf_counter()
        minimal_dpo_step(theirs, optimizers[1], both.ids, both.attention, both.response, ref_chosen, ref_rejected,
                         0.1, precision)
        ended = time.perf_counter()
        if step >= 5:  # the first steps warm up allocators and lazy paths
            times["ours"].append(middle - started)
            times["minimal"].append(ended - middle)
    return 1000 * statistics.median(times["ours"]), 1000 * statistics.median(times["minimal"])


if __name__ == "__main__":
    main()
