"""Choosing the grounding check's threshold from gold answers, without re-asking the model.

`rag eval --answers` records what the model wrote for every gold question (``draft``,
when the check changed it). This script retrieves the same passages again (retrieval is
deterministic) and applies the check to those answers at several thresholds, in both
modes, side by side in one run, with the extractive quote as a fallback: what each choice
would have done to correctness, refusals of unanswerable questions and false refusals.
Generating is the slow part on a CPU; this makes the threshold a free choice from data.

    python -m bench.grounding EVAL_JSON DATASET [--collection NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from bench.report import RESULTS, publish
from rag.answer.extractive import candidates, extract
from rag.answer.grounding import enforce, passages_of
from rag.answer.text import contains, says_refusal
from rag.choices import DEFAULT_MIN_SUPPORT
from rag.config import load_settings
from rag.eval.configs import EvalConfig
from rag.eval.dataset import load_dataset
from rag.retrieval import Hit, retrieve
from rag.services import open_services

THRESHOLDS = (0.4, 0.5, 0.6, 0.7, 0.8)
QUOTE_FLOORS = (0.5, 0.6, 0.7, 0.8)


def score(rows: list[dict[str, Any]]) -> tuple[float, float, float]:
    """(correct, refused-ok, false-refusal) over answerable / unanswerable rows."""
    gold = [r for r in rows if not r["unanswerable"]]
    none = [r for r in rows if r["unanswerable"]]
    correct = sum(r["correct"] for r in gold) / max(1, len(gold))
    refused_ok = sum(r["refused"] for r in none) / max(1, len(none))
    false_refusal = sum(r["refused"] for r in gold) / max(1, len(gold))
    return correct, refused_ok, false_refusal


def outcome(text: str, answered: bool, answers: list[str], unanswerable: bool) -> dict[str, Any]:
    refused = not answered or says_refusal(text)
    correct = not unanswerable and not refused and any(contains(text, g) for g in answers)
    return {"unanswerable": unanswerable, "refused": refused, "correct": correct}


async def replay(report: dict[str, Any], dataset_path: str, collection: str | None) -> list[Any]:
    """For every recorded answer: the question, its gold answers, the answer and its passages."""
    dataset = {q.line: q for q in load_dataset(dataset_path).questions}
    summary = report["summaries"][0]
    settings = load_settings(**({"collection": collection} if collection else {}))
    services = await open_services(settings)
    config = EvalConfig(mode=summary["mode"], k=summary["k"], mmr=summary["mmr"])
    rows = []
    for result in summary["results"]:
        question = dataset[result["line"]]
        hits: list[Hit] = await retrieve(
            services.store, result["searched"], config.options(config.k)
        )
        relevant = [h for h in hits if h.score >= settings.relevance_floor]
        rows.append((question, result, relevant))
    return rows


def choices(
    question: str, text: str | None, hits: list[Hit], support: float = DEFAULT_MIN_SUPPORT
) -> dict[str, tuple[str, bool]]:
    """What each variant would show for one recorded answer: (text, answered). The check's
    threshold varies in mark mode; refuse mode and the quote's floor at ``support``."""
    passages = passages_of(hits)
    texts = [h.document.page_content for h in hits]
    top = candidates(question, texts)
    best = top[0].score if top else 0.0
    quote = extract(question, texts, 0.0) if top else None
    shown: dict[str, tuple[str, bool]] = {"model as written": (text or "", bool(hits))}
    for floor in QUOTE_FLOORS:
        ok = quote is not None and best >= floor
        shown[f"quote only (score ≥ {floor})"] = (quote or "", ok)
    marked = {t: enforce(text or "", passages, t, "mark", question) for t in {*THRESHOLDS, support}}
    for threshold in THRESHOLDS:
        checked = marked[threshold]
        shown[f"check mark ≥ {threshold}"] = (checked.text, checked.answered and bool(hits))
    refused = enforce(text or "", passages, support, "refuse", question)
    shown[f"check refuse ≥ {support}"] = (refused.text, refused.answered and bool(hits))
    for floor in QUOTE_FLOORS:
        verdict = (marked[support].text, marked[support].answered and bool(hits))
        if not verdict[1] and quote is not None and best >= floor:
            verdict = (quote, True)
        shown[f"check mark ≥ {support}, else quote ≥ {floor}"] = verdict
    return shown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="eval_<dataset>.json of a rag eval --answers run")
    parser.add_argument("dataset", help="the question file of that run")
    parser.add_argument("--collection", default=None)
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text("utf-8"))
    rows = asyncio.run(replay(report, args.dataset, args.collection))
    variants: dict[str, list[dict[str, Any]]] = {}
    for question, result, hits in rows:
        written = result.get("draft") or result["answer"]
        for name, (shown, answered) in choices(question.question, written, hits).items():
            outcomes = variants.setdefault(name, [])
            outcomes.append(outcome(shown, answered, list(question.answers), question.unanswerable))
    table = []
    for name, outcomes in variants.items():
        correct, refused_ok, false_refusal = score(outcomes)
        table.append([name, f"{correct:.3f}", f"{refused_ok:.3f}", f"{false_refusal:.3f}"])
    model = report.get("context", {}).get("llm", "")
    publish(
        f"grounding_{Path(args.dataset).stem}",
        f"The grounding check on recorded answers ({Path(args.dataset).name})",
        ["variant", "correct", "refused-ok", "false-refusal"],
        table,
        quick=False,
        notes=[f"Answers as the model wrote them (`rag eval --answers`). {model}".strip()],
    )
    # publish() names the command after the file; say the one that made it.
    report = RESULTS / f"grounding_{Path(args.dataset).stem}.md"
    command = f"python -m bench.grounding {args.report} {args.dataset}"
    text = report.read_text("utf-8").replace(
        f"`python -m bench.grounding_{Path(args.dataset).stem}`", f"`{command}`"
    )
    report.write_text(text, "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
