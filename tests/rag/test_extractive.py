"""rag.answer.extractive: the best sentence of hand-made passages, quoted with its number."""

from __future__ import annotations

import time

import pytest

from rag.answer.extractive import candidates, extract
from rag.answer.grounding import check
from rag.choices import DEFAULT_MIN_QUOTE_SCORE

LEAVE = (
    "Employee Handbook > Time off\n\n"
    "Leave is requested in PeopleHub and approved by your manager. Full-time employees "
    "receive 27 days of paid annual leave per calendar year, in addition to public "
    "holidays. Part-time employees receive leave in proportion to their hours."
)
ERRORS = (
    "FlightCore Error Code Reference > Motor errors (E-3xx)\n\n"
    "### E-318 — Motor temperature high\n"
    "**Severity:** Caution.\n"
    "A motor is running hot. Reduce the payload.\n\n"
    "### E-342 — Motor stall detected\n"
    "**Severity:** Critical.\n"
    "One motor stopped turning. The aircraft lands immediately."
)
TRAVEL = (
    "Employee Handbook > Business travel\n\n"
    "All business travel is booked through Northbeam Travel. The travel insurance policy "
    "number is QM-TRV-88231. Claims go to the Finance Lead, Ilse Brouwer, within 30 days."
)
PRICES_PDF = (  # a PDF table as pypdf gives it: one cell per line
    "Quillmoor Price List 2025\n\n"
    "2. Accessories\n"
    "SKU\n"
    "Product\n"
    "List price\n"
    "WB-48\n"
    "Wren battery pack, 44.4 V, 12 Ah\n"
    "EUR 640\n"
    "HB-96\n"
    "Heron battery pack\n"
    "EUR 1,180"
)
SPECS_MARKDOWN = (
    "Heron QH-640 Technical Specifications > Airframe\n\n"
    "## Airframe\n\n"
    "| Property | Value |\n"
    "|---|---|\n"
    "| Wingspan | 2.9 m |\n"
    "| Length | 1.85 m |\n"
    "| Maximum take-off mass | 24.9 kg |\n\n"
    "- Built-in ballistic parachute\n"
    "- Repack the parachute every 18 months"
)
HELPDESK_TEXT = (
    "IT HELPDESK\n"
    "-----------\n"
    "The IT Helpdesk is a team of four people based on the first floor of the\n"
    "Rotterdam office. We look after laptops, phones, accounts and printers.\n\n"
    "  Email:               helpdesk@quillmoor.eu\n"
    "  Phone extension:     2100\n"
    "  Walk-in desk:        Monday to Friday, 08:30 - 17:30\n"
)
PASSAGES = [LEAVE, ERRORS, TRAVEL, PRICES_PDF]


def test_picks_the_sentence_with_the_fact_and_cites_its_passage() -> None:
    answer = extract("How many days of paid annual leave does a full-time employee get?", PASSAGES)
    assert answer == (
        '"Full-time employees receive 27 days of paid annual leave per calendar year, in '
        'addition to public holidays." [1]'
    )


@pytest.mark.parametrize(
    ("question", "fact", "number"),
    [
        ("What does error code E-342 mean?", "Motor stall detected", 2),
        ("What is the policy number of the travel insurance?", "QM-TRV-88231", 3),
        ("Who do claims for business travel go to?", "Ilse Brouwer", 3),
        ("How much does the Heron battery pack HB-96 cost?", "EUR 1,180", 4),
    ],
)
def test_cites_the_passage_that_holds_the_fact(question: str, fact: str, number: int) -> None:
    answer = extract(question, PASSAGES)
    assert answer is not None
    assert fact in answer
    assert answer.endswith(f"[{number}]")
    assert "[1]" not in answer or number == 1


def test_the_same_passages_in_another_order_give_the_other_number() -> None:
    question = "What does error code E-342 mean?"
    assert extract(question, PASSAGES).endswith("[2]")  # type: ignore[union-attr]
    assert extract(question, [ERRORS, LEAVE, TRAVEL, PRICES_PDF]).endswith("[1]")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "question",
    [
        "What is the dress code for the Rotterdam office?",
        "Which company makes the motors of the Albatross cargo drone?",
        "What is the salary range for a senior firmware engineer?",
    ],
)
def test_an_unrelated_question_gets_none(question: str) -> None:
    assert extract(question, PASSAGES) is None
    assert extract(question, [SPECS_MARKDOWN, HELPDESK_TEXT]) is None
    best = candidates(question, PASSAGES)[0]
    assert best.score < DEFAULT_MIN_QUOTE_SCORE


