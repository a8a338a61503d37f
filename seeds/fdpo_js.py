"""f-DPO, Jensen-Shannon (Wang et al., 2023): DPO with a JS-divergence regularizer.

For JS, f'(t) = log(2t / (t + 1)) = log 2 + log sig(log t), so each log-ratio
r becomes log sig(r) (the log 2 cancels in the chosen-minus-rejected
difference; TRL adds it to both scores). JS sits between the mode-seeking
reverse KL and the mass-covering forward KL.
Equals TRL's `loss_type="sigmoid"` with `f_divergence_type="js_divergence"`.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    chosen_scores = F.logsigmoid(policy_chosen_logps - reference_chosen_logps)
    rejected_scores = F.logsigmoid(policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * (chosen_scores - rejected_scores))
