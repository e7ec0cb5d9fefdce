"""`<tor>` placement: exact counts, upstream's even spacing, rejection of short rationales, reproducible random."""

from __future__ import annotations

import random

import pytest

from mmreason.text.tor import PLACEMENTS, TOR_TOKEN, RationaleTooShort, bare_tor, insert_tor

LETTERS = "a b c d e f g h i j k l m n o p q r s t u v w x y z".split()


def words(count: int) -> str:
    return " ".join(f"w{i}" for i in range(count))


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("length", [9, 10, 11, 17, 23, 40])
@pytest.mark.parametrize("n", [2, 3, 4, 10])
def test_exactly_n_tokens_and_the_words_kept_in_order(placement, length, n):
    if placement == "even" and length < 3 * (n - 1):
        pytest.skip("too short for even placement; covered by the rejection tests")
    text = insert_tor(words(length), n, placement, rng=random.Random(length * n))
    tokens = text.split(" ")
    assert tokens.count(TOR_TOKEN) == n
    assert [t for t in tokens if t != TOR_TOKEN] == words(length).split()


@pytest.mark.parametrize(("count", "n", "expected"), [
    (10, 3, "<tor> a b c d e <tor> f g h i j <tor>"),
    (11, 3, "<tor> a b c d e <tor> f g h i j k <tor>"),  # upstream adds a 4th before k
    (10, 4, "<tor> a b c <tor> d e f <tor> g h i j <tor>"),  # upstream adds a 5th before j
    (11, 4, "<tor> a b c <tor> d e f <tor> g h i j k <tor>"),  # upstream adds a 5th before j
])
def test_even_spacing_matches_hand_written(count, n, expected):
    assert insert_tor(" ".join(LETTERS[:count]), n) == expected


def test_start_and_end_and_whitespace_normalised():
    assert insert_tor("  a\tb\n c ", 2, "start") == "<tor> <tor> a b c"
    assert insert_tor("  a\tb\n c ", 2, "end") == "a b c <tor> <tor>"


@pytest.mark.parametrize(("count", "n"), [(8, 4), (5, 3), (0, 2), (26, 10)])
def test_even_rejects_gap_of_two_or_less(count, n):
    with pytest.raises(RationaleTooShort, match=rf"{count} words.*{n} <tor>.*at least {3 * (n - 1)} words"):
        insert_tor(" ".join(LETTERS[:count]), n)


def test_even_accepts_the_minimum_length():
    assert insert_tor(" ".join(LETTERS[:9]), 4) == "<tor> a b c <tor> d e f <tor> g h i <tor>"


def test_random_is_reproducible_and_depends_on_the_seed():
    rationale = words(30)
    assert insert_tor(rationale, 10, "random", random.Random(7)) == insert_tor(rationale, 10, "random",
                                                                               random.Random(7))
    assert len({insert_tor(rationale, 10, "random", random.Random(seed)) for seed in range(5)}) > 1


def test_random_on_an_empty_rationale_is_bare():
    assert insert_tor("", 3, "random", random.Random(0)) == bare_tor(3)


def test_bare_tor():
    assert bare_tor(1) == "<tor>"
    assert bare_tor(3) == "<tor> <tor> <tor>"


@pytest.mark.parametrize(("call", "match"), [
    (lambda: insert_tor(words(20), 3, "middle"), "even, start, end, random"),
    (lambda: insert_tor(words(20), 0, "start"), "must be >= 1"),
    (lambda: insert_tor(words(20), 1), "needs n >= 2"),
    (lambda: insert_tor(words(20), 3, "random"), "needs rng"),
    (lambda: bare_tor(0), "must be >= 1"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match) as error:
        call()
    assert error.type is ValueError  # not RationaleTooShort: these are caller errors, not data to skip