def test_rare_words_count_more_than_common_ones() -> None:
    # "Quillmoor" is in every sentence, so it says little about which one answers.
    passage = (
        "Quillmoor was founded in Delft. Quillmoor builds delivery drones. "
        "Quillmoor sells to hospitals. Spare propellers are stored in the workshop cabinet."
    )
    question = "Where does Quillmoor store spare propellers?"
    assert extract(question, [passage]) == (
        '"Spare propellers are stored in the workshop cabinet." [1]'
    )


def test_the_threshold_is_a_parameter() -> None:
    question = "How many days of paid annual leave does a full-time employee get?"
    best = candidates(question, PASSAGES)[0]
    assert extract(question, PASSAGES, min_score=best.score) is not None
    assert extract(question, PASSAGES, min_score=best.score + 0.01) is None


def test_nothing_to_pick_from_gives_none() -> None:
    assert extract("How many days of leave?", []) is None
    assert extract("How many days of leave?", ["", "\n\n"]) is None
    assert extract("What?", PASSAGES) is None  # no content word to look for


def test_markdown_table_rows_are_units() -> None:
    answer = extract("What is the wingspan of the Heron QH-640?", [SPECS_MARKDOWN])
    assert answer == '"Wingspan | 2.9 m" [1]'


def test_bullets_are_units() -> None:
    answer = extract("How often does the Heron's parachute need to be repacked?", [SPECS_MARKDOWN])
    assert answer == '"Repack the parachute every 18 months" [1]'


def test_a_pdf_table_row_is_read_across_its_lines() -> None:
    answer = extract("What is the price of the WB-48 battery pack?", [PRICES_PDF])
    assert answer == '"WB-48 | Wren battery pack, 44.4 V, 12 Ah | EUR 640" [1]'


def test_aligned_lines_and_wrapped_prose_in_plain_text() -> None:
    assert (
        extract("What is the phone extension of the IT Helpdesk?", [HELPDESK_TEXT])
        == '"Phone extension: 2100" [1]'
    )
    # The sentence wrapped over two lines comes back whole.
    answer = extract("Where is the IT Helpdesk based?", [HELPDESK_TEXT])
    assert answer == (
        '"The IT Helpdesk is a team of four people based on the first floor of the '
        'Rotterdam office." [1]'
    )


def test_the_contextual_header_is_context_not_a_quote() -> None:
    # "Time off" is in the chunk's header only: it lends its words to the sentences under
    # it, but is never quoted itself (the document does not have that line).
    question = "What does the Employee Handbook say about time off?"
    texts = [c.text for c in candidates(question, [LEAVE])]
    assert "Employee Handbook > Time off" not in texts
    answer = extract(question, [LEAVE], min_score=0)
    assert answer is not None and answer.endswith('." [1]')
    assert "Employee Handbook" not in answer


def test_a_question_in_two_parts_gets_two_sentences() -> None:
    question = "What does E-342 mean, and what is the travel insurance policy number?"
    answer = extract(question, PASSAGES)
    assert answer is not None
    assert "Motor stall detected" in answer and "QM-TRV-88231" in answer
    assert "[2]" in answer and "[3]" in answer
    assert extract(question, PASSAGES, max_sentences=1).count("[") == 1  # type: ignore[union-attr]


def test_a_quote_passes_the_grounding_check() -> None:
    for question in [
        "What does error code E-342 mean?",
        "How much does the Heron battery pack HB-96 cost?",
        "What is the wingspan of the Heron QH-640?",
    ]:
        passages = [*PASSAGES, SPECS_MARKDOWN]
        answer = extract(question, passages)
        assert answer is not None
        assert check(answer, passages).supported, answer


def test_deterministic_and_fast() -> None:
    passages = [(text * 4)[:1000] for text in (LEAVE, ERRORS, TRAVEL, HELPDESK_TEXT)]
    question = "What does error code E-342 mean?"
    first = extract(question, passages)
    assert all(extract(question, passages) == first for _ in range(5))
    # New texts each round (nothing cached); a loose bound, the shared CI box is slow.
    started = time.perf_counter()
    for n in range(10):
        extract(question, [f"{p} ({n})" for p in passages])
    assert (time.perf_counter() - started) / 10 < 0.05
