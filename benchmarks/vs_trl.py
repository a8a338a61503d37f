"""One DPO candidate evaluation through lossearch against TRL's DPOTrainer, end to end.

Same base model (the task's, from the cache), same training pairs, same number of steps,
batch size, peak learning rate, beta and warm-up + cosine schedule, one torch thread each.

    lossearch  evaluate(seeds/dpo.py, tier="finetune") with one trial and one seed: a fresh
               sandbox (zygote start), the static, sanity and bandit tiers, training in the
               jailed child, then scoring on held-out prompts (sampling, oracle, exact KL,
               pref_acc), which TRL's run does not even do
    TRL        DPOTrainer(loss_type="sigmoid") from loading the model to the end of train():
               dataset tokenization, the reference model, the training loop

Each side runs in a fresh Python process, as a user would run it, imports included. It
prints both wall-clock times and their ratio (target: lossearch at least 3x faster), the
training loop's own time on each side, and both final training losses (mean over the
last 10 steps), which should agree within noise.

    python benchmarks/vs_trl.py [--task sentiment] [--steps 100] [--pairs 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch


def pairs_as_text(task, count: int) -> list[dict[str, str]]:
    """The task's first `count` training pairs, decoded back to prompt/chosen/rejected strings."""
    from lossearch.tasks.lm import split_sequences

    chosen, rejected = task.train.chosen.select(slice(0, count)), task.train.rejected.select(slice(0, count))
    prompt_width = int((~chosen.response).long().cumprod(-1).sum(-1).min())  # columns before any response
    prompts, chosen_ids = split_sequences(chosen, prompt_width)
    _, rejected_ids = split_sequences(rejected, prompt_width)
    return [{"prompt": task.decode(p), "chosen": task.decode(c), "rejected": task.decode(r)}
            for p, c, r in zip(prompts, chosen_ids, rejected_ids)]


def run_lossearch(task_name: str, steps: int, pairs: int, batch: int, lr: float) -> dict:
    """One DPO evaluation through the cascade up to the finetune tier: final loss, training seconds."""
    from lossearch.evaluate import evaluate
    from lossearch.finetune import Budget, FinetuneOptions
    from lossearch.seedlib import seed_path

    budget = Budget("bench", steps=steps, pairs=pairs, batch_size=batch, trials=1, seeds=1, eval_prompts=256, lr=lr)
    evaluation = evaluate(seed_path("dpo").read_text(), "dpo", "finetune", task=task_name,
                          finetune=FinetuneOptions(budget=budget, device="cpu"))
    if not evaluation.ok:
        raise SystemExit(f"lossearch evaluation failed: {evaluation.error}")
    run = evaluation.metrics["finetune"]["runs"][0]
    return {"final_loss": run["final_loss"], "train_seconds": run["train_seconds"]}


def run_trl(task_name: str, steps: int, pairs: int, batch: int, lr: float) -> dict:
    """TRL's DPOTrainer on the same model and pairs: final loss (mean of the last 10 steps), training seconds."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from lossearch.tasks import load_task

    task = load_task(task_name)
    rows = pairs_as_text(task, pairs)
    model_dir = task.parameters_file.parent
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory() as output_dir:
        config = DPOConfig(
            output_dir=output_dir, loss_type=["sigmoid"], beta=0.1, per_device_train_batch_size=batch,
            max_steps=steps, learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=max(1, steps // 10),
            weight_decay=0.0, adam_beta2=0.95, max_grad_norm=1.0, logging_steps=10, save_strategy="no",
            report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True, log_level="error")
        trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer)
        started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - started
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"final_loss": float(losses[-1]), "train_seconds": train_seconds}


def timed_child(which: str, args) -> tuple[float, dict]:
    """Run one side in a fresh Python process, as a user would: (wall seconds, its report)."""
    command = [sys.executable, __file__, "--child", which, "--task", args.task, "--steps", str(args.steps),
               "--pairs", str(args.pairs), "--batch", str(args.batch), "--lr", str(args.lr)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                                      "TOKENIZERS_PARALLELISM": "false"})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{which} failed:\n{done.stderr[-3000:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--child", choices=("lossearch", "trl"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        torch.set_num_threads(1)  # the sandbox child trains on one thread; TRL gets the same
        run = run_lossearch if args.child == "lossearch" else run_trl
        print(json.dumps(run(args.task, args.steps, args.pairs, args.batch, args.lr)))
        return
    from lossearch.tasks import load_task

    load_task(args.task)  # built (if needed) before either clock starts: both read the same cached model
    ours, our_report = timed_child("lossearch", args)
    theirs, their_report = timed_child("trl", args)
    print(f"task {args.task}: {args.steps} steps x {args.batch} pairs from {args.pairs}, lr {args.lr:g}, beta 0.1, "
          f"one thread each, each in a fresh process")
    print(f"lossearch eval (static, sanity, bandit, finetune incl. scoring): {ours:6.1f} s end to end, "
          f"training {our_report['train_seconds']:5.1f} s, final loss {our_report['final_loss']:.4f}")
    print(f"TRL DPOTrainer (sigmoid; no scoring)                        : {theirs:6.1f} s end to end, "
          f"training {their_report['train_seconds']:5.1f} s, final loss {their_report['final_loss']:.4f}")
    print(f"speed-up end to end: {theirs / ours:.2f}x (target >= 3x); "
          f"training: {their_report['train_seconds'] / our_report['train_seconds']:.2f}x")


if __name__ == "__main__":
    main()
