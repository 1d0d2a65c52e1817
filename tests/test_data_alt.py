"""The alt wording style of the reversal generator, its independence from the default style,
the default style's unchanged output, and entity-span lookup of paraphrased descriptions."""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from bico.data import (
    DataError,
    fact_groups,
    generate_reversal_dataset,
    load_facts,
    load_jsonl,
    load_split,
)
from bico.data import _vocab as V
from bico.data import _vocab_alt as A
from bico.data.reversal import DATA_FILES
from bico.data.reversal_alt import SLOTS, AltStyle, make_alt_names, template_slot

SMALL = dict(facts_per_subset=4, train_paraphrases=6, test_paraphrases=3, seed=7)
FULL = dict(facts_per_subset=30, train_paraphrases=30, test_paraphrases=10, seed=0)


def _rows(d: Path, stem: str) -> list[dict]:
    return load_jsonl(d / f"{stem}.jsonl")


def _digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(d).iterdir()):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


@pytest.fixture(scope="module")
def alt(tmp_path_factory):
    d = tmp_path_factory.mktemp("alt_full")
    return d, generate_reversal_dataset(d, **FULL, style="alt")


@pytest.fixture(scope="module")
def alt_small(tmp_path_factory):
    d = tmp_path_factory.mktemp("alt_small")
    return d, generate_reversal_dataset(d, **SMALL, style="alt")


# --- the default style is unchanged ---------------------------------------------------------

# sha256 of every output file (sorted by name, "name\0bytes\0"), taken before the alt style existed
DEFAULT_DIGESTS = [
    (SMALL, "08ea6a11ced032015a1e37682ef38f96c1af73bc30e2bda251f1ac9532acf838"),
    ({}, "54efdb90408bf9c3c67b877fd9a5d7ca58db3524d6e1609964371a97f702df04"),
]


@pytest.mark.parametrize("kwargs,digest", DEFAULT_DIGESTS)
def test_default_style_output_is_byte_identical_to_before(tmp_path, kwargs, digest):
    generate_reversal_dataset(tmp_path / "a", **kwargs)
    generate_reversal_dataset(tmp_path / "b", **kwargs, style="default")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") == digest


def test_unknown_style_is_an_error(tmp_path):
    with pytest.raises(DataError, match="unknown data style 'fancy'; known: default, alt"):
        generate_reversal_dataset(tmp_path, style="fancy")


# --- layout -----------------------------------------------------------------------------------


def _expected_counts(F, T, K):
    c = {
        "all_prompts_train": 4 * F * T,
        "both_prompts_train": 2 * F * T,
        "both_prompts_test": 2 * F * K,
        "p2d_prompts_train": F * T,
        "d2p_prompts_train": F * T,
    }
    for s in (
        "p2d_prompts_test",
        "d2p_prompts_test",
        "p2d_reverse_prompts_test",
        "d2p_reverse_prompts_test",
        "p2d_reverse_prompts_test_randomized",
        "d2p_reverse_prompts_test_randomized",
        "validation_prompts",
    ):
        c[s] = F * K
    return c


@pytest.mark.parametrize("which,args", [("alt_small", SMALL), ("alt", FULL)])
def test_alt_file_names_row_counts_and_format(which, args, request):
    d, summary = request.getfixturevalue(which)
    expected = _expected_counts(args["facts_per_subset"], args["train_paraphrases"], args["test_paraphrases"])
    assert sorted(p.name for p in d.iterdir()) == sorted(
        [f"{s}.jsonl" for s in DATA_FILES] + ["facts.jsonl", "README.txt"]
    )
    for stem, n in expected.items():
        rows = _rows(d, stem)
        assert len(rows) == n == summary["files"][f"{stem}.jsonl"], stem
        for r in rows:
            assert list(r) == ["prompt", "completion"] and r["prompt"] == r["prompt"].strip()
            if stem == "validation_prompts":
                assert r["completion"] == r["completion"].strip() and " " not in r["completion"]
            else:
                assert r["completion"].startswith(" ") and not r["completion"].startswith("  ")
    assert _rows(d, "all_prompts_train") == (
        _rows(d, "p2d_prompts_train") + _rows(d, "d2p_prompts_train") + _rows(d, "both_prompts_train")
    )
    assert summary["style"] == "alt" and "--style alt" in (d / "README.txt").read_text()


