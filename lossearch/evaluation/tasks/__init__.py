"""Tasks for the finetune tier (DESIGN §4): synthetic worlds, base models, oracles and pairs.

    catalog.py    the four tasks and their worlds: oracles, labels, KL budgets (no torch)
    text.py       the worlds' text generators and vocabularies
    load.py       load_task, load_user_task, task_summaries: artifacts built and cached on first use
    data.py       PairSet and TaskData: what training and scoring read, in memory
    build.py      building a world's base model and a task's pairs (cache.py keeps them)
    user.py       a user's own model folder and JSONL pairs as a task
    lm.py         causal-LM helpers both sides use (batches, log-probs, sampling, parameters)
    llama.py      the compact Llama the tasks' models run on
    labels.py     Bradley-Terry labelling
    tokenizer.py  the word-level tokenizers, built in code

A `TaskData` is everything the finetune tier needs, in memory: the base model's
config and parameter file (what a sandbox child starts from), the training pairs
with their cached reference log-probs, held-out prompts and pairs, and the trusted
oracle the parent scores with.
"""
