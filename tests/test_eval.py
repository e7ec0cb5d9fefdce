import json

import pytest

from mmreason.data.schema import Record
from mmreason.eval import (
    AccuracyReport,
    answer_kind,
    extract_answer_span,
    format_table,
    gold_answer,
    majority_baseline,
    normalize_text,
    parse_answer,
    score_answer,
)

CHOICES = ["red", "blue", "green"]


@pytest.mark.parametrize(
    "text, span",
    [
        ("<think> the red circle is at the left . </think> <answer> 3 </answer>", "3"),
        ("<answer> yes </answer>", "yes"),
        ("yes", "yes"),
        ("<answer> 1 </answer> <answer> 2 </answer>", "2"),
        ("<think> two objects </think> <answer> 2", "2"),  # truncated: no closing tag
        ("< answer > no < / answer >", "no"),
        ("<answer> the answer is ( b ) . </answer>", "( b )"),
        ("the answer is ( b ) . because it is blue", "( b )"),
        ("<think> so the answer is 2 </think>", "2"),
        ("<think> count them </think> 4 </s>", "4"),
        ("<think> there is a red", None),  # rationale never finished
        ("<think> the answer is 2 , then", None),
        ("<answer> </answer>", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_extract_answer_span(text, span):
    assert extract_answer_span(text) == span


def test_normalize_text():
    assert normalize_text("The small, blue Circle!") == "small blue circle"
    assert normalize_text("  an   apple . ") == "apple"
    assert normalize_text("3.5 m.") == "3.5 m"
    assert normalize_text("1,000 man's") == "1000 mans"
    assert normalize_text("A") == "a"  # a lone letter is an answer, not an article


@pytest.mark.parametrize(
    "text, kind, choices, parsed",
    [
        ("<answer> yes </answer>", "yesno", None, "yes"),
        ("No , there is not", "yesno", None, "no"),
        ("<answer> maybe </answer>", "yesno", None, None),
        ("<answer> three </answer>", "number", None, "3"),
        ("there are 12 objects", "number", None, "12"),
        ("2.50", "number", None, "2.5"),
        ("4.0", "number", None, "4"),
        ("twenty", "number", None, "20"),
        ("<answer> many </answer>", "number", None, None),
        ("(B)", "choice", None, "B"),
        ("B", "choice", None, "B"),
        ("b", "choice", None, "B"),
        ("option b", "choice", None, "B"),
        ("the answer is ( b ) .", "choice", CHOICES, "B"),
        ("c ) green", "choice", CHOICES, "C"),
        ("<answer> Green </answer>", "choice", CHOICES, "C"),
        ("<answer> (e) </answer>", "choice", CHOICES, None),  # past the last choice
        ("<answer> purple </answer>", "choice", CHOICES, None),
        ("<answer> The small blue circle . </answer>", "text", None, "small blue circle"),
        ("<answer> ? </answer>", "text", None, None),
        ("<think> unfinished", "text", None, None),
    ],
)
def test_parse_answer(text, kind, choices, parsed):
    assert parse_answer(text, kind, choices) == parsed


def test_parse_answer_rejects_unknown_kind():
    with pytest.raises(ValueError, match="answer kind"):
        parse_answer("3", "count")


def test_answer_kind():
    assert answer_kind(Record("q?", "B", task="mcq", choices=CHOICES)) == "choice"
    assert answer_kind(Record("q?", "Yes")) == "yesno"
    assert answer_kind(Record("q?", "3")) == "number"
    assert answer_kind({"question": "q?", "answer": "three"}) == "number"
    assert answer_kind(Record("q?", "the small blue circle")) == "text"


def test_score_answer():
    assert score_answer("<answer> 3.0000001 </answer>", Record("q?", "3")) == (True, "3.0000001")
    assert score_answer("<answer> 4 </answer>", Record("q?", "3")) == (False, "4")
    assert score_answer("<answer> (c) </answer>", Record("q?", "green", choices=CHOICES)) == (True, "C")
    assert score_answer("blue", Record("q?", "B", choices=CHOICES)) == (True, "B")
    assert score_answer("<think> hmm", Record("q?", "yes")) == (False, None)
    assert score_answer("the small blue circle .", Record("q?", "The small blue circle")) == (
        True, "small blue circle",
    )


def test_unreadable_gold_is_an_error():
    with pytest.raises(ValueError, match="cannot be read"):
        gold_answer(Record("q?", "purple", choices=CHOICES))


LETTERS = ["B", "A", "C"]  # choices whose texts are letters: the letter a model writes names the option


@pytest.mark.parametrize(
    "text, kind, choices, parsed",
    [
        # negated or hedged: unreadable, or the alternative the output asserts
        ("not yes", "yesno", None, None),
        ("<answer> no answer </answer>", "yesno", None, None),
        ("I don't know", "yesno", None, None),
        ("i don ' t know", "yesno", None, None),  # word-level decode
        ("yes or no", "yesno", None, None),
        ("Maybe the answer is yes.", "yesno", None, None),  # hedge in the sentence leading to the marker
        ("It is not yes but no", "yesno", None, "no"),
        ("No, there is no red or blue circle", "yesno", None, "no"),  # "or" between non-candidates
        ("No, I could not find one", "yesno", None, "no"),
        ("yes because there is a red circle .", "yesno", None, "yes"),
        ("maybe 3", "number", None, None),
        ("one or two", "number", None, None),
        ("3-4", "number", None, None),  # a range
        ("between 3 and 5", "number", None, None),
        ("not 3 but 4", "number", None, "4"),
        ("either A or B", "choice", CHOICES, None),
        ("(B) unlikely", "choice", ["likely", "unlikely"], "B"),  # an option worded as a hedge
        ("The answer is (A) not sure", "choice", ["not sure", "sure"], "A"),
        ("(B) unlikely, I guess", "choice", ["likely", "unlikely"], None),  # the model hedging
        ("(A) or (B)", "choice", CHOICES, None),
        ("the answer is A and B", "choice", CHOICES, None),
        ("The answer is probably B", "choice", CHOICES, None),
        ("I'm not sure, but the answer is B", "choice", CHOICES, None),
        ("The answer is not A", "choice", CHOICES, None),
        ("The answer is not (A) but (B)", "choice", CHOICES, "B"),
        ("It's not A, it's B", "choice", CHOICES, "B"),
        ("A is wrong, B is correct", "choice", CHOICES, "B"),
        ("not blue but green", "choice", CHOICES, "C"),
        ("no answer", "choice", ["yes", "no"], None),
        ("no", "choice", ["yes", "no"], "B"),
        ("<answer> not sure </answer>", "choice", ["yes", "no", "not sure"], "C"),  # a choice's text wins
        # answer forms
        ("Answer: B", "choice", CHOICES, "B"),
        ("ANSWER IS B", "choice", CHOICES, "B"),
        ("The answer is B because it might be blue.", "choice", CHOICES, "B"),  # the reason is no hedge
        ("<answer> B because it is blue </answer>", "choice", CHOICES, "B"),
        ("B, blue", "choice", CHOICES, "B"),
        ("B, green", "choice", CHOICES, None),  # letter and text disagree
        ("B, blue", "choice", None, "B"),
        ("Final answer: (C)", "choice", CHOICES, "C"),
        ("\uff22", "choice", CHOICES, "B"),  # full-width B
        ("<answer> \uff08\uff43\uff09 </answer>", "choice", CHOICES, "C"),  # full-width (c)
        ("B is correct", "choice", CHOICES, "B"),
        ("I think it's B", "choice", CHOICES, "B"),
        ("a blue circle", "choice", CHOICES, None),  # an article is no option letter
        ("<think> so the answer is 2 . </think> <answer> 3 </answer>", "number", None, "3"),
        # numbers
        ("it is -3 degrees", "number", None, "-3"),
        ("<answer> - 3 </answer>", "number", None, "-3"),
        ("\u22123", "number", None, "-3"),  # the minus sign
        ("minus three", "number", None, "-3"),
        ("item-3", "number", None, "3"),  # a hyphen glued to a word is no minus
        ("1e3", "number", None, "1000"),
        ("2.5e-1", "number", None, "0.25"),
        (".1", "number", None, "0.1"),
        ("\u00bd", "number", None, "0.5"),  # one half
        ("1\u00bd", "number", None, "1.5"),
        ("\u00be", "number", None, "0.75"),
        ("3rd", "number", None, "3"),
        ("the 21st", "number", None, "21"),
        ("twenty-one", "number", None, "21"),
        ("twenty one", "number", None, "21"),
        ("one hundred and five", "number", None, "105"),
        ("a thousand", "number", None, "1000"),
        ("twenty-first", "number", None, None),  # word ordinals are not read
        ("1,000", "number", None, "1000"),
        ("<answer> no </answer>", "number", None, None),
        # choice texts that are letters
        ("B", "choice", LETTERS, "B"),
        ("the answer is ( a ) .", "choice", LETTERS, "A"),
        ("<answer> option c </answer>", "choice", LETTERS, "C"),
        # text answers keep the whole span, but not a hedged one
        ("the answer is left because it is .", "text", None, "left"),
        ("Perhaps the answer is left", "text", None, None),
    ],
)
def test_parse_adversarial_outputs(text, kind, choices, parsed):
    assert parse_answer(text, kind, choices) == parsed


@pytest.mark.parametrize(
    "text, span",
    [
        ("Answer: B", "B"),
        ("ANSWER IS B", "B"),
        ("the answer is B because it is blue", "B"),
        ("<answer> final answer : ( c ) </answer>", "( c )"),
        ("there is no answer: the image is blank", "there is no answer: the image is blank"),
    ],
)
def test_extract_answer_span_after_markers(text, span):
    assert extract_answer_span(text) == span


def test_gold_answers_of_new_forms():
    assert answer_kind(Record("q?", "twenty-one")) == "number"
    assert gold_answer(Record("q?", "twenty-one")) == "21"
    assert gold_answer(Record("q?", "-3")) == "-3"
    assert gold_answer(Record("q?", "\u00bd")) == "0.5"
    assert answer_kind(Record("q?", "2 apples")) == "text"
    assert gold_answer(Record("q?", "A", choices=LETTERS)) == "A"


@pytest.mark.parametrize(
    "text, record, scored",
    [
        ("not yes", Record("q?", "yes"), (False, None)),
        ("no answer", Record("q?", "no"), (False, None)),
        ("maybe 3", Record("q?", "3"), (False, None)),
        ("twenty-one", Record("q?", "20"), (False, "21")),
        ("twenty-one", Record("q?", "21"), (True, "21")),
        ("-3", Record("q?", "3"), (False, "-3")),
        ("\u00bd", Record("q?", "0.5"), (True, "0.5")),
        ("The answer is not (A) but (B)", Record("q?", "B", choices=CHOICES), (True, "B")),
        ("The answer is not (A) but (B)", Record("q?", "red", choices=CHOICES), (False, "B")),
        ("Answer: C", Record("q?", "green", choices=CHOICES), (True, "C")),
        ("<answer> B </answer>", Record("q?", "B", choices=LETTERS), (True, "B")),
        ("<answer> A </answer>", Record("q?", "B", choices=LETTERS), (False, "A")),
    ],
)
def test_score_adversarial_outputs(text, record, scored):
    assert score_answer(text, record) == scored


RECORDS = [
    Record("Is there a red circle?", "yes", task="exist"),
    Record("Is there a blue square?", "no", task="exist"),
    Record("How many circles?", "3", task="count"),
    Record("How many squares?", "2", task="count"),
    Record("What colour is the circle?", "B", task="mcq", choices=CHOICES),
    Record("What colour is the square?", "green", task="mcq", choices=CHOICES),
]
PREDICTIONS = [
    "<think> a red circle is at the left . </think> <answer> yes </answer>",  # right
    "<think> there is a blue",  # truncated: parse failure
    "<answer> three </answer>",  # right
    "<answer> 4 </answer>",  # wrong, parsed
    "the answer is ( b ) .",  # right
    "option c",  # right
]


def test_report_numbers():
    out = AccuracyReport().add_many(PREDICTIONS, RECORDS).to_dict()
    assert out["n"] == 6
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["parse_failure_rate"] == pytest.approx(1 / 6)
    assert out["per_task"] == {
        "count": {"n": 2, "accuracy": 0.5, "parse_failures": 0},
        "exist": {"n": 2, "accuracy": 0.5, "parse_failures": 1},
        "mcq": {"n": 2, "accuracy": 1.0, "parse_failures": 0},
    }
    assert "majority_baseline" not in out


def test_add_many_rejects_length_mismatch():
    with pytest.raises(ValueError, match="one generation per record"):
        AccuracyReport().add_many(PREDICTIONS[:2], RECORDS)


def test_merge_equals_report_on_union():
    whole = AccuracyReport().add_many(PREDICTIONS, RECORDS)
    rank0 = AccuracyReport().add_many(PREDICTIONS[::2], RECORDS[::2])
    rank1 = AccuracyReport().add_many(PREDICTIONS[1::2], RECORDS[1::2])
    gathered = [json.loads(json.dumps(r.state())) for r in (rank0, rank1)]
    merged = AccuracyReport.from_state(gathered[0]).merge(AccuracyReport.from_state(gathered[1]))
    assert merged.state() == whole.state()
    assert merged.to_dict() == whole.to_dict()


def test_majority_baseline():
    records = [
        Record("q?", "yes", task="exist"),
        Record("q?", "Yes", task="exist"),
        Record("q?", "no", task="exist"),
        Record("q?", "2", task="count"),
        Record("q?", "two", task="count"),
        Record("q?", "3", task="count"),
        Record("q?", "4", task="count"),
    ]
    assert majority_baseline(records) == pytest.approx({"count": 0.5, "exist": 2 / 3, "all": 4 / 7})


def test_format_table():
    report = AccuracyReport().add_many(PREDICTIONS, RECORDS)
    baseline = {"exist": 0.5, "count": 0.25, "all": 0.4}
    lines = format_table(report, baseline).splitlines()
    assert lines[0] == "| task | n | accuracy % | parse failures % | majority % |"
    assert "| count | 2 | 50.0 | 0.0 | 25.0 |" in lines
    assert "| exist | 2 | 50.0 | 50.0 | 50.0 |" in lines
    assert "| mcq | 2 | 100.0 | 0.0 | - |" in lines
    assert lines[-1] == "| all | 6 | 66.7 | 16.7 | 40.0 |"
    assert "majority" not in format_table(report)
    assert report.to_dict(baseline)["majority_baseline"] == baseline
