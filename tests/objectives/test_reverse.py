"""reverse: token, word, entity and segment reversal as a second packed document, and the entity meta of
training rows."""

import random

import pytest
import torch

from bico.objectives import IGNORE, build_objective
from helpers import META, dense, example, text


def reversed_doc(obj, tok, ex, seed=0):
    s = obj.encode(ex, random.Random(seed))
    n = len(text(tok, ex))
    ids = s.input_ids.tolist()
    # Two packed causal documents that never see each other; positions restart; no target crosses.
    want = torch.block_diag(torch.tril(torch.ones(n, n)), torch.tril(torch.ones(len(s) - n, len(s) - n))).bool()
    assert torch.equal(dense(s), want)
    assert s.position_ids.tolist() == list(range(n)) + list(range(len(s) - n))
    assert s.targets.tolist() == ids[1:n] + [IGNORE] + ids[n + 1 :] + [IGNORE]
    assert ids[:n] == text(tok, ex)
    return ids[n:]


def test_reverse_token_word_entity(tok):
    ex = example(tok, meta=META)
    ids = text(tok, ex)
    content = ids[:-1]
    assert reversed_doc(build_objective("reverse", tok, {"mode": "token"}), tok, ex) == content[::-1] + ids[-1:]
    # Words: a token whose text starts with a space starts a word; words keep their tokens.
    groups = []
    for t in content:
        if not groups or tok.decode([t])[:1] == " ":
            groups.append([])
        groups[-1].append(t)
    words = reversed_doc(build_objective("reverse", tok, {"mode": "word"}), tok, ex)
    assert words == [t for g in reversed(groups) for t in g] + ids[-1:]
    # Entities (from meta): the name and the description keep their order; the rest is reversed.
    entity = tok.decode(reversed_doc(build_objective("reverse", tok, {"mode": "entity"}), tok, ex)[:-1])
    assert entity == (
        " Time. Through Journey A the acclaimed director of the virtual reality masterpiece"
        " being for wide and far knownDaphne Barrington,"
    )
    # Without meta: capitalised runs ("Daphne Barrington", "A Journey Through Time.") stay whole.
    plain = tok.decode(reversed_doc(build_objective("reverse", tok, {"mode": "entity"}), tok, example(tok))[:-1])
    assert "A Journey Through Time." in plain and "Daphne Barrington" in plain
    assert plain.index("A Journey") < plain.index("masterpiece")


def test_reverse_random_segments(tok):
    obj = build_objective("reverse", tok, {"mode": "segment", "segment_max": 4})
    ex = example(tok)
    content = text(tok, ex)[:-1]
    for seed in range(10):
        rev = reversed_doc(obj, tok, ex, seed)[:-1]
        segments, current = [], []
        for t in rev:
            if t == obj.rev_id:
                segments.append(current)
                current = []
            else:
                current.append(t)
        segments.append(current)
        assert all(1 <= len(seg) <= 4 for seg in segments)
        assert [t for seg in reversed(segments) for t in seg] == content


def test_reverse_entity_meta_from_training_rows(reversal_dir):
    from bico.config import load_recipe
    from bico.data import load_facts
    from bico.training.examples import load_training_rows

    rows, _ = load_training_rows(load_recipe(None, [f"data.dir={reversal_dir}"]))
    facts = {f["name"]: f["description"] for f in load_facts(reversal_dir)}
    assert all(row["meta"]["description"] == facts[row["meta"]["name"]] for row in rows)
    assert all(row["meta"]["name"] in row["prompt"] + row["completion"] for row in rows)


def test_option_errors(tok):
    with pytest.raises(ValueError, match="mode"):
        build_objective("reverse", tok, {"mode": "sentence"})
