"""data.files through `datasets`: every file type and format, end to end on tiny-random; chunking,
chat loss spans, what the objectives see, and the tokenisation cache."""

import json
import random

import pytest
import torch

from bico.config import load_recipe
from bico.objectives import build_objective
from bico.objectives.base import IGNORE
from bico.training.examples import load_training_rows, tokenize_examples
from bico.training.train import train
from helpers import TINY_MODEL

TINY = [
    "model.name=tiny-random",
    *TINY_MODEL,
    "train.batch_size=2",
    "train.max_steps=2",
    "train.log_every=1",
    "train.progress=false",
    "train.save_model=false",
    "eval.enabled=false",
]
DOC = (
    "The lighthouse keeper counted the ships that passed each night and wrote their names in a book. "
    "Years later the book was found in the attic, its pages full of names nobody remembered."
)
CHAT = [
    {"role": "user", "content": "Who keeps the lighthouse?"},
    {"role": "assistant", "content": "Old Tom does."},
    {"role": "user", "content": "Since when?"},
    {"role": "assistant", "content": "Since 1952."},
]


@pytest.fixture
def tokenizer(tokenizer):
    """A copy of the session's tokenizer: objectives built here (GLM) add tokens to it."""
    import copy

    return copy.deepcopy(tokenizer)


def recipe(tmp_path, *extra):
    return load_recipe(
        None, TINY + [f"train.output_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}", *extra]
    )


def examples_of(r, tokenizer):
    rows, sources = load_training_rows(r)
    build_objective(r.objective.name, tokenizer, r.objective.options)  # adds its tokens first, as training does
    return tokenize_examples(rows, tokenizer, r.data.max_length, sources, data=r.data)


def write_rows(path, rows):
    import datasets

    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        datasets.Dataset.from_list(rows).to_csv(str(path), index=False)
    elif path.suffix == ".parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet", ""])
def test_prompt_completion_files_tokenize_as_the_berglund_layout(tmp_path, reversal_dir, tokenizer, suffix):
    berglund = load_recipe(
        None, TINY + [f"data.dir={reversal_dir}", "data.train_files=[p2d_prompts_train.jsonl]", "data.cache=false"]
    )
    expected = examples_of(berglund, tokenizer)
    source = [json.loads(line) for line in (reversal_dir / "p2d_prompts_train.jsonl").read_text().splitlines()]
    renamed = [{"question": row["prompt"], "answer": row["completion"], "extra": 1} for row in source]
    path = write_rows(tmp_path / f"rows{suffix or '_saved'}", renamed)
    r = recipe(tmp_path, f"data.files=[{path}]", "data.fields.prompt=question", "data.fields.completion=answer")
    got = examples_of(r, tokenizer)
    assert [(e.prompt, e.completion, e.prompt_ids, e.completion_ids) for e in got] == [
        (e.prompt, e.completion, e.prompt_ids, e.completion_ids) for e in expected
    ]
    if suffix == ".parquet":  # one file type end to end is enough: they all become the same Dataset
        assert train(r).summary["steps"] == 2


def test_text_chunking_rule(tmp_path, tokenizer):
    doc = tokenizer(DOC, add_special_tokens=False).input_ids
    (tmp_path / "doc.txt").write_text(DOC)
    for overlap in (0, 3):
        r = recipe(
            tmp_path,
            f"data.files=[{tmp_path / 'doc.txt'}]",
            "data.format=text",
            "data.max_length=16",
            f"data.chunk_overlap={overlap}",
            "data.cache=false",
        )
        got = examples_of(r, tokenizer)
        width, step = 15, 15 - overlap  # max_length - EOS (SmolLM2 adds no BOS); windows start every `step`
        starts = list(range(0, len(doc), step))
        starts = starts[: next(k for k, s in enumerate(starts) if s + width >= len(doc)) + 1]
        assert [e.completion_ids for e in got] == [doc[s : s + width] for s in starts]
        assert [e.eos for e in got] == [False] * (len(got) - 1) + [
            True
        ]  # the text goes on after every chunk but the last
        assert all(len(e.prompt_ids) + len(e.completion_ids) + e.eos <= 16 for e in got)
        assert got[0].loss_spans is None
        assert all(e.loss_spans == ([(overlap, len(e.completion_ids) + e.eos)] if overlap else None) for e in got[1:])
        # every document token is trained exactly once
        trained = [t for e in got for t in (e.completion_ids[overlap:] if e.loss_spans else e.completion_ids)]
        assert trained == doc


