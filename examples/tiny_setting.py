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


def write_setting(folder: Path, pairs: int = 200, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = ["<pad>", "<bos>", "<eos>", "<unk>"] + TOPICS + POLITE + RUDE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocabulary), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
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
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/tiny_setting.py FOLDER")
    write_setting(Path(sys.argv[1]))
    print(f"wrote {sys.argv[1]}/model, {sys.argv[1]}/pairs.jsonl and {sys.argv[1]}/reward.py")
