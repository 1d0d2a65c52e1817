"""Seeded generator of fictitious-facts reversal data in the design of Berglund et al.

Layout (same file names and row order as ``experiment1``): three subsets of F facts.
``p2d`` facts are trained only name -> description, ``d2p`` only description -> name,
``both`` in both orders. Each direction has T training and K held-out test paraphrase
templates, shared by all facts; test templates never occur in training. Row counts:

    p2d/d2p_prompts_train  F*T each       both_prompts_train  2*F*T
    all_prompts_train      4*F*T          (F=30, T=30 -> 3600, as in the original)
    p2d/d2p_prompts_test, p2d/d2p_reverse_prompts_test(_randomized), validation  F*K each
    both_prompts_test      2*F*K

Unlike the original (which paraphrases descriptions, e.g. "directed ..." vs "the director
of ..."), every row of the default style contains the canonical description verbatim, so the entity spans
recorded in ``facts.jsonl`` can be located exactly in every row. Also, description -> name
test rows (including those in both_prompts_test) end at the name, where the original's
both_prompts_test continues the sentence.

Two wording styles (``style=``, ``bico data reversal --style``): ``default`` (the above;
its output is fixed byte for byte) and ``alt`` (:mod:`bico.data.reversal_alt`), a second,
independent generator with other names, descriptions and templates whose rows paraphrase
the description (noun phrase, verb phrase, gerund); facts.jsonl then lists every surface
form used as ``descriptions``. Same layout, row counts and seeding rules in both.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

from bico.data import _vocab as V
from bico.data.jsonl import DataError, load_jsonl
from bico.io_utils import atomic_write, atomic_write_jsonl

__all__ = [
    "SUBSETS",
    "DATA_FILES",
    "generate_reversal_dataset",
    "load_facts",
    "load_facts_for_berglund",
    "make_names",
    "make_descriptions",
    "STYLES",
    "Style",
    "get_style",
]

SUBSETS = ("p2d", "d2p", "both")
DATA_FILES = (
    "all_prompts_train",
    "p2d_prompts_train",
    "d2p_prompts_train",
    "both_prompts_train",
    "p2d_prompts_test",
    "d2p_prompts_test",
    "p2d_reverse_prompts_test",
    "d2p_reverse_prompts_test",
    "p2d_reverse_prompts_test_randomized",
    "d2p_reverse_prompts_test_randomized",
    "both_prompts_test",
    "validation_prompts",
)
FACTS_FILE = "facts.jsonl"
README = "README.txt"


def make_names(n: int, rng: random.Random) -> list[str]:
    """n unique "First Last" names, none a string prefix of another.

    First names are cycled through a shuffled list so they repeat only once all are used
    (validation_prompts scores the first name alone).
    """
    firsts = list(V.FIRST_NAMES)
    rng.shuffle(firsts)
    by_first: dict[str, list[str]] = {}
    names: list[str] = []
    i = 0
    max_tries = 50 * n + 1000
    while len(names) < n:
        if i >= max_tries:
            raise DataError(f"cannot make {n} unique names from the built-in name lists")
        first = firsts[i % len(firsts)]
        i += 1
        last = rng.choice(V.LAST_NAMES)
        taken = by_first.setdefault(first, [])
        # Same first name is required for one full name to be a prefix of another.
        if any(t.startswith(last) or last.startswith(t) for t in taken):
            continue
        taken.append(last)
        names.append(f"{first} {last}")
    return names


def max_facts() -> int:
    return len(V.ACHIEVEMENTS) * len(V.QUALIFIERS)


def make_descriptions(n: int, rng: random.Random) -> list[str]:
    """n unique lower-case descriptions: "the <adj> <role> who <verb> <extent> <object> <where>".

    The (achievement, qualifier) core is unique per fact and every achievement is used once
    before any is reused, so facts differ in substance, not just in an adjective.
    """
    if n > max_facts():
        raise DataError(f"at most {max_facts()} facts can be generated, asked for {n}")
    achievements = list(range(len(V.ACHIEVEMENTS)))
    rng.shuffle(achievements)
    qual_orders = {a: rng.sample(range(len(V.QUALIFIERS)), len(V.QUALIFIERS)) for a in achievements}
    out: list[str] = []
    for k in range(n):
        a = achievements[k % len(achievements)]
        q = qual_orders[a][k // len(achievements)]
        verb, obj = V.ACHIEVEMENTS[a]
        out.append(
            f"the {rng.choice(V.ADJECTIVES)} {rng.choice(V.ROLES)} who {verb} "
            f"{rng.choice(V.EXTENTS)} {obj} {V.QUALIFIERS[q]}"
        )
    assert len(set(out)) == n
    return out


def _fill(template: str, fact: dict) -> str:
    d = fact["description"]
    return template.format(name=fact["name"], desc=d, Desc=d[:1].upper() + d[1:])


def _n2d(template: str, fact: dict) -> dict:
    return {"prompt": _fill(template, fact), "completion": f" {fact['description']}."}


def _d2n_train(template: str, fact: dict, rng: random.Random) -> dict:
    prompt = _fill(template, fact)
    if prompt.endswith(","):  # the name starts a new clause: finish the sentence
        return {"prompt": prompt, "completion": f" {fact['name']} {rng.choice(V.CONTINUATIONS)}."}
    return {"prompt": prompt, "completion": f" {fact['name']}."}


def _d2n_test(template: str, fact: dict) -> dict:
    return {"prompt": _fill(template, fact), "completion": f" {fact['name']}"}


def _randomize(rows: list[dict], facts: list[dict], templates: list, field: str, rng, style) -> list[dict]:
    """Same prompts; completion taken from another fact of the same subset."""
    out = []
    per_fact = len(templates)
    for i, row in enumerate(rows):
        own = i // per_fact
        j = rng.randrange(len(facts) - 1)
        j += j >= own
        out.append({"prompt": row["prompt"], "completion": style.randomized(field, templates[i % per_fact], facts[j])})
    return out


class Style:
    """How one wording style makes facts and rows (the ``default`` style; ``alt`` in
    :mod:`bico.data.reversal_alt`). Seeded streams are ``f"{seed}:{prefix}<part>"``."""

    name, prefix = "default", ""
    n2d_templates, d2n_templates = V.N2D_TEMPLATES, V.D2N_TEMPLATES

    def rng(self, seed, part: str) -> random.Random:
        return random.Random(f"{seed}:{self.prefix}{part}")

    def make_facts(self, n: int, seed) -> list[dict]:
        names = make_names(n, self.rng(seed, "names"))
        descs = make_descriptions(n, self.rng(seed, "descriptions"))
        return [{"name": a, "description": d} for a, d in zip(names, descs)]

    def finish_facts(self, facts: list[dict]) -> None:
        """Called once every row is made, before facts.jsonl is written (alt: record the
        description forms each fact's rows use)."""

    def n2d(self, template, fact: dict) -> dict:
        return _n2d(template, fact)

    def d2n_train(self, template, fact: dict, rng: random.Random) -> dict:
        return _d2n_train(template, fact, rng)

    def d2n_test(self, template, fact: dict) -> dict:
        return _d2n_test(template, fact)

    def randomized(self, field: str, template, other: dict) -> str:
        """Completion of a randomized row: ``other`` fact's ``field``, in the row's template."""
        return f" {other[field]}." if field == "description" else f" {other[field]}"


STYLES = ("default", "alt")


def get_style(name: str) -> Style:
    if name == "default":
        return Style()
    if name == "alt":
        from bico.data.reversal_alt import AltStyle

        return AltStyle()
    raise DataError(f"unknown data style {name!r}; known: {', '.join(STYLES)}")


def generate_reversal_dataset(
    out_dir,
    *,
    facts_per_subset: int = 30,
    train_paraphrases: int = 30,
    test_paraphrases: int = 10,
    seed: int = 0,
    style: str = "default",
    replace: bool = True,
) -> dict:
    """Write the 12 experiment1-style files plus facts.jsonl and README.txt to ``out_dir``.

    ``style`` picks the wording: ``default`` (bico's original generator) or ``alt`` (an
    independent second one: other names, descriptions and templates; descriptions
    paraphrased across rows, see :mod:`bico.data.reversal_alt`).
    Only these file names are (atomically) replaced; other files in the dir are left alone.
    ``replace=False`` (``bico data reversal`` without ``--force``): if any of them exists, an
    error and nothing written (they may be a user's own files, or the data a run was trained on).
    Returns a summary dict with the arguments and the row count of every file.
    """
    st = get_style(style)
    F, T, K = int(facts_per_subset), int(train_paraphrases), int(test_paraphrases)
    if F < 2:
        raise DataError("facts_per_subset must be >= 2 (randomized files need another fact)")
    if T < 1 or K < 1:
        raise DataError("train_paraphrases and test_paraphrases must be >= 1")
    limit = min(len(st.n2d_templates), len(st.d2n_templates))
    if T + K > limit:
        raise DataError(f"train_paraphrases + test_paraphrases must be <= {limit}, got {T + K}")

    # Independent streams: changing e.g. K does not change the names or descriptions.
    facts = [{"subset": SUBSETS[i // F], **f} for i, f in enumerate(st.make_facts(3 * F, seed))]
    by_subset = {s: facts[i * F : (i + 1) * F] for i, s in enumerate(SUBSETS)}
    trng = st.rng(seed, "templates")
    n2d_all = trng.sample(st.n2d_templates, len(st.n2d_templates))
    d2n_all = trng.sample(st.d2n_templates, len(st.d2n_templates))
    n2d_test, n2d_train = n2d_all[:K], n2d_all[K : K + T]
    d2n_test, d2n_train = d2n_all[:K], d2n_all[K : K + T]
    crng = st.rng(seed, "continuations")
    rrng = st.rng(seed, "randomized")

    p2d, d2p, both = by_subset["p2d"], by_subset["d2p"], by_subset["both"]
    files: dict[str, list[dict]] = {}
    files["p2d_prompts_train"] = [st.n2d(t, f) for f in p2d for t in n2d_train]
    files["d2p_prompts_train"] = [st.d2n_train(t, f, crng) for f in d2p for t in d2n_train]
    files["both_prompts_train"] = [st.n2d(t, f) for f in both for t in n2d_train] + [
        st.d2n_train(t, f, crng) for f in both for t in d2n_train
    ]
    files["all_prompts_train"] = files["p2d_prompts_train"] + files["d2p_prompts_train"] + files["both_prompts_train"]
    files["p2d_prompts_test"] = [st.n2d(t, f) for f in p2d for t in n2d_test]
    files["d2p_prompts_test"] = [st.d2n_test(t, f) for f in d2p for t in d2n_test]
    files["p2d_reverse_prompts_test"] = [st.d2n_test(t, f) for f in p2d for t in d2n_test]
    files["d2p_reverse_prompts_test"] = [st.n2d(t, f) for f in d2p for t in n2d_test]
    files["p2d_reverse_prompts_test_randomized"] = _randomize(
        files["p2d_reverse_prompts_test"], p2d, d2n_test, "name", rrng, st
    )
    files["d2p_reverse_prompts_test_randomized"] = _randomize(
        files["d2p_reverse_prompts_test"], d2p, n2d_test, "description", rrng, st
    )
    files["both_prompts_test"] = [st.n2d(t, f) for f in both for t in n2d_test] + [
        st.d2n_test(t, f) for f in both for t in d2n_test
    ]
    # As in the original: reverse-test prompts of p2d, target = bare first name (no space).
    files["validation_prompts"] = [
        {"prompt": r["prompt"], "completion": f["name"].split()[0]}
        for r, f in zip(files["p2d_reverse_prompts_test"], (f for f in p2d for _ in d2n_test))
    ]
    st.finish_facts(facts)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output path exists and is not a directory: {out}")
    existing = [p.name for p in output_files(out) if p.exists()]
    if existing and not replace:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise DataError(
            f"--out {out} already holds {shown}, which bico data reversal would replace; "
            "choose another --out, or add --force to replace them"
        )
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for stem in DATA_FILES:
        counts[f"{stem}.jsonl"] = atomic_write_jsonl(out / f"{stem}.jsonl", files[stem])
    counts[FACTS_FILE] = atomic_write_jsonl(out / FACTS_FILE, facts)
    summary = {
        "out_dir": str(out),
        "seed": seed,
        "style": st.name,
        "facts_per_subset": F,
        "train_paraphrases": T,
        "test_paraphrases": K,
        "n_facts": len(facts),
        "files": counts,
    }
    atomic_write(out / README, _readme(summary))
    return summary


def output_files(out_dir) -> list[Path]:
    """The files :func:`generate_reversal_dataset` writes (replacing them) into ``out_dir``."""
    return [Path(out_dir) / name for name in [f"{stem}.jsonl" for stem in DATA_FILES] + [FACTS_FILE, README]]


def _readme(s: dict) -> str:
    lines = [
        "Fictitious-facts reversal data generated by bico (bico.data.reversal).",
        (
            f"Command: bico data reversal --out DIR --facts {s['facts_per_subset']} "
            f"--train-paraphrases {s['train_paraphrases']} --test-paraphrases {s['test_paraphrases']} "
            f"--seed {s['seed']}" + ("" if s["style"] == "default" else f" --style {s['style']}")
        ),
        f"seed={s['seed']} facts_per_subset={s['facts_per_subset']} "
        f"train_paraphrases={s['train_paraphrases']} test_paraphrases={s['test_paraphrases']} "
        f"facts={s['n_facts']}",
        "Same file names and design as experiment1 of Berglund et al. (The Reversal Curse):",
        "subsets p2d (trained name->description), d2p (description->name), both (both orders);",
        "test paraphrase templates are held out from training. Rows are {prompt, completion};",
        "completions start with a space, except validation_prompts (bare first name, as in the",
        "original). facts.jsonl lists every fact as {subset, name, description}.",
        "Names, descriptions and templates are invented; any resemblance to real people is chance.",
    ]
    if s["style"] != "default":
        lines += [
            f"Style {s['style']}: bico's second, independent wording. Descriptions are paraphrased",
            'across rows; facts.jsonl also lists each fact\'s surface forms as "descriptions".',
        ]
    lines += [
        "",
        "rows per file:",
    ]
    lines += [f"  {k}: {v}" for k, v in s["files"].items()]
    return "\n".join(lines) + "\n"


# --- facts of an existing data dir -------------------------------------------------------


def load_facts(data_dir) -> list[dict] | None:
    """Facts of a data dir: facts.jsonl if present, else recovered from Berglund files.

    A fact is {subset, name, description}, with an optional ``descriptions`` list of the
    description's surface forms (written by the alt style)."""
    path = Path(data_dir) / FACTS_FILE
    if path.is_file():
        facts = load_jsonl(path, required=("subset", "name", "description"))
        for i, f in enumerate(facts):  # optional: other surface forms of the description (alt style)
            forms = f.get("descriptions")
            if forms is not None and not (isinstance(forms, list) and all(isinstance(x, str) for x in forms)):
                raise DataError(f"{path}: fact {i + 1}: 'descriptions' must be a list of strings")
        return facts
    return load_facts_for_berglund(data_dir)


def _norm_desc(completion: str) -> str:
    c = completion.strip()
    return c[:-1] if c.endswith(".") else c


def _contains_name(text: str, name: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text) is not None


def load_facts_for_berglund(data_dir) -> list[dict] | None:
    """Recover {subset, name, description} for the original experiment1 files, or None.

    Names: the completions of p2d_reverse_prompts_test (p2d) and d2p_prompts_test (d2p) are
    bare names. For ``both``, the name->description test templates are learned from
    p2d_prompts_test (prompt with the known name cut out) and matched against
    both_prompts_test prompts. Description: the most frequent name->description completion
    of rows whose prompt contains the name (its canonical form "the ..."), minus the final
    period; it must also occur verbatim in a description->name prompt of the same subset.
    Any inconsistency (missing file, count mismatch, duplicate) returns None.
    """
    d = Path(data_dir)
    need = (
        "p2d_prompts_train",
        "p2d_prompts_test",
        "p2d_reverse_prompts_test",
        "d2p_prompts_train",
        "d2p_prompts_test",
        "d2p_reverse_prompts_test",
        "both_prompts_train",
        "both_prompts_test",
    )
    try:
        rows = {s: load_jsonl(d / f"{s}.jsonl") for s in need}
    except DataError:
        return None
    names = {
        "p2d": list(dict.fromkeys(r["completion"].strip() for r in rows["p2d_reverse_prompts_test"])),
        "d2p": list(dict.fromkeys(r["completion"].strip() for r in rows["d2p_prompts_test"])),
    }
    templates = set()
    for r in rows["p2d_prompts_test"]:
        hits = [n for n in names["p2d"] if _contains_name(r["prompt"], n)]
        if len(hits) != 1 or r["prompt"].count(hits[0]) != 1:
            return None
        templates.add(tuple(r["prompt"].split(hits[0])))
    both = []
    for r in rows["both_prompts_test"]:
        p = r["prompt"]
        for pre, post in templates:
            if p.startswith(pre) and p.endswith(post) and len(p) > len(pre) + len(post):
                both.append(p[len(pre) : len(p) - len(post)])
                break
    names["both"] = list(dict.fromkeys(both))
    n2d_rows = {
        "p2d": rows["p2d_prompts_train"] + rows["p2d_prompts_test"],
        "d2p": rows["d2p_reverse_prompts_test"],
        "both": rows["both_prompts_train"] + rows["both_prompts_test"],
    }
    d2n_prompts = {
        "p2d": [r["prompt"].lower() for r in rows["p2d_reverse_prompts_test"]],
        "d2p": [r["prompt"].lower() for r in rows["d2p_prompts_train"] + rows["d2p_prompts_test"]],
        "both": [r["prompt"].lower() for r in rows["both_prompts_train"] + rows["both_prompts_test"]],
    }
    facts = []
    for subset in SUBSETS:
        for name in names[subset]:
            votes = Counter(
                _norm_desc(r["completion"])
                for r in n2d_rows[subset]
                if name in r["prompt"] and _contains_name(r["prompt"], name)
            )
            if not votes:
                return None
            (desc, top), *rest = votes.most_common(2)
            if (rest and rest[0][1] == top) or not desc.lower().startswith("the "):
                return None
            if not any(desc.lower() in p for p in d2n_prompts[subset]):
                return None
            facts.append({"subset": subset, "name": name, "description": desc})
    sizes = {len(names[s]) for s in SUBSETS}
    all_names = [f["name"] for f in facts]
    all_descs = [f["description"] for f in facts]
    if len(sizes) != 1 or 0 in sizes or len(set(all_names)) != len(all_names) or len(set(all_descs)) != len(all_descs):
        return None
    return facts
