"""rag.answer.grounding: hand-made answers against hand-made passages.

Each test pairs a case the check must let through with one it must stop (or the other way
round), so a check that always says yes, or always no, fails here.
"""

from __future__ import annotations

import pytest
from langchain_core.documents import Document

from rag.answer.grounding import (
    DONT_SAY,
    check,
    enforce,
    passages_of,
    split_sentences,
    stem,
    terms,
)
from rag.chain import NOTHING_FOUND
from rag.choices import DEFAULT_MIN_SUPPORT
from rag.retrieval import Hit

HANDBOOK = (
    "Expense claims up to EUR 5,000 are approved by your line manager and the Finance Lead, "
    "Ilse Brouwer. Claims above EUR 5,000 also need the CFO, Oluwaseun Adebayo-Hart."
)
ERRORS = (
    "### E-342 — Motor stall detected\n"
    "Severity: Critical. One motor stopped turning; the aircraft lands immediately."
)
PRICES = "Heron QH-640 hybrid VTOL aircraft: list price EUR 34,500. Lead time fourteen weeks."
LEAVE = "Full-time employees receive 27 days of paid annual leave per calendar year."
HOTEL = "Hotels in Zurich may cost up to €1,200 per week for long assignments."
PASSAGES = [HANDBOOK, ERRORS, PRICES, LEAVE, HOTEL]


def test_a_fully_supported_answer_with_its_citation_passes() -> None:
    answer = "Claims up to EUR 5,000 are approved by your line manager and Ilse Brouwer [1]."
    grounding = check(answer, PASSAGES)
    assert grounding.supported and grounding.answered
    [sentence] = grounding.sentences
    assert sentence.cited == (1,) and sentence.checked == (1,)
    assert sentence.support == 1.0 and sentence.missing == ()
    assert {"5000", "Ilse", "Brouwer"} <= set(sentence.facts)


def test_an_invented_answer_is_unsupported() -> None:
    answer = "Travel bookings go through Northbeam Travel, whose CEO is Marta Lindqvist [1]."
    grounding = check(answer, PASSAGES)
    assert not grounding.supported
    [sentence] = grounding.sentences
    assert sentence.support < DEFAULT_MIN_SUPPORT
    assert {"Northbeam", "Marta", "Lindqvist"} <= set(sentence.missing_facts)
    assert enforce(answer, PASSAGES, mode="refuse").text == DONT_SAY


def test_mark_mode_keeps_the_supported_sentence_and_says_what_was_left_out() -> None:
    good = "Full-time employees receive 27 days of paid annual leave [4]."
    invented = "Interns receive 12 extra days of study leave [4]."
    shown = enforce(f"{good} {invented}", PASSAGES, mode="mark")
    assert shown.answered and shown.left_out == 1
    assert shown.text.startswith(good)
    assert invented not in shown.text and "12" not in shown.text
    assert shown.text.endswith("(1 sentence left out: not found in the passages)")
    # The same answer in refuse mode: one bad sentence is enough to refuse.
    refused = enforce(f"{good} {invented}", PASSAGES, mode="refuse")
    assert refused.text == DONT_SAY and not refused.answered


def test_mark_mode_keeps_a_list_a_list() -> None:
    answer = (
        "- Up to EUR 5,000: your line manager and Ilse Brouwer [1].\n"
        "- Above EUR 5,000: also the CFO, Oluwaseun Adebayo-Hart [1].\n"
        "- Above EUR 50,000: the board [1]."
    )
    shown = enforce(answer, PASSAGES)
    assert shown.left_out == 1
    assert shown.text.splitlines()[:2] == answer.splitlines()[:2]
    assert "50,000" not in shown.text


@pytest.mark.parametrize(
    ("wrong", "right"),
    [
        # Most words match; the amount does not.
        (
            "Hotels in Zurich may cost up to €1,500 per week [5].",
            "Hotels in Zurich may cost up to €1,200 per week [5].",
        ),
        # One character off in an error code is another error.
        (
            "E-343 means a motor stall was detected [2].",
            "E-342 means a motor stall was detected [2].",
        ),
        (
            "The Heron QH-641 has a list price of EUR 34,500 [3].",
            "The Heron QH-640 has a list price of EUR 34,500 [3].",
        ),
    ],
)
def test_a_wrong_number_or_identifier_is_unsupported_though_the_words_match(
    wrong: str, right: str
) -> None:
    bad, good = check(wrong, PASSAGES), check(right, PASSAGES)
    assert good.supported
    assert not bad.supported
    [sentence] = bad.sentences
    assert sentence.support >= DEFAULT_MIN_SUPPORT  # the ratio alone would have passed it
    assert sentence.missing_facts