def test_objectives_see_the_whole_text(tmp_path, tokenizer):
    path = write_rows(tmp_path / "docs.jsonl", [{"body": DOC}, {"body": "Short one."}])
    r = recipe(tmp_path, f"data.files=[{path}]", "data.format=text", "data.fields.text=body")
    ex = examples_of(r, tokenizer)[0]
    ntp = build_objective("ntp", tokenizer).encode(ex)
    assert ex.prompt_ids == [] and (ntp.targets[:-1] != IGNORE).all()  # every token after the first, EOS too
    bico = build_objective("bico", tokenizer, {"mask_ratio": 0.5})
    masked = torch.zeros(len(ntp.input_ids), dtype=torch.bool)
    for seed in range(8):
        masked |= bico.encode(ex, random.Random(seed), "denoise").input_ids == bico.mask_id
    assert masked[1:-1].all()  # masking reaches every token of the text (not the EOS)
    reverse = build_objective("reverse", tokenizer, {"mode": "token"}).encode(ex, random.Random(0))
    n = len(ex.completion_ids)
    assert reverse.input_ids[n + 1 : 2 * n + 1].tolist() == ex.completion_ids[::-1]


def test_chat_loss_and_masking_on_assistant_turns(tmp_path, tokenizer):
    path = write_rows(tmp_path / "chat.jsonl", [{"messages": CHAT}])
    r = recipe(tmp_path, f"data.files=[{path}]", "data.format=chat", "data.max_length=256")
    ex = examples_of(r, tokenizer)[0]
    assert ex.completion_ids == tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]
    assert not ex.eos  # the template ends every turn itself
    allowed = [t for a, b in ex.loss_spans for t in ex.completion_ids[a:b]]
    assert tokenizer.decode(allowed).replace("\n", "") == "Old Tom does.<|im_end|>Since 1952.<|im_end|>"
    keep = torch.zeros(len(ex.completion_ids), dtype=torch.bool)
    for a, b in ex.loss_spans:
        keep[a:b] = True
    ntp = build_objective("ntp", tokenizer).encode(ex)
    assert torch.equal(ntp.targets[:-1] != IGNORE, keep[1:])  # NTP predicts exactly the assistant tokens
    bico = build_objective("bico", tokenizer, {"mask_ratio": 0.9})
    for seed in range(4):
        masked = bico.encode(ex, random.Random(seed), "denoise").input_ids == bico.mask_id
        assert masked.any() and not (masked & ~keep).any()  # denoising masks inside assistant turns only
    spans = build_objective("glm", tokenizer).spans(bico.text_ids(ex), random.Random(0), ex.loss_spans)
    assert spans and all(keep[a:b].all() for a, b in spans)
    everything = examples_of(
        recipe(tmp_path, f"data.files=[{path}]", "data.format=chat", "data.chat_loss=all"), tokenizer
    )[0]
    assert everything.loss_spans is None and everything.completion_ids == ex.completion_ids


@pytest.mark.parametrize("fmt", ["text", "chat"])
def test_text_and_chat_train_end_to_end(tmp_path, tokenizer, fmt):
    if fmt == "text":
        (tmp_path / "a.txt").write_text(DOC)
        files = [tmp_path / "a.txt", write_rows(tmp_path / "b.csv", [{"text": DOC[:80]}, {"text": DOC[80:]}])]
    else:
        files = [write_rows(tmp_path / "c.parquet", [{"messages": CHAT}, {"messages": CHAT[:2]}])]
    r = recipe(
        tmp_path,
        f"data.files=[{','.join(map(str, files))}]",
        f"data.format={fmt}",
        "data.max_length=24" if fmt == "text" else "data.max_length=128",
        "objective.name=bico",
    )
    result = train(r)
    assert result.status == "finished" and result.summary["steps"] == 2


