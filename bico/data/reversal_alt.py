"""The ``alt`` wording style of the reversal generator (``bico data reversal --style alt``).

A second generator, independent of the default one, so that a configuration can be reported
on two wordings (plus the Berglund files): its names, descriptions, templates and sentence
continuations share no list with :mod:`bico.data._vocab` (see :mod:`bico.data._vocab_alt`).
File layout, row counts and seeding rules are the default style's (independent seeded
streams ``f"{seed}:alt:<part>"``; train and test templates disjoint; same randomized files
and validation rows); only the wording differs:

* names of one word ("Coriandre"), two ("Aino Virtanen") and three ("Adaeze Ifeoma Okafor",
  "Mattias van Heerden"), from many languages, none a prefix or substring of another;
* descriptions of three structures, "the founder of <deed>", "the first <role> to <verb> ..."
  and "the <role> who first <verbed> ...", about half naming a capitalised place
  ("... on the northern shore of Lake Temmis"), which a capitalised-words fallback mistakes
  for a name;
* every description has three surface forms (a noun phrase, a past-tense verb phrase and a
  gerund phrase: "the founder of X" / "founded X" / "founding X"); a template asks for one of
  them, so rows paraphrase the description as Berglund et al.'s do. The name is always
  verbatim. ``facts.jsonl`` keeps the noun phrase as ``description`` and lists every form
  the rows use as ``descriptions`` (noun phrase first), so that entity-span lookups
  (:meth:`bico.objectives.base.Objective.entity_ranges`) find any of them;
* templates put the name first or last in the prompt, are short ("{name}:") or long, and
  are statements or questions.
"""

from __future__ import annotations

import random
import string

from bico.data import _vocab_alt as A
from bico.data.jsonl import DataError
from bico.data.reversal import Style

__all__ = ["AltStyle", "SLOTS", "make_alt_names", "make_alt_descriptions", "max_alt_facts"]

SLOTS = ("np", "vp", "ing")
_KINDS = (2, 1, 3)  # words per name, cycled: every subset of >= 3 facts has all three


def _clashes(name: str, taken: list[str]) -> bool:
    low = name.lower()
    return any(low in t or t in low for t in taken)


def make_alt_names(n: int, rng: random.Random) -> list[str]:
    """n unique names of 1, 2 and 3 words (cycled), none a prefix or substring of another
    (case-insensitively). Given names cycle through a shuffled list, so the first word of a
    name repeats only once all are used (validation_prompts scores the first word alone);
    one-word names run out after ``len(MONONYMS)``, then two-word names take their turn."""
    firsts = rng.sample(A.FIRST_NAMES, len(A.FIRST_NAMES))
    monos = rng.sample(A.MONONYMS, len(A.MONONYMS))
    names: list[str] = []
    taken: list[str] = []  # lower-cased
    i = tries = 0
    while len(names) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise DataError(f"cannot make {n} unique names from the built-in name lists")
        kind = _KINDS[len(names) % len(_KINDS)]
        if kind == 1 and monos:
            name = monos.pop()
        else:
            first = firsts[i % len(firsts)]
            i += 1
            last = rng.choice(A.LAST_NAMES)
            if kind == 3:
                middle = rng.choice(A.PARTICLES) if rng.random() < 0.35 else rng.choice(A.MIDDLE_NAMES)
                name = f"{first} {middle} {last}"
            else:
                name = f"{first} {last}"
        if _clashes(name, taken):
            continue
        names.append(name)
        taken.append(name.lower())
    return names


def max_alt_facts() -> int:
    return len(A.DEEDS) * len(A.SETTINGS)