@pytest.mark.parametrize(
    "answer",
    [
        "Hotels in Zurich may cost up to EUR 1200 per week [5].",
        "Hotels in Zurich may cost up to 1 200 euros per week [5].",
        "Claims up to €5000 are approved by the line manager [1].",
        "The list price of the Heron QH640 is 34500 EUR [3].",
        "The lead time is 14 weeks [3].",  # "fourteen" in the passage
    ],
)
def test_number_formats_match(answer: str) -> None:
    assert check(answer, PASSAGES).supported


def test_number_formats_do_not_match_other_numbers() -> None:
    assert not check("The lead time is 15 weeks [3].", PASSAGES).supported
    assert not check("Hotels in Zurich may cost up to EUR 120 per week [5].", PASSAGES).supported


def test_citing_the_wrong_passage_is_caught_and_put_right() -> None:
    # Every word is in [3], none of the facts in [1]: the fact is real, the citation wrong.
    answer = "The Heron QH-640 has a list price of EUR 34,500"
    assert check(f"{answer} [3].", PASSAGES).supported
    wrong = check(f"{answer} [1].", PASSAGES)
    [sentence] = wrong.sentences
    assert sentence.checked == (1,) and sentence.recite == (3,)
    assert "[1]" in sentence.reason and "[3]" in sentence.reason
    assert sentence.shown == f"{answer} [3]."
    shown = enforce(f"{answer} [1].", PASSAGES)
    assert shown.text == f"{answer} [3]." and shown.answered and shown.left_out == 0


def test_a_fact_no_passage_holds_is_not_put_right_but_dropped() -> None:
    wrong = check("The Heron QH-640 has a list price of EUR 36,000 [1].", PASSAGES)
    assert not wrong.supported and wrong.sentences[0].recite == ()


def test_facts_from_two_passages_are_cited_to_both() -> None:
    answer = "Claims above EUR 5,000 need the CFO, and E-342 means a motor stall [4]."
    [sentence] = check(answer, PASSAGES).sentences
    assert sentence.supported and sentence.recite == (1, 2)
    assert sentence.shown.endswith("motor stall [1][2].")


def test_an_uncited_sentence_is_checked_against_all_passages() -> None:
    assert check("The Heron QH-640 has a list price of EUR 34,500.", PASSAGES).supported
    assert not check("The Heron QH-640 has a list price of EUR 36,000.", PASSAGES).supported


def test_citing_a_passage_that_does_not_exist_is_unsupported() -> None:
    assert check("Full-time employees receive 27 days of paid leave [4].", PASSAGES).supported
    grounding = check("Full-time employees receive 27 days of paid leave [9].", PASSAGES)
    assert not grounding.supported
    assert "there are 5 passages" in grounding.sentences[0].reason


@pytest.mark.parametrize("refusal", [DONT_SAY, "The documents don’t say.", NOTHING_FOUND])
def test_a_refusal_is_supported_and_not_an_answer(refusal: str) -> None:
    grounding = check(refusal, PASSAGES)
    assert grounding.supported and grounding.refusal and not grounding.answered
    shown = enforce(refusal, PASSAGES)
    assert shown.text == refusal and not shown.answered


def test_a_refusal_with_a_claim_attached_is_checked_as_a_claim() -> None:
    grounding = check("The documents don't say, but it is probably 45 days [4].", PASSAGES)
    assert not grounding.supported and not grounding.refusal


def test_advice_after_a_refusal_is_part_of_it_but_a_claim_is_not() -> None:
    advice = check("The documents don't say. It may depend on your contract.", PASSAGES)
    assert advice.supported and advice.refusal and not advice.answered
    claim = check("The documents don't say who the CEO is. The CFO is Marta Lindqvist.", PASSAGES)
    assert not claim.supported and claim.answered
    assert enforce(claim.text, PASSAGES).text == DONT_SAY


