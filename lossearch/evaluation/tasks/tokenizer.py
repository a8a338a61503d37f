"""A word-level Hugging Face fast tokenizer built in code from a world's vocabulary.

One word is one token, so a sequence is short and every oracle can read token ids
back as words. The result is a standard `PreTrainedTokenizerFast`: it saves with
`save_pretrained`, loads with `AutoTokenizer`, and works with TRL.
"""

from __future__ import annotations

from typing import Sequence

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast


def build_tokenizer(vocabulary: Sequence[str]) -> PreTrainedTokenizerFast:
    """A whitespace, word-level tokenizer over `vocabulary` (specials first: pad, bos, eos, unk)."""
    vocab = {word: index for index, word in enumerate(vocabulary)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # a prompt encodes as "<bos> words"; responses are encoded without special tokens
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        clean_up_tokenization_spaces=False)