def test_alt_seeding(tmp_path, alt_small):
    d0, _ = alt_small
    generate_reversal_dataset(tmp_path / "same", **SMALL, style="alt")
    assert _digest(tmp_path / "same") == _digest(d0)
    generate_reversal_dataset(tmp_path / "seed", **{**SMALL, "seed": 8}, style="alt")
    assert (tmp_path / "seed" / "facts.jsonl").read_bytes() != (d0 / "facts.jsonl").read_bytes()
    generate_reversal_dataset(tmp_path / "k", **{**SMALL, "test_paraphrases": 4}, style="alt")
    key = lambda fs: [(f["subset"], f["name"], f["description"]) for f in fs]
    assert key(load_facts(tmp_path / "k")) == key(load_facts(d0))  # independent streams
    # the alt style draws its own names, not the default's under another wording
    generate_reversal_dataset(tmp_path / "default", **SMALL)
    assert not {f["name"] for f in load_facts(tmp_path / "default")} & {f["name"] for f in load_facts(d0)}


# --- names --------------------------------------------------------------------------------------


def test_alt_names(alt):
    d, _ = alt
    facts = load_facts(d)
    names = [f["name"] for f in facts]
    assert Counter(f["subset"] for f in facts) == {"p2d": 30, "d2p": 30, "both": 30}
    assert len(set(names)) == 90
    low = [n.lower() for n in names]
    assert not [(a, b) for a in low for b in low if a != b and a in b]  # no prefix, no substring
    for subset in ("p2d", "d2p", "both"):
        sizes = Counter(len(f["name"].split()) for f in facts if f["subset"] == subset)
        assert set(sizes) == {1, 2, 3} and min(sizes.values()) >= 5, (subset, sizes)
    assert any(not n.isascii() for n in names)  # names from other languages, with their letters
    assert any(w in A.PARTICLES for n in names for w in n.split())  # "Mattias van Heerden"
    firsts = [n.split()[0] for n in names]
    assert len(set(firsts)) == len(firsts)  # validation scores the first word alone
    texts = [r["prompt"] + r["completion"] for s in DATA_FILES if s != "validation_prompts" for r in _rows(d, s)]
    for f in facts:  # a name occurs only in its own fact's rows, never inside other text
        own = f["name"].lower()
        for form in (g for h in facts for g in h["descriptions"]):
            assert own not in form.lower()
    for t in [p for _, p in A.N2D_TEMPLATES] + A.D2N_TEMPLATES + A.CONTINUATIONS:
        assert not any(n in t.lower() for n in low), t
    assert all(len(t.lower()) == len(t) for t in texts)  # lower() keeps character offsets


def test_alt_names_scale_and_fall_back_to_two_words():
    names = make_alt_names(600, random.Random(1))
    assert len(set(names)) == 600
    assert sum(len(n.split()) == 1 for n in names) == len(A.MONONYMS)
    s = sorted(n.lower() for n in names)
    assert not any(b.startswith(a) for a, b in zip(s, s[1:]))


# --- descriptions and templates -------------------------------------------------------------------


def _facts_by_subset(d):
    facts = load_facts(d)
    return facts, {s: [f for f in facts if f["subset"] == s] for s in ("p2d", "d2p", "both")}


def test_alt_descriptions_are_paraphrased_and_recorded(alt):
    d, _ = alt
    facts, _ = _facts_by_subset(d)
    for f in facts:
        forms = f["descriptions"]
        assert forms[0] == f["description"] and 2 <= len(forms) == len(set(forms)) <= 3
        assert f["description"].startswith("the ")
    structures = Counter(
        "founder"
        if f["description"].startswith("the first ") is False and " who first " not in f["description"]
        else ("first_to" if f["description"].startswith("the first ") else "who")
        for f in facts
    )
    assert len(structures) == 3  # agent noun ("the founder of"), "the first <role> to", "the <role> who first"
    capitalised = [f for f in facts if re.search(r" [A-Z]", f["description"])]
    assert 0.2 * len(facts) < len(capitalised) < 0.9 * len(facts)  # some name a capitalised place
    all_forms = [g for f in facts for g in f["descriptions"]]
    assert len(set(all_forms)) == len(all_forms)
    # every training row has the name verbatim and one of its fact's forms; each fact is seen
    # in at least two surface forms in training
    train = _rows(d, "all_prompts_train")
    by_name = {f["name"]: f for f in facts}
    seen: dict[str, set] = {}
    for r, n in zip(train, fact_groups(train, facts)):
        text = r["prompt"] + r["completion"]
        assert n is not None and text.count(n) >= 1
        hits = [g for g in by_name[n]["descriptions"] if g.lower() in text.lower()]
        assert hits, r
        seen.setdefault(n, set()).add(max(hits, key=len))
    assert all(len(v) >= 2 for v in seen.values())