def test_filler_is_supported_but_never_an_answer() -> None:
    filler = check("Sure! Here is the answer.", PASSAGES)
    assert filler.supported and not filler.answered
    assert enforce("Sure! Here is the answer.", PASSAGES).text == DONT_SAY
    # With a real sentence after it, the answer is answered and shown whole.
    answer = "Sure! Full-time employees receive 27 days of paid annual leave [4]."
    shown = enforce(answer, PASSAGES)
    assert shown.answered and shown.text == answer


def test_when_every_sentence_is_invented_mark_mode_refuses() -> None:
    shown = enforce("Interns get 12 days [4]. The CEO is Marta Lindqvist [1].", PASSAGES)
    assert shown.text == DONT_SAY and not shown.answered and shown.left_out == 2


@pytest.mark.parametrize(
    "variant",
    [
        "The Finance Lead approves expense claims up to EUR 5,000 [1].",
        "The Finance Lead is approving an expense claim up to EUR 5,000 [1].",
        "Expense claim approval up to EUR 5,000: the Finance Lead [1].",
    ],
)
def test_morphological_variants_match(variant: str) -> None:
    # The passage says "claims ... are approved": every word must be found, in some form.
    grounding = check(variant, PASSAGES, min_support=1.0)
    assert grounding.supported
    assert grounding.sentences[0].support == 1.0
    assert stem("approves") == stem("approval") == stem("approved") == stem("approving")


def test_morphological_matching_does_not_make_any_word_match() -> None:
    # Content words that are not in the passage at all, in any form.
    answer = "The Finance Lead rejects refunds for claims up to EUR 5,000 [1]."
    grounding = check(answer, PASSAGES, min_support=0.8)
    assert not grounding.supported
    assert {"rejects", "refunds"} <= set(grounding.sentences[0].missing)


def test_the_threshold_is_a_parameter() -> None:
    # Five of its seven content words are in [4] ("bonus" and "vouchers" are not): 71 %.
    answer = "Full-time employees receive 27 bonus vouchers [4]."
    assert check(answer, PASSAGES, min_support=0.5).supported
    assert not check(answer, PASSAGES, min_support=0.8).supported


def test_sentences_keep_their_citations() -> None:
    text = "Refunds take 14 days. [1] Claims need approval [2][3].\nE.g. this one [4]\n[5]"
    assert [s.text for s in split_sentences(text)] == [
        "Refunds take 14 days. [1]",
        "Claims need approval [2][3].",
        "E.g. this one [4]\n[5]",
    ]
    # Decimal points, abbreviations and a lower-case continuation do not end a sentence.
    assert len(split_sentences("It weighs 2.4 kg, e.g. with Quillmoor B.V. in the box.")) == 1


def test_terms_keep_identifiers_numbers_and_names() -> None:
    found = {t.text: t.kind for t in terms("Ilse Brouwer approves E-342 claims of €1,200 [1].")}
    assert found == {
        "Ilse": "name",
        "Brouwer": "name",
        "approves": "word",
        "E-342": "id",
        "claims": "word",
        "eur": "word",
        "1200": "number",
    }
    # A sentence's first word is not a name for being capitalised; "one" is not a fact.
    assert {t.kind for t in terms("Refunds take one week.")} == {"word"}


def test_passages_of_hits_include_the_source_label() -> None:
    hit = Hit(Document(page_content=LEAVE, metadata={"source": "handbook.pdf", "page": 2}), 0.9)
    [text] = passages_of([hit])
    assert text == f"handbook.pdf, page 2\n{LEAVE}"
    assert check("Handbook page 2 says full-time staff get 27 days [1].", [text]).supported


def test_an_unknown_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="refuse"):
        enforce(DONT_SAY, PASSAGES, mode="drop")  # type: ignore[arg-type]


def test_the_questions_numbers_are_given_but_not_its_names() -> None:
    question = "Who approves an expense claim of EUR 1,300?"
    answer = "A claim of EUR 1,300 is approved by your line manager and Ilse Brouwer [1]."
    assert not check(answer, PASSAGES).supported  # 1,300 is in no passage
    assert check(answer, PASSAGES, question=question).supported
    # A name from the question is not evidence: the passage must hold it.
    invented = "The Albatross is approved by your line manager and Ilse Brouwer [1]."
    asked = "Who approves the Albatross?"
    assert not check(invented, PASSAGES, question=asked).supported
