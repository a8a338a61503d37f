"""One DPO candidate evaluation through lossearch against TRL's DPOTrainer, end to end.

Same base model (the task's, from the cache), same training pairs, same number of steps,
batch size, peak learning rate, beta, AdamW betas, gradient clipping and warm-up + cosine
schedule (down to a tenth of the peak), one torch thread each, each in a fresh process:

    lossearch  `lossearch eval seeds/dpo.py --tier finetune --budget quick --trials 1 --json`, the command
               a user runs: the sandbox's start, the static, sanity and bandit tiers, training
               in the jailed child, then scoring on held-out prompts (sampling, oracle, exact
               KL, pref_acc), which TRL's run does not even do
    TRL        DPOTrainer(loss_type="sigmoid") from loading the model and the pairs (a JSONL of
               text written before either clock starts) to the end of train(): imports,
               dataset tokenization, the reference model, the training loop

It prints the median wall-clock time of each side over --repeats runs (the sides alternate,
so a busy machine slows both alike), their ratio (target: lossearch at least 3x faster), the
training loop's own time on each side, and both final training losses (mean over the last
10 steps), which should agree within noise. lossearch trains in mixed bf16 where the CPU has
bf16 instructions (`--precision auto`); the script also times both sides in the other
precision, so the comparison holds like for like:

    python benchmarks/vs_trl.py [--task sentiment] [--repeats 3] [--precisions auto,fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch


def pairs_as_text(task, count: int) -> list[dict[str, str]]:
    """The task's first `count` training pairs, decoded back to prompt/chosen/rejected strings."""
    from lossearch.evaluation.tasks.lm import split_sequences

    chosen, rejected = task.train.chosen.select(slice(0, count)), task.train.rejected.select(slice(0, count))
    prompt_width = int((~chosen.response).long().cumprod(-1).sum(-1).min())  # columns before any response
    prompts, chosen_ids = split_sequences(chosen, prompt_width)
    _, rejected_ids = split_sequences(rejected, prompt_width)
    return [{"prompt": task.decode(p), "chosen": task.decode(c), "rejected": task.decode(r)}
            for p, c, r in zip(prompts, chosen_ids, rejected_ids)]


QUICK = {"steps": 100, "pairs": 1024, "batch": 16, "lr": 6e-4, "beta": 0.1}  # the quick budget, seeds/dpo.py's beta


def run_lossearch(task_name: str, precision: str) -> tuple[float, dict]:
    """The user's command in a fresh process: (wall seconds, final loss and training seconds)."""
    command = [sys.executable, "-m", "lossearch", "eval", "seeds/dpo.py", "--tier", "finetune", "--task", task_name,
               "--budget", "quick", "--trials", "1", "--precision", precision, "--json"]
    seconds, output = timed(command)
    finetune = json.loads(output)["metrics"]["finetune"]
    run = finetune["runs"][0]
    return seconds, {"final_loss": run["final_loss"], "train_seconds": run["train_seconds"],
                     "precision": finetune["precision"],
                     # the finetune tier's time less its training: scoring on held-out prompts, the jail's start
                     "scoring_seconds": finetune["seconds"] - run["train_seconds"]}


def run_trl(pairs_file: str, model_dir: str, precision: str) -> dict:
    """TRL's DPOTrainer on the same model and pairs: final loss (mean of the last 10 steps), training seconds.

    What a TRL user runs: load the model and a JSONL of text pairs (written before the clock
    started, as a user's data set lies on disk), build the trainer, train."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    with open(pairs_file) as file:
        rows = [json.loads(line) for line in file]
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory() as output_dir:
        config = DPOConfig(
            output_dir=output_dir, loss_type=["sigmoid"], beta=QUICK["beta"],
            per_device_train_batch_size=QUICK["batch"],
            max_steps=QUICK["steps"], learning_rate=QUICK["lr"], lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=QUICK["steps"] // 10, weight_decay=0.0,
            adam_beta2=0.95, max_grad_norm=1.0, bf16=precision == "bf16", logging_steps=10, save_strategy="no",
            report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True, log_level="error")
        trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer)
        started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - started
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"final_loss": float(losses[-1]), "train_seconds": train_seconds, "precision": precision}


def timed(command: list[str]) -> tuple[float, str]:
    """(wall seconds, stdout) of `command` in a fresh process with one torch thread."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                                      "TOKENIZERS_PARALLELISM": "false"})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", default="auto,fp32", help="lossearch --precision values, comma-separated")
    parser.add_argument("--trl-child", nargs=3, metavar=("PAIRS", "MODEL", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_child:
        torch.set_num_threads(1)
        print(json.dumps(run_trl(*args.trl_child)))
        return
    from lossearch.evaluation.tasks.load import load_task

    task = load_task(args.task)  # built (if needed) before either clock starts: both read the same cached model
    workdir = tempfile.mkdtemp(prefix="vs-trl-")
    pairs_file = os.path.join(workdir, "pairs.jsonl")
    with open(pairs_file, "w") as file:
        file.writelines(json.dumps(row) + "\n" for row in pairs_as_text(task, QUICK["pairs"]))
    model_dir = str(task.parameters_file.parent)
    print(f"task {args.task}: {QUICK['steps']} steps x {QUICK['batch']} pairs from {QUICK['pairs']}, lr "
          f"{QUICK['lr']:g}, "
          f"beta {QUICK['beta']}, one thread each, each in a fresh process; medians of {args.repeats} runs")
    for precision in args.precisions.split(","):
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(run_lossearch(args.task, precision))
            resolved = ours[-1][1]["precision"]
            seconds, output = timed([sys.executable, __file__, "--trl-child", pairs_file, model_dir, resolved])
            theirs.append((seconds, json.loads(output.strip().splitlines()[-1])))
        report(ours, theirs, precision)
    shutil.rmtree(workdir, ignore_errors=True)


def report(ours: list[tuple[float, dict]], theirs: list[tuple[float, dict]], precision: str) -> None:
    resolved = ours[0][1]["precision"]
    rows = {"lossearch eval (static, sanity, bandit, finetune + "
            "scoring)": ours, "TRL DPOTrainer (sigmoid, no scoring)": theirs}
    print(f"\n--precision {precision} (training in {resolved} on both sides)")
    for label, runs in rows.items():
        print(f"  {label:58s}: {median([s for s, _ in runs]):5.2f} s end to end "
              f"(runs: {', '.join(f'{s:.2f}' for s, _ in runs)}), "
              f"training {median([r['train_seconds'] for _, r in runs]):5.2f} s, "
              f"final loss {median([r['final_loss'] for _, r in runs]):.4f}")
    total, training = median([s for s, _ in ours]), median([r["train_seconds"] for _, r in ours])
    scoring = median([r["scoring_seconds"] for _, r in ours])
    print(f"  where lossearch's time goes: training {training:.2f} s, scoring and the finetune child's start "
          f"{scoring:.2f} s, the rest (the command's start, static, sanity and bandit tiers) "
          f"{total - training - scoring:.2f} s")
    end_to_end = median([s for s, _ in theirs]) / median([s for s, _ in ours])
    training = median([r["train_seconds"] for _, r in theirs]) / median([r["train_seconds"] for _, r in ours])
    print(f"  speed-up end to end: {end_to_end:.2f}x (target >= 3x); training loop: {training:.2f}x")


if __name__ == "__main__":
    main()