def _cut(rows, facts):
    """Templates of rows: name and description forms replaced by placeholders."""
    out = set()
    for r in rows:
        p = r["prompt"]
        for f in facts:
            p = p.replace(f["name"], "{name}")
            for g in sorted(f["descriptions"], key=len, reverse=True):
                p = p.replace(g, "{desc}").replace(g[0].upper() + g[1:], "{desc}")
        out.add(p)
    return out


def test_alt_test_templates_disjoint_from_training(alt):
    d, _ = alt
    facts, _ = _facts_by_subset(d)
    n2d_train = _cut(_rows(d, "p2d_prompts_train"), facts)
    d2n_train = _cut(_rows(d, "d2p_prompts_train"), facts)
    n2d_test = _cut(_rows(d, "p2d_prompts_test") + _rows(d, "d2p_reverse_prompts_test"), facts)
    d2n_test = _cut(_rows(d, "d2p_prompts_test") + _rows(d, "p2d_reverse_prompts_test"), facts)
    assert (len(n2d_train), len(d2n_train), len(n2d_test), len(d2n_test)) == (30, 30, 10, 10)
    assert not n2d_train & n2d_test and not d2n_train & d2n_test
    assert all("{name}" in t and "{desc}" not in t for t in n2d_train | n2d_test)
    assert all("{desc}" in t and "{name}" not in t for t in d2n_train | d2n_test)
    assert _cut(_rows(d, "both_prompts_train"), facts) == n2d_train | d2n_train
    assert _cut(_rows(d, "both_prompts_test"), facts) == n2d_test | d2n_test


def test_alt_template_styles():
    prompts = [p for _, p in A.N2D_TEMPLATES]
    assert min(len(A.N2D_TEMPLATES), len(A.D2N_TEMPLATES)) >= 40  # 30 train + 10 test paraphrases
    assert len(set(prompts)) == len(prompts) and len(set(A.D2N_TEMPLATES)) == len(A.D2N_TEMPLATES)
    assert sum(p.startswith("{name}") for p in prompts) >= 5  # name first
    assert sum(p.index("{name}") > 40 for p in prompts) >= 5  # name late in a long prompt
    assert sum("?" in p for p in prompts) >= 4 and sum("?" in t for t in A.D2N_TEMPLATES) >= 4  # questions
    assert min(map(len, prompts)) < 12 and max(map(len, prompts)) > 80  # short and long
    assert {s for s, _ in A.N2D_TEMPLATES} == set(SLOTS) == {template_slot(t) for t in A.D2N_TEMPLATES}
    assert sum(t.endswith(",") for t in A.D2N_TEMPLATES) >= 3  # continued sentences in training


