"""How often the confirmation protocol declares a discovery that is not one, and how often it finds a real one.

False discoveries: null candidates, DPO at 1.5x and 0.7x its beta (the nulls that matter: they
train differently from DPO in every digit), then DPO written other ways (softplus, -log sigmoid,
log1p(exp), and DPO's own code under another name: these train almost bitwise as DPO does), are
confirmed against DPO as a campaign's K leaders would be (lossearch.search.confirm: fresh seeds,
paired runs, Holm over the K), once per seed set. Each is the same loss as DPO, so every
"confirmed discovery" is a false one; the share of repeats that declare any is the protocol's
family-wise false discovery rate. Target: at most 5%. The campaign's selection needs no running
here: the confirmation seeds are fresh, so for candidates truly equal to DPO the K that a search
would have picked (by their noise on other seeds) are, on the confirmation seeds, any K nulls.

Power: a planted real difference, a seed loss known to beat DPO by a wide margin on a task
(`--planted apo_zero --planted-task sort`), is confirmed against DPO the same way; the share of
repeats that confirm it is the power. Target: at least 80%.

Every run is the real finetune tier at the chosen budget. Usage:

    python benchmarks/false_discovery.py --repeats 10 --seeds 5 --budget quick
    python benchmarks/false_discovery.py --only power --repeats 10
"""

from __future__ import annotations

import argparse
import json
import time

from lossearch.evaluation.finetune.device import resolve_device, resolve_precision
from lossearch.evaluation.tasks.load import load_task
from lossearch.sandbox.local import Sandbox
from lossearch.search.confirm import ConfirmationReport, confirm_files
from lossearch.search.seeds import seed_path

SIGNATURE = ("def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,\n"
             "         beta: float = 0.1):\n"
             "    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - "
             "reference_rejected_logps)\n")
NULLS = {
    # DPO at 1.5x and 0.7x its beta: the same family of losses, trained at other betas, so their runs
    # differ from DPO's in every digit; a fitness read at a matched KL should not tell them apart
    "dpo_beta_x1_5": ('"""DPO at 1.5 times its beta."""\nimport torch.nn.functional as F\n\n\n' + SIGNATURE +
                      "    return -F.logsigmoid(1.5 * beta * margin)\n"),
    "dpo_beta_x0_7": ('"""DPO at 0.7 times its beta."""\nimport torch.nn.functional as F\n\n\n' + SIGNATURE +
                      "    return -F.logsigmoid(0.7 * beta * margin)\n"),
    "dpo_softplus": ('"""DPO as softplus."""\nimport torch.nn.functional as F\n\n\n' + SIGNATURE +
                     "    return F.softplus(-beta * margin)\n"),
    "dpo_log_sigmoid": ('"""DPO as -log(sigmoid)."""\nimport torch\n\n\n' + SIGNATURE +
                        "    return -torch.log(torch.sigmoid(beta * margin))\n"),
    "dpo_log1p_exp": ('"""DPO as log1p(exp(-x))."""\nimport torch\n\n\n' + SIGNATURE +
                      "    return torch.log1p(torch.exp(-beta * margin))\n"),
}


def null_sources(count: int) -> list[tuple[str, str]]:
    sources = list(NULLS.items()) + [("dpo_renamed", seed_path("dpo").read_text(encoding="utf-8"))]
    return sources[:count]


def summarize(report: ConfirmationReport) -> dict:
    return {"seeds": list(report.seeds), "leaders": [
        {"name": leader.candidate, "confirmed": leader.confirmed, "verdict": leader.comparisons[0].verdict,
         "difference": leader.comparisons[0].difference, "p_adjusted": leader.comparisons[0].p_adjusted,
         "test": leader.comparisons[0].test, "collapse": leader.comparisons[0].candidate_collapse_rate}
        for leader in report.leaders]}


def run(kind: str, args: argparse.Namespace, sandbox: Sandbox) -> list[dict]:
    outcomes = []
    for repeat in range(args.repeats):
        started = time.perf_counter()
        if kind == "false discoveries":
            sources, task = null_sources(args.nulls), args.task
        else:
            sources, task = [(args.planted, seed_path(args.planted).read_text(encoding="utf-8"))], args.planted_task
        report = confirm_files(sources, task=task, seeds=args.seeds, budget=args.budget, sandbox=sandbox,
                               seed_set=args.first_seed_set + repeat)
        outcome = summarize(report) | {"seconds": time.perf_counter() - started}
        outcomes.append(outcome)
        print(json.dumps({"kind": kind, "repeat": repeat, **outcome}), flush=True)
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="seed sets the protocol is repeated on")
    parser.add_argument("--seeds", type=int, default=5, help="confirmation seeds per repeat")
    parser.add_argument("--budget", default="quick", help="finetune budget of every run")
    parser.add_argument("--task", default="sentiment", help="task of the null candidates")
    parser.add_argument("--nulls", type=int, default=3, help="null candidates per repeat (the K leaders)")
    parser.add_argument("--planted", default="apo_zero", help="seed loss planted as a real difference")
    parser.add_argument("--planted-task", default="sort", help="task where it beats DPO widely")
    parser.add_argument("--only", choices=("false-discoveries", "power"), default=None)
    parser.add_argument("--first-seed-set", type=int, default=100, help="seed set of the first repeat")
    args = parser.parse_args()
    device = resolve_device(None)
    print(f"device {device}, precision {resolve_precision('auto', device)}, budget {args.budget}, "
          f"{args.seeds} seeds per repeat", flush=True)
    for task in {args.task, args.planted_task}:
        load_task(task)  # built before any clock starts
    results = {}
    with Sandbox() as sandbox:
        if args.only in (None, "false-discoveries"):
            outcomes = run("false discoveries", args, sandbox)
            declared = sum(any(leader["confirmed"] for leader in o["leaders"]) for o in outcomes)
            results["false discoveries"] = (declared, len(outcomes))
        if args.only in (None, "power"):
            outcomes = run("power", args, sandbox)
            confirmed = sum(o["leaders"][0]["confirmed"] for o in outcomes)
            results["power"] = (confirmed, len(outcomes))
    if "false discoveries" in results:
        declared, total = results["false discoveries"]
        print(f"false discoveries: {declared} of {total} repeats declared a confirmed discovery among "
              f"{args.nulls} null candidates = {declared / total:.0%} (target <= 5%)")
    if "power" in results:
        confirmed, total = results["power"]
        print(f"power: {args.planted} confirmed better than DPO on {args.planted_task} in {confirmed} of {total} "
              f"repeats = {confirmed / total:.0%} (target >= 80%)")


if __name__ == "__main__":
    main()
