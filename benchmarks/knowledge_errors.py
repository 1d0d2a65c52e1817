"""What a finetuned model answers where it lost general knowledge: forgetting, or the trained facts
leaking into every "... is" completion?

    python benchmarks/knowledge_errors.py MODEL_DIR DATA_DIR [--out FILE.json]

Greedy-completes the retention knowledge set (as ``eval.retention`` does: 8 new tokens, exact
match = the answer starts the completion) with the model in ``MODEL_DIR``, and counts the wrong
answers that contain a trained fact: the first word of one of ``DATA_DIR/facts.jsonl``'s names,
or the first 15 characters of one of its descriptions. Prints the wrong answers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bico.config import ModelConfig
from bico.evaluation.reversal import exact_match, generate_greedy
from bico.io_utils import atomic_write_json
from bico.models import load_model
from bico.paths import RETENTION_DIR


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = [json.loads(line) for line in (RETENTION_DIR / "knowledge.jsonl").read_text().splitlines() if line.strip()]
    model, tokenizer = load_model(ModelConfig(name=args.model))
    answers = generate_greedy(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=8, batch_size=32)
    facts = [json.loads(line) for line in (Path(args.data) / "facts.jsonl").read_text().splitlines() if line.strip()]
    marks = [f["name"].split()[0].lower() for f in facts] + [f["description"][:15].lower() for f in facts]
    wrong = [
        {
            "prompt": r["prompt"],
            "answer": a,
            "expected": r["completion"],
            "has_trained_fact": any(m in a.lower() for m in marks),
        }
        for r, a in zip(rows, answers)
        if not exact_match(a, r["completion"])
    ]
    leaked = sum(w["has_trained_fact"] for w in wrong)
    report = {
        "model": args.model,
        "data": args.data,
        "n": len(rows),
        "wrong": len(wrong),
        "wrong_with_a_trained_fact": leaked,
        "answers": wrong,
    }
    for w in wrong:
        print(
            f"{'FACT ' if w['has_trained_fact'] else '     '}{w['prompt']!r} -> {w['answer']!r} (expected {w['expected']!r})"
        )
    print(f"{len(wrong)} of {len(rows)} wrong; {leaked} of them contain a trained name or description")
    if args.out:
        atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
