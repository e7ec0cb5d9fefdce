"""Where Meteor puts its `<tor>` (traversal-of-rationale) tokens in a rationale.

During Meteor's first training step the Mamba embedder reads the rationale with
N `<tor>` tokens spread through it; the backbone must regenerate the rationale
segment after each one from the Mamba states at those positions, so each
`<tor>` summarises the text before it. Upstream spreads them evenly
(``even``); the paper's placement ablation also compares ``start``, ``end`` and
``random``, which are kept here so that ablation can be rerun. At inference no
rationale exists and Mamba sees only the bare tokens (`bare_tor`).
"""

from __future__ import annotations

import random

TOR_TOKEN = "<tor>"
PLACEMENTS = ("even", "start", "end", "random")


class RationaleTooShort(ValueError):
    """The rationale has too few words to spread the `<tor>` tokens (upstream rejects such samples)."""


def _check_n(n: int) -> None:
    if n < 1:
        raise ValueError(f"n (number of {TOR_TOKEN} tokens) must be >= 1, got {n}")


def _even_boundaries(num_words: int, n: int) -> list[int]:
    """Upstream Meteor's spacing: before words 0, gap, …, (n−2)·gap and at the end, with gap = len // (n−1)."""
    if n < 2:
        raise ValueError(f"placement 'even' needs n >= 2 (one {TOR_TOKEN} at each end), got {n}")
    gap = num_words // (n - 1)
    if gap <= 2:
        raise RationaleTooShort(f"rationale has {num_words} words; {n} {TOR_TOKEN} tokens placed evenly need "
                                f"at least {3 * (n - 1)} words (gap = words // (n - 1) must exceed 2)")
    return [i * gap for i in range(n - 1)] + [num_words]


def insert_tor(rationale: str, n: int, placement: str = "even", rng: random.Random | None = None) -> str:
    """The rationale's whitespace-split words joined by single spaces, with exactly n `<tor>` words inserted.

    ``even`` follows upstream Meteor: gap = len(words) // (n − 1), one `<tor>` before
    words 0, gap, …, (n−2)·gap and one after the last word; it raises
    `RationaleTooShort` when gap ≤ 2. Upstream inserts one before every multiple of
    gap, which gives more than n tokens whenever len(words) is not a multiple of gap;
    here there are always exactly n. ``start`` / ``end`` put all n before / after the
    rationale; ``random`` draws n word boundaries (0..len(words), repeats allowed)
    from `rng`, which it requires.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; valid placements: {', '.join(PLACEMENTS)}")
    _check_n(n)
    words = rationale.split()
    if placement == "even":
        boundaries = _even_boundaries(len(words), n)
    elif placement == "start":
        boundaries = [0] * n
    elif placement == "end":
        boundaries = [len(words)] * n
    else:
        if rng is None:
            raise ValueError("placement 'random' needs rng (a random.Random) for reproducible draws")
        boundaries = sorted(rng.randint(0, len(words)) for _ in range(n))
    out, next_word = [], 0
    for boundary in boundaries:
        out += words[next_word:boundary]
        out.append(TOR_TOKEN)
        next_word = boundary
    return " ".join(out + words[next_word:])


def bare_tor(n: int) -> str:
    """n `<tor>` tokens joined by spaces: what Mamba reads in place of a rationale at inference."""
    _check_n(n)
    return " ".join([TOR_TOKEN] * n)
