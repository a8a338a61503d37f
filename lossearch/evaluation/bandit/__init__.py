"""The bandit tier (DESIGN §3): a tabular softmax policy trained with a candidate loss.

Each prompt has a handful of responses and a response is a single action, so
log pi(y|x) is one entry of a log-softmax and every score is exact: no sampling,
no estimator. A task is

    reference_logits (P, R)   the frozen reference (SFT) policy, of mixed quality
    rewards          (P, R)   the oracle reward the scores use
    lengths          (P, R)   a length per response, 1..max_length "tokens"
    train pairs      (N,)     prompt / chosen / rejected: two distinct responses drawn
                              from the reference, labelled by a Bradley-Terry draw on
                              the *label* reward (the oracle reward, except in `length`
                              where the labellers like long answers the oracle dislikes)
    held-out pairs   (M,)     uniform response pairs, ordered by the oracle reward

Contract inputs (DESIGN §2): policy_*_logps = log pi(y|x), reference_*_logps the same
under the reference, *_lengths the responses' lengths, *_kl = KL(reference(.|x) || pi(.|x))
of the prompt's distribution (the bandit's one "token position"), beta from the grid.

Scores are exact: `reward` = mean over prompts of E_pi[r], `kl` = KL(pi || pi_ref) averaged
over prompts, `pref_acc` = held-out pairs ordered right by log pi - log pi_ref, and
`fitness` = the reward at the task's KL budget (see score_bandit_grid).

Trusted and untrusted code are split, and the API follows the split:

    sandbox child (runs candidate code)
        task = make_training_task(name, seed, config)       # no oracle reward in reach
        logits_by_beta = train_bandit_grid(loss_fn, task, seed, config)
        -> {str(beta): logits.tolist()} back to the parent as JSON
    parent (never runs candidate code)
        result = score_bandit_grid(make_bandit_task(name, seed, config), logits_by_beta)

make_bandit_task is deterministic, so both sides build the same task from the seed, and the
child can change its score only through the logits it hands back: through the gradients its
loss produced. `train_bandit` trains one beta; `evaluate_bandit` does both halves in one
process, for trusted losses only (seeds, tests, benchmarks).

The candidate never sees the autograd graph of the policy either: its inputs are fresh
leaf tensors whose gradients we carry back to the logits, so no `.grad_fn` leads it
to the paramete

The package follows the split, a file a side:

    task.py    building a task (trusted, deterministic given the seed; both sides build it)
    train.py   training: runs in the sandbox child, calls the candidate loss
    score.py   scoring: trusted, runs in the parent
"""
