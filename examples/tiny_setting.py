"""Write a stand-in for your own setting: a tiny random Llama folder, a JSONL file of pairs and a reward.

    python examples/tiny_setting.py my_setting
    lossearch run --name mine --model my_setting/model --dataset my_setting/pairs.jsonl \\
        --reward my_setting/reward.py:polite

Nothing is downloaded: the model is initialized at random and saved with `save_pretrained`, its
tokenizer is word-level over a small vocabulary, and the pairs prefer polite answers to rude ones.
Replace the folder and file with your own model and data; the command stays the same.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lossearch.evaluation.tasks.tokenizer import build_tokenizer

POLITE = "please thanks kindly sure gladly".split()
RUDE = "no never go away stop".split()
TOPICS = "the cat dog bird sat ran on a mat rug tree".split()
REWARD = '''POLITE = set("please thanks kindly sure gladly".split())


def polite(prompt: str, response: str) -> float:
    """Share of the response's words that are polite (your reward: any Python, run in lossearch's process)."""
    words = response.split()
    return sum(word in POLITE for word in words) / max(1, len(words))
'''


SIZES = {"tiny": (32, 2), "small": (512, 8)}
"""Width and depth: `tiny` has 20 thousand parameters (a CPU campaign in minutes), `small` 19 million
(for a GPU: benchmarks/gpu_check.sh)."""


def write_setting(folder: Path, pairs: int = 200, seed: int = 0, size: str = "tiny") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = ["<pad>", "<bos>", "<eos>", "<unk>"] + TOPICS + POLITE + RUDE
    torch.manual_seed(seed)
    hidden, layers = SIZES[size]
    config = LlamaConfig(vocab_size=len(vocabulary), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder / "model")
    build_tokenizer(vocabulary).save_pretrained(folder / "model")
    draw = random.Random(seed)
    with open(folder / "pairs.jsonl", "w") as out:
        for _ in range(pairs):
            prompt = " ".join(draw.choices(TOPICS, k=3))
            chosen = " ".join(draw.choices(POLITE + TOPICS, k=draw.randint(2, 6)))
            rejected = " ".join(draw.choices(RUDE + TOPICS, k=draw.randint(2, 6)))
            out.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    (folder / "reward.py").write_text(REWARD)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] not in SIZES):
        sys.exit(f"usage: python examples/tiny_setting.py FOLDER [{'|'.join(SIZES)}]")
    write_setting(Path(sys.argv[1]), size=sys.argv[2] if len(sys.argv) == 3 else "tiny")
    print(f"wrote {sys.argv[1]}/model, {sys.argv[1]}/pairs.jsonl and {sys.argv[1]}/reward.py")
