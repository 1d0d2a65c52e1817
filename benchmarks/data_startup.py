"""Start-up cost of a training corpus: the data-loading stage of `bico train` before and after caching.

    python benchmarks/data_startup.py --rows 100000 --out benchmarks/results/data-startup
    python benchmarks/data_startup.py --sample recipes/text/facts.txt   # the text recipe's corpus

Generates a corpus of ``--rows`` rows (generated fictitious facts, as ``bico data reversal`` makes
them: prompt/completion rows, and the same rows joined as text documents), then times, each in a
fresh process (as a new ``bico train`` would be), the data-loading stage of ``bico train``:
``load_training_rows`` + ``tokenize_examples`` with the SmolLM2 tokenizer (imports and the
tokenizer's own loading excluded). Three cases: ``data.cache=false``; the first run on an empty
cache (tokenise and write the cache); the second run (read the cache). Also the whole
``bico train`` command (tiny-random, one step) with a cold and a warm cache, from process start to exit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bico.machine import machine_info

STAGE = """
import json, sys, time
from bico.config import load_recipe
from bico.models import load_tokenizer
from bico.training.examples import load_training_rows, tokenize_examples
recipe = load_recipe(None, sys.argv[1:])
tokenizer = load_tokenizer("tiny-random")
began = time.perf_counter()
rows, sources = load_training_rows(recipe)
loaded = time.perf_counter()
examples = tokenize_examples(rows, tokenizer, recipe.data.max_length, sources, data=recipe.data)
done = time.perf_counter()
print(json.dumps({"rows": len(rows), "examples": len(examples), "load_s": round(loaded - began, 3),
                  "tokenize_s": round(done - loaded, 3), "total_s": round(done - began, 3)}))
"""


def prose(rows: list[dict], per_paragraph: int) -> list[str]:
    """Rows as sentences, ``per_paragraph`` to a paragraph (the generated files list each fact's
    paraphrases one after another, so a paragraph is about one fact)."""
    sentences = [row["prompt"] + row["completion"] for row in rows]
    return [" ".join(sentences[i : i + per_paragraph]) for i in range(0, len(sentences), per_paragraph)]


def generated_rows(n: int, seed: int = 0) -> list[dict]:
    from bico.data import generate_reversal_dataset, load_jsonl

    with tempfile.TemporaryDirectory() as folder:
        generate_reversal_dataset(folder, facts_per_subset=30, train_paraphrases=30, seed=seed)
        base = load_jsonl(Path(folder) / "all_prompts_train.jsonl")
    # distinct rows: the k-th repetition of the generated set says so
    return [
        {
            "prompt": base[i % len(base)]["prompt"],
            "completion": base[i % len(base)]["completion"][:-1] + f" (record {i // len(base)}).",
        }
        for i in range(n)
    ]


def run_stage(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", STAGE, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_train(args: list[str], out: Path) -> float:
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "bico", "train", "recipes/demo/tiny.yaml", *args, f"train.output_dir={out}"],
        check=True,
        capture_output=True,
    )
    return round(time.perf_counter() - began, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--out", default="benchmarks/results/data-startup")
    p.add_argument("--sample", help="only write the text recipe's sample corpus to this .txt file")
    a = p.parse_args()
    if a.sample:
        from bico.data import generate_reversal_dataset, load_jsonl

        with tempfile.TemporaryDirectory() as folder:
            generate_reversal_dataset(folder, facts_per_subset=4, train_paraphrases=6, seed=0)
            rows = load_jsonl(Path(folder) / "all_prompts_train.jsonl")
        Path(a.sample).write_text("\n\n".join(prose(rows, 6)) + "\n", encoding="utf-8")
        return
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {**machine_info(), "note": "shared 2-core machine; other jobs ran"},
        "rows": a.rows,
        "cases": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = generated_rows(a.rows)
        with open(tmp / "pc.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        with open(tmp / "text.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps({"text": row["prompt"] + row["completion"]}) + "\n")
        tiny = [
            "model.name=tiny-random",
            "model.layers=1",
            "model.hidden_size=32",
            "model.heads=2",
            "model.kv_heads=1",
            "model.intermediate_size=64",
            "train.max_steps=1",
            "train.progress=false",
            "train.save_model=false",
            "eval.enabled=false",
            "data.max_length=128",
        ]
        for fmt, path in (("prompt_completion", "pc.jsonl"), ("text", "text.jsonl")):
            common = [f"data.files=[{tmp / path}]", f"data.format={fmt}", "data.max_length=128"]
            cache = tmp / f"cache-{fmt}"
            case = results["cases"][fmt] = {}
            case["no_cache"] = run_stage(common + ["data.cache=false"])
            case["first_run"] = run_stage(common + [f"data.cache_dir={cache}"])
            case["second_run"] = run_stage(common + [f"data.cache_dir={cache}"])
            print(fmt, json.dumps(case), flush=True)
        common = tiny + [f"data.files=[{tmp / 'text.jsonl'}]", "data.format=text"]
        cache = tmp / "cache-train"
        results["bico_train_1_step_s"] = {
            "first_run": run_train(common + [f"data.cache_dir={cache}"], tmp / "run1"),
            "second_run": run_train(common + [f"data.cache_dir={cache}"], tmp / "run2"),
        }
        print("bico train", results["bico_train_1_step_s"], flush=True)
    (out / "data-startup.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
