"""The synthetic text worlds: generators of their own corpus and the oracle programs that score it.

Two worlds back the four tasks of DESIGN §4:

    sentiment   toy movie reviews. A prompt is a genre and the review's first clause
                ("horror : plot was dull ."); the response continues it with one to three
                clauses ("acting was very good . ending was not bad ."). Each review has a
                latent mood, so the base model learns reviews of every tone: mixed quality.
                `sentiment`, `length` and `noisy` all live here.
    sort        "sort 3 1 4 :" answered by "1 3 4": the corpus mixes right answers with near
                misses (a swap, a wrong digit, a dropped digit, the unsorted copy).

A world is words, not token ids: the vocabulary is a fixed list in code, the tokenizer
(lossearch.evaluation.tasks.tokenizer) maps one word to one id, and every oracle reads words. So the
oracle needs no tokenizer file, and the sandbox child (online mode) can label pairs with it.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")

# -----------------------------------------------------------------------------
# sentiment: toy movie reviews

# genre -> mean of the review's latent mood (logit of "a clause is positive")
GENRES = {"comedy": 1.0, "romance": 0.6, "musical": 0.4, "documentary": 0.2,
          "drama": -0.2, "western": -0.4, "thriller": -0.6, "horror": -1.0}
NOUNS = ("movie", "film", "plot", "acting", "story", "script", "cast", "ending", "music", "pacing",
         "dialogue", "direction")
VERBS = ("was", "is", "felt", "seemed")
INTENSIFIERS = ("very", "really", "truly")
POSITIVE = ("good", "great", "wonderful", "brilliant", "superb", "charming", "moving", "funny", "gripping",
            "beautiful")
NEGATIVE = ("bad", "awful", "boring", "dull", "terrible", "weak", "clumsy", "silly", "tedious", "bland")
NEUTRAL = ("long", "short", "loud", "quiet", "slow", "simple")
SENTIMENT_VOCAB = (SPECIAL_TOKENS + (":", ".", "not") + tuple(GENRES) + NOUNS + VERBS + INTENSIFIERS
                   + POSITIVE + NEGATIVE + NEUTRAL)

# clause score by (adjective polarity, form): the reward's scale is set here. A plain positive
# clause is worth 0.6 and only an intensified one reaches 1, so the top of the scale needs more
# than flipping the review's tone: the reward keeps rising over several nats of KL.
CLAUSE_SCORES = {(1, "plain"): 0.6, (1, "intense"): 1.0, (1, "negated"): -0.3,
                 (-1, "plain"): -0.6, (-1, "intense"): -1.0, (-1, "negated"): 0.3,
                 (0, "plain"): 0.0, (0, "intense"): 0.0, (0, "negated"): 0.0}
MALFORMED_CLAUSE = -1.0
POLARITY = {**{word: 1 for word in POSITIVE}, **{word: -1 for word in NEGATIVE}, **{word: 0 for word in NEUTRAL}}


def sample_clause(rng: random.Random, mood: float) -> list[str]:
    """One clause, "noun verb [very|not] adjective .", whose tone follows `mood` (P(positive))."""
    draw = rng.random()
    tone = 1 if draw < 0.85 * mood else (-1 if draw < 0.85 else 0)
    form = rng.choices(("plain", "intense", "negated"), weights=(0.55, 0.3, 0.15))[0]
    if tone == 0:
        adjective = rng.choice(NEUTRAL)
        form = "plain"
    elif form == "negated":  # "not bad" says something good: negate an adjective of the other tone
        adjective = rng.choice(NEGATIVE if tone > 0 else POSITIVE)
    else:
        adjective = rng.choice(POSITIVE if tone > 0 else NEGATIVE)
    middle = {"plain": [], "intense": [rng.choice(INTENSIFIERS)], "negated": ["not"]}[form]
    return [rng.choice(NOUNS), rng.choice(VERBS), *middle, adjective, "."]


def sample_review(rng: random.Random) -> tuple[list[str], list[str]]:
    """(prompt words, response words) of one review from the corpus distribution."""
    genre = rng.choice(tuple(GENRES))
    mood = 1 / (1 + math.exp(-(GENRES[genre] + rng.gauss(0.0, 1.5))))  # the review's P(positive clause)
    prompt = [genre, ":", *sample_clause(rng, mood)]
    response = [word for _ in range(rng.randint(1, 3)) for word in sample_clause(rng, mood)]
    return prompt, response


def split_clauses(words: Sequence[str]) -> list[list[str]]:
    """The clauses of a response: runs of words ended by "." (a trailing unfinished run counts)."""
    clauses: list[list[str]] = []
    current: list[str] = []
    for word in words:
        if word == ".":
            clauses.append(current)
            current = []
        else:
            current.append(word)
    if current:
        clauses.append(current)
    return clauses


def score_clause(clause: Sequence[str]) -> float:
    """CLAUSE_SCORES of a well-formed clause; MALFORMED_CLAUSE for anything else."""
    if len(clause) < 3 or clause[0] not in NOUNS or clause[1] not in VERBS or clause[-1] not in POLARITY:
        return MALFORMED_CLAUSE
    middle = tuple(clause[2:-1])
    if not middle:
        form = "plain"
    elif middle == ("not",):
        form = "negated"
    elif len(middle) == 1 and middle[0] in INTENSIFIERS:
        form = "intense"
    else:
        return MALFORMED_CLAUSE
    return CLAUSE_SCORES[(POLARITY[clause[-1]], form)]


def sentiment_reward(response: Sequence[str]) -> float:
    """The oracle of `sentiment`: mean clause score in [-1, 1]; an empty review scores -1."""
    clauses = split_clauses(response)
    if not clauses:
        return MALFORMED_CLAUSE
    return sum(score_clause(clause) for clause in clauses) / len(clauses)


def clause_count(response: Sequence[str]) -> int:
    return len(split_clauses(response))


# -----------------------------------------------------------------------------
# sort: verifiable answers

DIGITS = tuple(str(digit) for digit in range(10))
SORT_VOCAB = SPECIAL_TOKENS + ("sort", ":") + DIGITS
SORT_MIN_LENGTH, SORT_MAX_LENGTH = 3, 6
# the corpus's answers: right ones and the near misses a half-trained solver makes
SORT_ANSWER_KINDS = {"correct": 0.45, "swap": 0.2, "wrong_digit": 0.15, "unsorted": 0.1, "dropped": 0.1}


def sample_sort_answer(rng: random.Random, digits: list[str]) -> list[str]:
    """An answer to "sort digits": right with probability 0.45, else one of the near misses."""
    answer = sorted(digits)
    kind = rng.choices(tuple(SORT_ANSWER_KINDS), weights=tuple(SORT_ANSWER_KINDS.values()))[0]
    if kind == "swap":
        index = rng.randrange(len(answer) - 1)
        answer[index], answer[index + 1] = answer[index + 1], answer[index]
    elif kind == "wrong_digit":
        answer[rng.randrange(len(answer))] = rng.choice(DIGITS)
    elif kind == "unsorted":
        answer = list(digits)
    elif kind == "dropped":
        del answer[rng.randrange(len(answer))]
    return answer


def sample_sort_problem(rng: random.Random) -> tuple[list[str], list[str]]:
    """(prompt words, response words): "sort d1 .. dn :" and an answer from the corpus mixture."""
    digits = [rng.choice(DIGITS) for _ in range(rng.randint(SORT_MIN_LENGTH, SORT_MAX_LENGTH))]
    return ["sort", *digits, ":"], sample_sort_answer(rng, digits)


def sort_reward(prompt: Sequence[str], response: Sequence[str]) -> float:
    """The oracle of `sort`: 1 for the sorted digits, else half the share of positions right."""
    digits = [word for word in prompt if word in DIGITS]
    target = sorted(digits)
    if list(response) == target:
        return 1.0
    right = sum(1 for got, want in zip(response, target) if got == want)
    return 0.5 * right / max(len(target), len(response), 1)
