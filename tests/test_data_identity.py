"""data.identity_bridge (bico/data/identity.py): the rows it adds, its one-line errors, and that leaving it
off changes nothing for runs made before the key existed."""

import pytest


def test_identity_bridge_rows(reversal_dir):
    from bico.config import load_recipe
    from bico.training.examples import load_training_rows

    base = [f"data.dir={reversal_dir}", "data.train_files=[p2d_prompts_train.jsonl]"]
    plain = list(load_training_rows(load_recipe(None, base))[0])  # the corpus, as row dicts
    rows, sources = load_training_rows(
        load_recipe(
            None,
            base
            + [
                'data.identity_bridge={"rate": 0.5, "templates": ["The name of {name} is {name}.", "{description} is {description}."]}'
            ],
        )
    )
    added, names = rows[len(plain) :], {r["meta"]["name"] for r in plain}
    assert rows[: len(plain)] == plain and len(sources) == len(rows)
    per_fact = len(plain) // len(names)
    assert len(added) == len(names) * max(1, round(0.5 * per_fact))
    for row in added:
        name, desc = row["meta"]["name"], row["meta"]["description"]
        assert (row["prompt"], row["completion"]) in {
            (f"The name of {name} is", f" {name}."),
            (f"{desc} is", f" {desc}."),
        }
    default, _ = load_training_rows(load_recipe(None, base + ["data.identity_bridge.rate=0.1"]))
    assert default[-1]["prompt"].startswith("The name of ") and len(default) - len(plain) == len(names) * round(
        0.1 * per_fact
    )


@pytest.mark.parametrize(
    "value,match",
    [
        ("data.identity_bridge.rate=-1", "rate must be a number > 0"),
        ("data.identity_bridge.ratio=0.1", "valid: rate, templates"),
        ('data.identity_bridge.templates=["Hello {who}"]', "must use {name} and/or {description} only"),
        ("data.identity_bridge.templates=[]", "non-empty list of strings"),
    ],
)
def test_identity_bridge_errors_are_one_line(value, match):
    from bico.config import RecipeError, load_recipe

    with pytest.raises(RecipeError, match=match) as err:
        load_recipe(None, [value])
    assert "\n" not in str(err.value)


def test_identity_bridge_off_matches_runs_made_before_the_key():
    from bico.config import load_recipe
    from bico.tools import ablate
    from bico.training.rundir import recipe_differences

    now = load_recipe(None, []).to_dict()
    before = load_recipe(None, []).to_dict()
    del before["data"]["identity_bridge"]
    assert recipe_differences(before, now) == []  # resume of an older run: nothing changed
    assert recipe_differences(before, load_recipe(None, ["data.identity_bridge.rate=0.2"]).to_dict())
    assert ablate._comparable({"recipe": before}) == ablate._comparable({"recipe": now})  # finished cells reused