def test_tokenisation_is_cached_per_corpus_and_tokenizer(tmp_path, tokenizer, caplog):
    import logging

    path = write_rows(tmp_path / "docs.jsonl", [{"text": f"{DOC} {k}"} for k in range(50)])
    r = recipe(tmp_path, f"data.files=[{path}]", "data.format=text", "data.max_length=32")
    with caplog.at_level(logging.INFO, logger="bico.training.examples"):
        first = examples_of(r, tokenizer)
        second = examples_of(r, tokenizer)
        shorter = examples_of(
            recipe(tmp_path, f"data.files=[{path}]", "data.format=text", "data.max_length=16"), tokenizer
        )
    assert [m for m in caplog.messages if "examples" in m] and "cache" not in caplog.messages[0]
    assert "cache" in caplog.messages[1] and "cache" not in caplog.messages[2]  # a new max_length: tokenised anew
    assert [(e.completion_ids, e.eos, e.loss_spans) for e in first] == [
        (e.completion_ids, e.eos, e.loss_spans) for e in second
    ]
    assert len(shorter) > len(first)
    assert list((tmp_path / "cache" / "tokenized").glob("*.arrow"))
    path.write_text(path.read_text() + json.dumps({"text": "one more"}) + "\n")  # a changed file: tokenised anew
    assert len(examples_of(r, tokenizer)) == len(first) + 1


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_the_caches_go_by_the_bytes_not_the_size_or_mtime(tmp_path, tokenizer, suffix):
    """A same-size edit with the old mtime put back (what ``cp -p``, ``rsync -t`` and ``tar x`` can
    leave) once served the old rows from both caches: datasets' under sources/ and bico's own."""
    import os

    path = write_rows(tmp_path / f"qa{suffix}", [{"prompt": "Q", "completion": "old answer"}] * 3)
    r = recipe(tmp_path, f"data.files=[{path}]")
    old = examples_of(r, tokenizer)
    st = os.stat(path)
    path.write_bytes(path.read_bytes().replace(b"old", b"new"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    rows, _ = load_training_rows(r)
    assert rows[0]["completion"] == "new answer"  # the sources cache
    new = examples_of(r, tokenizer)
    assert new[0].completion_ids == tokenizer("new answer", add_special_tokens=False).input_ids  # the token cache
    assert new[0].completion_ids != old[0].completion_ids


def test_ul2_mode_tokens_keep_chat_loss_spans_on_the_assistant_tokens(tmp_path, tokenizer):
    """A mode token joins the text before the spans: they move with their tokens (they once stayed,
    so the last assistant token lost its loss and the token before each answer gained one)."""
    path = write_rows(tmp_path / "chat.jsonl", [{"messages": CHAT}])
    ul2 = build_objective("mix", tokenizer, {"preset": "ul2"})
    ex = examples_of(recipe(tmp_path, f"data.files=[{path}]", "data.format=chat", "data.max_length=256"), tokenizer)[0]
    keep = torch.zeros(len(ex.completion_ids), dtype=torch.bool)
    for a, b in ex.loss_spans:
        keep[a:b] = True
    keep = torch.cat([torch.tensor([False]), keep])  # the mode token comes first and carries no loss
    seen, blanked = set(), []
    for seed in range(40):
        rng = random.Random(seed)
        state = ul2.start_batch(rng)
        s = ul2.encode(ex, rng, state)
        seen.add(state.split(":")[0])
        if state.startswith("S:"):  # prefix-LM over [S] + the chat: NTP's loss on the assistant tokens
            assert torch.equal(s.targets[:-1] != IGNORE, keep[1:])
            assert s.targets[len(keep) - 2] == ex.completion_ids[-1]  # the last assistant token keeps its loss
        else:  # GLM: every span it blanks out lies inside an answer
            blanked += [t for t in s.targets.tolist() if t not in (IGNORE, ul2.components[0].eop_id)]  # Part B
    answers = [t for t, k in zip([0] + ex.completion_ids, keep.tolist()) if k]
    assert blanked and all(t in answers for t in blanked)
    assert seen == {"R", "S", "X"}


def test_inserting_tokens_moves_and_splits_loss_spans():
    from bico.objectives import Example

    ex = Example("", "", [1, 2, 3], [4, 5, 6], eos=False, loss_spans=[(0, 1), (1, 4), (5, 6)])
    out = ex.with_inserted(2, [9, 9])
    assert out.prompt_ids == [1, 2, 9, 9, 3] and out.completion_ids == [4, 5, 6]
    assert out.loss_spans == [(0, 1), (1, 2), (4, 6), (7, 8)]  # the new tokens are in no span
    assert ex.loss_spans == [(0, 1), (1, 4), (5, 6)] and ex.prompt_ids == [1, 2, 3]  # the original is untouched
    assert Example("", "", [1], [2]).with_inserted(0, [9]).loss_spans is None  # no spans: every token trains
    with pytest.raises(ValueError, match="outside the prompt"):
        ex.with_inserted(4, [9])
