"""The finetune tier (DESIGN §3-4): train a small causal LM with a candidate loss, score it.

One candidate evaluation is an Optuna search over beta (lossearch.evaluation.tuning); each
(beta, seed) run is one sandbox job:

    parent                                      sandbox child (lossearch.sandbox.jobs.finetune_job)
    ------                                      -------------------------------------------
    copies in base parameters + pairs file  ->  policy = copy of the base model
                                                for each step: a batch of pairs ->
                                                  policy log-probs (with graph) ->
                                                  candidate loss on detached copies ->
                                                  its input gradients carried back by us ->
                                                  AdamW step
    reads back policy.safetensors           <-  writes the trained parameters
    scores them: samples on held-out prompts,
    oracle reward, exact per-token KL,
    held-out preference accuracy, fitness

The parent never runs candidate code and the child never sees the oracle's held-out
prompts or its score: a candidate can change its score only through its gradients.

The package follows that split, a file a side:

    config.py   budgets, options and the run configuration the parent sends the child (no torch)
    device.py   which device and arithmetic a run uses
    train.py    training: runs in the sandbox child, beside the candidate's code
    score.py    scoring: trusted, runs in the parent
    tier.py     the tier: the parent's side of every run, beta tuning over (beta, seed) runs
"""
