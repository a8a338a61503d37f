"""DPO-Shift, linear schedule (Yang et al., 2025): DPO-Shift whose lambda moves linearly over training.

The loss is DPO-Shift's, -log sigmoid(beta * (r_c - lambda * r_r)) (seeds/dpo_shift.py), with lambda set
at each step by the authors' scheduled strategies (Meaquadddd/DPO-Shift, scripts/dposhift_trainer.py,
DPOShiftTrainer.dpo_loss; dpo_lambda_min/_max in scripts/dposhift_config.py), with
step = lr_scheduler._step_count - 1 (0 at the first optimizer step) and max_steps the run's:
    "increase_linear": lambda = lambda_min + (lambda_max - lambda_min) * step / max_steps
    "decrease_linear": lambda = lambda_max - (lambda_max - lambda_min) * step / max_steps
Their step / max_steps is the contract's `progress` (step / steps: 0 at the first step, (steps - 1) / steps
at the last, as theirs). The two strategies are one line from `rejected_scale_start` to
`rejected_scale_end`: increase_linear is start lambda_min, end lambda_max; decrease_linear the reverse;
start = end is their "fixed" strategy (seeds/dpo_shift.py). Defaults: increase_linear from 0.75 to 1.0,
the widest of the schedules their run.sh trains (lambda_min 0.75, 0.85 or 0.95 against lambda_max 1.0, for
both strategies; their config's defaults, lambda_min 0.5 and lambda_max 1.0, are not among them). Their released
Llama-3-8B model's 0.95 to 1.0 has lambda 0.975 at the fingerprint grid's progress 0.5: DPO's print
within 0.014, a twin of dpo and dpo_shift.
"""
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, progress,
         beta: float = 0.1, rejected_scale_start: float = 0.75, rejected_scale_end: float = 1.0):
    # () this step's lambda: the line from start to end, read at the share of training done
    rejected_scale = rejected_scale_start + (rejected_scale_end - rejected_scale_start) * progress
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    return -F.logsigmoid(beta * (chosen_logratios - rejected_scale * rejected_logratios))