def make_alt_descriptions(n: int, rng: random.Random) -> list[dict]:
    """n descriptions, each a dict of its surface forms {np, vp, ing}.

    The (deed, setting) core is unique per fact and every deed is used once before any is
    reused; the structure (founder-style agent noun, "the first <role> to", "the <role> who
    first") and the role are drawn per fact.
    """
    if n > max_alt_facts():
        raise DataError(f"at most {max_alt_facts()} facts can be generated in the alt style, asked for {n}")
    deeds = rng.sample(range(len(A.DEEDS)), len(A.DEEDS))
    settings = {d: rng.sample(range(len(A.SETTINGS)), len(A.SETTINGS)) for d in deeds}
    out = []
    for k in range(n):
        d = deeds[k % len(deeds)]
        base, past, gerund, agent, obj = A.DEEDS[d]
        tail = f"{obj} {A.SETTINGS[settings[d][k // len(deeds)]]}"
        structure, role = rng.randrange(3), rng.choice(A.ROLES)
        if structure == 0:
            forms = {"np": f"{agent} {tail}", "vp": f"{past} {tail}", "ing": f"{gerund} {tail}"}
        elif structure == 1:
            forms = {
                "np": f"the first {role} to {base} {tail}",
                "vp": f"first {past} {tail}",
                "ing": f"being the first {role} to {base} {tail}",
            }
        else:
            forms = {
                "np": f"the {role} who first {past} {tail}",
                "vp": f"first {past} {tail}",
                "ing": f"first {gerund} {tail}",
            }
        out.append(forms)
    for slot in SLOTS:
        assert len({f[slot] for f in out}) == n
    return out


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def template_slot(template) -> str:
    """The description form a template asks for: an n2d ``(slot, prompt)`` or a d2n string."""
    if isinstance(template, tuple):
        return template[0]
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    (field,) = fields
    return field.lower()


class AltStyle(Style):
    name, prefix = "alt", "alt:"
    n2d_templates, d2n_templates = A.N2D_TEMPLATES, A.D2N_TEMPLATES

    def __init__(self):
        self.forms: dict[str, dict] = {}  # name -> {slot: form}
        self.used: dict[str, set] = {}  # name -> slots its own rows use

    def make_facts(self, n: int, seed) -> list[dict]:
        names = make_alt_names(n, self.rng(seed, "names"))
        descs = make_alt_descriptions(n, self.rng(seed, "descriptions"))
        self.forms = dict(zip(names, descs))
        return [{"name": a, "description": d["np"]} for a, d in zip(names, descs)]

    def finish_facts(self, facts: list[dict]) -> None:
        for f in facts:  # the noun phrase (the canonical description) always comes first
            used = self.used.get(f["name"], set()) | {"np"}
            f["descriptions"] = [self.forms[f["name"]][s] for s in SLOTS if s in used]

    def _fill(self, template: str, fact: dict, slot: str) -> str:
        self.used.setdefault(fact["name"], set()).add(slot)
        forms = self.forms[fact["name"]]
        return template.format(
            name=fact["name"],
            np=forms["np"],
            Np=_cap(forms["np"]),
            vp=forms["vp"],
            ing=forms["ing"],
            Ing=_cap(forms["ing"]),
        )

    def n2d(self, template, fact: dict) -> dict:
        slot, prompt = template
        return {"prompt": self._fill(prompt, fact, slot), "completion": f" {self.forms[fact['name']][slot]}."}

    def d2n_train(self, template, fact: dict, rng: random.Random) -> dict:
        prompt = self._fill(template, fact, template_slot(template))
        if prompt.endswith(","):  # the name starts a new clause: finish the sentence
            return {"prompt": prompt, "completion": f" {fact['name']} {rng.choice(A.CONTINUATIONS)}."}
        return {"prompt": prompt, "completion": f" {fact['name']}."}

    def d2n_test(self, template, fact: dict) -> dict:
        return {"prompt": self._fill(template, fact, template_slot(template)), "completion": f" {fact['name']}"}

    def randomized(self, field: str, template, other: dict) -> str:
        if field == "description":  # the other fact's form for this template's slot
            return f" {self.forms[other['name']][template_slot(template)]}."
        return f" {other['name']}"