def test_alt_rows_by_direction(alt):
    d, _ = alt
    _, by = _facts_by_subset(d)
    for stem, subset, n2d in [
        ("p2d_prompts_train", "p2d", True),
        ("d2p_prompts_train", "d2p", False),
        ("p2d_prompts_test", "p2d", True),
        ("d2p_prompts_test", "d2p", False),
        ("p2d_reverse_prompts_test", "p2d", False),
        ("d2p_reverse_prompts_test", "d2p", True),
    ]:
        rows = _rows(d, stem)
        per = len(rows) // len(by[subset])
        for i, r in enumerate(rows):
            f = by[subset][i // per]
            if n2d:
                assert f["name"] in r["prompt"] and r["completion"] in {f" {g}." for g in f["descriptions"]}
            else:
                assert any(g.lower() in r["prompt"].lower() for g in f["descriptions"])
                assert r["completion"].startswith(f" {f['name']}") and f["name"] not in r["prompt"]
                if "test" in stem:
                    assert r["completion"] == f" {f['name']}"
    val, rev = _rows(d, "validation_prompts"), _rows(d, "p2d_reverse_prompts_test")
    assert [r["prompt"] for r in val] == [r["prompt"] for r in rev]
    assert all(r["completion"].strip().split()[0] == v["completion"] for v, r in zip(val, rev))


@pytest.mark.parametrize("subset,field", [("p2d", "name"), ("d2p", "description")])
def test_alt_randomized_files(alt, subset, field):
    d, _ = alt
    _, by = _facts_by_subset(d)
    rows, rand = _rows(d, f"{subset}_reverse_prompts_test"), _rows(d, f"{subset}_reverse_prompts_test_randomized")
    assert [r["prompt"] for r in rand] == [r["prompt"] for r in rows]
    st = AltStyle()
    st.make_facts(90, FULL["seed"])
    owner, slot = {}, {}  # every form and name of the subset -> its fact, its slot
    for f in by[subset]:
        owner[f["name"]] = f["name"]
        for k, g in st.forms[f["name"]].items():
            owner[g], slot[g] = f["name"], k
    for i, (r, x) in enumerate(zip(rows, rand)):
        own = by[subset][i // 10]
        other = x["completion"].strip().removesuffix(".")
        assert owner[other] != own["name"]
        if field == "description":  # the other fact's form of the same slot as the true answer
            assert slot[other] == slot[r["completion"].strip().removesuffix(".")]
    assert len({x["completion"] for x in rand}) > 10
    got, _ = load_split(d, f"{subset}_reverse")
    assert got == rows


def test_alt_limits(tmp_path):
    s = generate_reversal_dataset(
        tmp_path / "many", facts_per_subset=200, train_paraphrases=1, test_paraphrases=1, style="alt"
    )
    facts = load_facts(tmp_path / "many")
    assert s["n_facts"] == 600 == len({f["name"] for f in facts}) == len({f["description"] for f in facts})
    with pytest.raises(DataError, match="<= 44"):
        generate_reversal_dataset(tmp_path, train_paraphrases=35, test_paraphrases=10, style="alt")
    with pytest.raises(DataError, match="at most"):
        generate_reversal_dataset(tmp_path, facts_per_subset=400, style="alt")
    # few templates: only the forms the rows use are recorded
    generate_reversal_dataset(
        tmp_path / "one", facts_per_subset=2, train_paraphrases=1, test_paraphrases=1, style="alt", seed=3
    )
    rows = [r for s in DATA_FILES for r in _rows(tmp_path / "one", s)]
    for f in load_facts(tmp_path / "one"):
        assert f["descriptions"][0] == f["description"]
        for g in f["descriptions"][1:]:
            assert any(g.lower() in (r["prompt"] + r["completion"]).lower() for r in rows)


def test_load_facts_checks_descriptions(tmp_path):
    (tmp_path / "facts.jsonl").write_text('{"subset": "p2d", "name": "A B", "description": "x", "descriptions": "x"}\n')
    with pytest.raises(DataError, match="'descriptions' must be a list of strings"):
        load_facts(tmp_path)


# --- independence from the default style ------------------------------------------------------------


def _shape(t: str) -> str:
    return re.sub(r"\{\w+\}", "{}", t).lower()


def test_alt_shares_no_list_or_template_with_default():
    alt_names = set(A.FIRST_NAMES) | set(A.MIDDLE_NAMES) | set(A.LAST_NAMES) | set(A.MONONYMS)
    assert not alt_names & (set(V.FIRST_NAMES) | set(V.LAST_NAMES))
    assert not {n.lower() for n in alt_names} & {n.lower() for n in set(V.FIRST_NAMES) | set(V.LAST_NAMES)}
    assert not set(A.ROLES) & set(V.ROLES)
    assert not set(A.CONTINUATIONS) & set(V.CONTINUATIONS)
    assert not set(A.SETTINGS) & set(V.QUALIFIERS)
    assert not {o for *_, o in A.DEEDS} & {o for _, o in V.ACHIEVEMENTS}
    default_shapes = {_shape(t) for t in V.N2D_TEMPLATES + V.D2N_TEMPLATES}
    assert not {_shape(p) for _, p in A.N2D_TEMPLATES} & default_shapes
    assert not {_shape(t) for t in A.D2N_TEMPLATES} & default_shapes
    # no list holds a duplicate
    for lst in (A.FIRST_NAMES, A.MIDDLE_NAMES, A.LAST_NAMES, A.MONONYMS, A.ROLES, A.SETTINGS, A.CONTINUATIONS):
        assert len(set(lst)) == len(lst)


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_style(tmp_path, capsys):
    from bico.cli import main

    assert (
        main(
            [
                "data",
                "reversal",
                "--out",
                str(tmp_path / "a"),
                "--facts",
                "3",
                "--train-paraphrases",
                "2",
                "--test-paraphrases",
                "2",
                "--style",
                "alt",
            ]
        )
        == 0
    )
    assert "style alt" in capsys.readouterr().out
    assert "descriptions" in load_facts(tmp_path / "a")[0]
    assert main(["data", "reversal", "--out", str(tmp_path / "b"), "--facts", "3"]) == 0
    assert ", style" not in capsys.readouterr().out and "descriptions" not in load_facts(tmp_path / "b")[0]


# --- entity spans of paraphrased descriptions ----------------------------------------------------------


def _spans_text(obj, ids, ranges):
    return ["".join(obj.piece(t) for t in ids[a:b]).strip().lower() for a, b in ranges]


def _covers(span: str, form: str) -> bool:
    # the range is the form plus at most glued punctuation of the token that ends it
    return form.lower() in span and len(span) - len(form) <= 2


def test_entity_ranges_find_every_description_form(alt, tokenizer):
    from bico.data.corpus import _fact_meta
    from bico.objectives import build_objective

    d, _ = alt
    facts = load_facts(d)
    obj = build_objective("ntp", tokenizer, {})
    rows = _rows(d, "all_prompts_train") + _rows(d, "p2d_reverse_prompts_test") + _rows(d, "d2p_reverse_prompts_test")
    by_name = {f["name"]: f for f in facts}
    n_short = 0
    for r, n in zip(rows, fact_groups(rows, facts)):
        f = by_name[n]
        ids = tokenizer(r["prompt"] + r["completion"], add_special_tokens=False).input_ids
        meta = _fact_meta(f)
        names = _spans_text(obj, ids, obj.entity_ranges(ids, meta, keys=("name",)))
        assert names and all(_covers(s, f["name"]) for s in names), (r, names)
        descs = _spans_text(obj, ids, obj.entity_ranges(ids, meta, keys=("description",)))
        assert len(descs) == 1 and any(_covers(descs[0], g) for g in f["descriptions"]), (r, descs)
        # the canonical description alone misses the rows that use another form
        canonical = obj.entity_ranges(ids, {"name": f["name"], "description": f["description"]}, keys=("description",))
        if f["description"].lower() not in (r["prompt"] + r["completion"]).lower():
            n_short += 1
            assert not any(_covers(s, g) for s in _spans_text(obj, ids, canonical) for g in f["descriptions"])
    assert n_short > 0


def test_corpus_meta_and_bico_mask_a_paraphrased_description(alt_small, tokenizer):
    import torch

    from bico.config import load_recipe
    from bico.objectives import Example, build_objective
    from bico.training.examples import load_training_rows

    d, _ = alt_small
    corpus, _ = load_training_rows(load_recipe(None, [f"data.dir={d}", "data.train_files=[p2d_prompts_train.jsonl]"]))
    rows = list(corpus)
    facts = {f["name"]: f for f in load_facts(d)}
    assert all(r["meta"]["descriptions"] == facts[r["meta"]["name"]]["descriptions"] for r in rows)
    row = next(r for r in rows if r["meta"]["description"] not in r["completion"])  # a vp or gerund row
    obj = build_objective("bico", tokenizer, {"entity_mask": 1.0, "entity": "description", "mask_ratio": 0.01})
    p_ids = tokenizer(row["prompt"]).input_ids
    c_ids = tokenizer(row["completion"], add_special_tokens=False).input_ids
    ex = Example(row["prompt"], row["completion"], p_ids, c_ids, row["meta"])
    s = obj.encode(ex, random.Random(0), "denoise")
    original = torch.tensor(p_ids + c_ids + [tokenizer.eos_token_id])
    masked = (s.input_ids != original).nonzero().flatten().tolist()
    hidden = "".join(obj.piece(int(t)) for t in original[masked[0] : masked[-1] + 1]).strip().lower()
    form = next(g for g in row["meta"]["descriptions"] if g in row["completion"])
    assert _covers(hidden, form)


def test_every_name_word_decodes_token_by_token(tokenizer):
    # entity_ranges joins per-token decodes; a letter split across byte tokens would decode to
    # U+FFFD and hide the name, so the lists hold only letters the tokenizer keeps whole
    for word in A.FIRST_NAMES + A.MIDDLE_NAMES + A.LAST_NAMES + A.MONONYMS:
        for text in (word, f" {word}", f"({word}"):
            ids = tokenizer(text, add_special_tokens=False).input_ids
            assert "".join(tokenizer.decode([i]) for i in ids) == text, text
