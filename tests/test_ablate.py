"""``bico ablate``: the shipped CPU grid end to end (shrunk), crash-safe reruns, statistics."""

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from bico.config import RecipeError
from bico.evaluation import stats
from bico.tools import ablate, ablate_report
from helpers import TINY_MODEL

ROOT = Path(__file__).resolve().parent.parent
TINY_SPEC = ROOT / "recipes" / "ablations" / "reversal_objectives_tiny.yaml"
# The shipped tiny grid, made seconds-long: a smaller model, fewer facts, two epochs.
SHRINK = [
    *TINY_MODEL,
    "train.epochs=2",
    "eval.max_new_tokens=8",
    "generate_data={facts_per_subset: 2, train_paraphrases: 4, test_paraphrases: 2, seed: 0}",
]


def test_mean_and_t_interval():
    mean, ci = stats.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and ci == pytest.approx(4.303 / math.sqrt(3))  # sd 1, t(0.975, 2) = 4.303
    assert stats.mean_ci([0.5]) == (0.5, stats.mean_ci([0.5])[1]) and math.isnan(stats.mean_ci([0.5])[1])
    assert stats.t975(1) == 12.706 and stats.t975(1000) == pytest.approx(1.9623, abs=1e-3)


def test_markdown_one_seed_and_several_seeds():
    def result(group, seed, em):
        metrics = {"exact_match": em, "substring_match": em, "logprob_win_rate": 0.5, "mean_logprob": -1.0, "n": 10}
        return {
            "group": group,
            "objective": group,
            "options": {},
            "seed": seed,
            "tokens": 100,
            "wall_s": 1.0,
            "train_s": 1.0,
            "splits": {"p2d_prompts_test": metrics, "p2d_reverse_prompts_test": metrics},
        }

    cells = [SimpleNamespace(group="a")]  # aggregate() reads only the group of each cell
    one = ablate_report.markdown(ablate_report.aggregate([result("a", 0, 0.25)], cells))
    assert one.startswith("Exact match, one seed (no interval).") and "| a | 0.250 | 0.250 | 0.250 |" in one
    two = ablate_report.markdown(ablate_report.aggregate([result("a", 0, 0.2), result("a", 1, 0.4)], cells))
    assert two.startswith("Exact match, mean ± 95% CI over 2 seeds") and "0.300 ± 1.271" in two


def test_loss_curves_one_panel_per_objective(tmp_path):
    from bico.tools.ablate_plots import plot_loss_curves

    cells = []
    for group, modes in (("ntp", ["ntp"]), ("bico", ["ntp", "denoise"])):
        for seed in (0, 1):
            folder = tmp_path / f"{group}-{seed}"
            folder.mkdir()
            (folder / "metrics.jsonl").write_text(
                "".join(
                    json.dumps({"step": k, "loss": 5.0 - k / 10 + seed, "mode": modes[k % len(modes)]}) + "\n"
                    for k in range(1, 21)
                )
            )
            cells.append(
                SimpleNamespace(
                    group=group, seed=seed, recipe=SimpleNamespace(train=SimpleNamespace(output_dir=str(folder)))
                )
            )
    cells.append(
        SimpleNamespace(
            group="lost",
            seed=0,
            recipe=SimpleNamespace(  # no metrics: no panel
                train=SimpleNamespace(output_dir=str(tmp_path / "missing"))
            ),
        )
    )
    paths = plot_loss_curves(cells, tmp_path)
    assert paths["loss_png"].read_bytes()[:4] == b"\x89PNG"
    assert plot_loss_curves(cells[-1:], tmp_path / "none") == {}


def test_spec_errors(tmp_path):
    with pytest.raises(RecipeError, match="ablation spec not found"):
        ablate.load_spec(tmp_path / "missing.yaml")
    with pytest.raises(RecipeError, match="unknown ablation key"):
        ablate.load_spec(TINY_SPEC, ["grid=[1]"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("objectives: [ntp]\n")
    with pytest.raises(RecipeError, match="needs 'base'"):
        ablate.load_spec(bad)
    bad.write_text(f"base: {TINY_SPEC.parent.parent / 'demo' / 'tiny.yaml'}\nobjectives: [ntp, ntp]\n")
    with pytest.raises(RecipeError, match="labelled 'ntp'"):
        ablate.build_cells(ablate.load_spec(bad))
    bad.write_text(f"base: {TINY_SPEC.parent.parent / 'demo' / 'tiny.yaml'}\nobjectives: [{{name: nope}}]\n")
    with pytest.raises(RecipeError, match="unknown objective 'nope'; available: .*bico"):
        ablate.build_cells(ablate.load_spec(bad))
    bad.write_text(
        f"base: {TINY_SPEC.parent.parent / 'demo' / 'tiny.yaml'}\n"
        "objectives: [{name: bico, options: {mask_rate: 0.2}}]\n"
    )
    with pytest.raises(RecipeError, match="no option.s. mask_rate; its options: .*mask_ratio"):
        ablate.build_cells(ablate.load_spec(bad))


def test_grid_sweep_and_overrides(tmp_path):
    spec = ablate.load_spec(
        TINY_SPEC,
        [
            "seeds=[3]",
            "train.lr=5e-4",
            f"output_dir={tmp_path}",
            "sweep={objective.options.mask_ratio: [0.1, 0.3]}",
            "objectives=[{label: b, name: bico}, {label: m, name: mntp}]",
        ],
    )
    cells = ablate.build_cells(spec)
    assert [c.key for c in cells] == [
        "b_mask_ratio=0.1-seed3",
        "b_mask_ratio=0.3-seed3",
        "m_mask_ratio=0.1-seed3",
        "m_mask_ratio=0.3-seed3",
    ]
    for cell in cells:
        assert cell.recipe.train.lr == 5e-4 and cell.recipe.train.seed == 3 and cell.recipe.model.init_seed == 3
        assert cell.recipe.objective.options["mask_ratio"] in (0.1, 0.3)
        assert cell.recipe.data.dir == str(tmp_path / "data")
        assert Path(cell.recipe.train.output_dir).parent.name == cell.key
    assert ablate.fingerprint(cells[0], spec) != ablate.fingerprint(cells[1], spec)
    # watching a grid in TensorBoard does not make its finished cells stale
    watched = ablate.load_spec(
        TINY_SPEC,
        [
            "seeds=[3]",
            "train.lr=5e-4",
            f"output_dir={tmp_path}",
            "sweep={objective.options.mask_ratio: [0.1, 0.3]}",
            "objectives=[{label: b, name: bico}, {label: m, name: mntp}]",
            "train.report_to=[tensorboard]",
        ],
    )
    assert ablate.fingerprint(ablate.build_cells(watched)[0], watched) == ablate.fingerprint(cells[0], spec)


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_tiny_grid_end_to_end_then_rerun_skips_finished_cells(tmp_path, monkeypatch):
    """Every objective of the shipped tiny grid trains and evaluates; then a crash is simulated."""
    out = tmp_path / "grid"
    spec = ablate.load_spec(TINY_SPEC, SHRINK + [f"output_dir={out}"])
    labels = [e["label"] for e in spec["objectives"]]
    assert len(labels) == 14 and spec["seeds"] == [0, 1]
    outcome = ablate.run_ablation(spec, progress=False)
    assert outcome["failed"] == {}
    rows = _rows(out / "results.csv")
    # the base model, then every objective x (2 splits + the reverse mean), each over both seeds,
    # with finite t intervals and the pooled Wilson interval around the pooled proportion
    assert [(r["group"], r["split"]) for r in rows] == [
        (g, s)
        for g in [ablate_report.BASE] + labels
        for s in ("p2d_prompts_test", "p2d_reverse_prompts_test", "reverse (mean)")
    ]
    for r in rows:
        trained = r["group"] != ablate_report.BASE
        assert r["seeds"] == "2" and (int(r["train_tokens"]) > 0) == trained and (float(r["wall_s"]) > 0) == trained
        for metric in ablate_report.METRICS:
            assert 0 <= float(r[f"{metric}_mean"]) <= 1 and math.isfinite(float(r[f"{metric}_ci95"]))
            assert (
                0
                <= float(r[f"{metric}_pooled_low"])
                <= float(r[f"{metric}_mean"])
                <= float(r[f"{metric}_pooled_high"])
                <= 1
            )
    table = (out / "results.md").read_text()
    assert all(f"| {label} |" in table for label in labels + [ablate_report.BASE])
    for png in ("em_by_split.png", "reverse_vs_tokens.png", "loss_curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # the objectives really differ: the reverse objectives train on twice the tokens of ntp
    tokens = {r["group"]: int(r["train_tokens"]) for r in rows}
    assert tokens["reverse-entity"] > 1.5 * tokens["ntp"]
    # each cell's eval report holds the base model under "base" (one evaluation per seed, cached)
    report = json.loads((out / "cells" / "ntp-seed0" / "train" / "eval.json").read_text())
    assert report["base"]["splits"].keys() == report["splits"].keys()

    # A crash: one cell lost its result, one was half-written; a third was made from another recipe.
    cells = out / "cells"
    (cells / "ntp-seed0" / "result.json").unlink()
    (cells / "bico-seed1" / "result.json").write_text('{"cell": "bico-se')
    stale = json.loads((cells / "mntp-seed0" / "result.json").read_text())
    stale["fingerprint"]["recipe"]["train"]["lr"] = 0.5
    (cells / "mntp-seed0" / "result.json").write_text(json.dumps(stale))
    ran = []
    real = ablate.run_cell
    monkeypatch.setattr(ablate, "run_cell", lambda job: ran.append(job[0].key) or real(job))
    again = ablate.run_ablation(spec, progress=False)
    assert sorted(ran) == ["bico-seed1", "mntp-seed0", "ntp-seed0"]
    assert again["failed"] == {} and len(again["results"]) == 2 * len(labels)
    # CPU training is deterministic: the rerun cells reproduce their first results
    assert _rows(out / "results.csv") == rows or all(
        a["exact_match_mean"] == b["exact_match_mean"] for a, b in zip(_rows(out / "results.csv"), rows)
    )


def test_parallel_workers_and_cli(tmp_path, capsys):
    from bico.cli import main

    out = tmp_path / "par"
    args = ["ablate", str(TINY_SPEC), *SHRINK, "objectives=[ntp, bico]", "seeds=[0]", "--out", str(out)]
    assert main(args + ["--list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["ntp-seed0: ntp {}", "bico-seed0: bico {}"]
    assert main(args + ["--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| ntp |" in printed and "| bico |" in printed and "results.csv" in printed
    parallel = {r["cell"]: r for r in (json.loads(p.read_text()) for p in out.glob("cells/*/result.json"))}
    assert set(parallel) == {"ntp-seed0", "bico-seed0"}
    # the same cell in this process gives the same training loss as in a worker process
    spec = ablate.load_spec(TINY_SPEC, SHRINK + ["objectives=[ntp]", "seeds=[0]", f"output_dir={tmp_path / 'serial'}"])
    serial = ablate.run_ablation(spec, progress=False)["results"][0]
    assert serial["final_loss"] == pytest.approx(parallel["ntp-seed0"]["final_loss"], rel=1e-4)
    assert (
        serial["splits"]["p2d_prompts_test"]["exact_match"]
        == parallel["ntp-seed0"]["splits"]["p2d_prompts_test"]["exact_match"]
    )


def _spec(tmp_path, body: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(f"base: {ROOT / 'recipes' / 'demo' / 'tiny.yaml'}\noutput_dir: {tmp_path / 'out'}\n{body}")
    return path


def test_cell_folders_are_distinct_for_labels_the_slug_would_merge(tmp_path):
    spec = ablate.load_spec(
        _spec(
            tmp_path,
            "objectives: [{label: a b, name: ntp}, {label: a_b, name: ntp}, "
            "{label: glm-2d, name: glm}]\nseeds: [0, 1]\n",
        )
    )
    keys = [c.key for c in ablate.build_cells(spec)]
    assert len(set(keys)) == len(keys) == 6
    assert "a_b-seed0" in keys and "glm-2d-seed1" in keys  # a name that is a folder name already stays as it was
    swept = ablate.load_spec(_spec(tmp_path, "objectives: [ntp]\nsweep: {train.lr: [0.001, 0.01]}\n"))
    assert [c.key for c in ablate.build_cells(swept)] == ["ntp_lr=0.001-seed0", "ntp_lr=0.01-seed0"]


@pytest.mark.parametrize(
    "body, words",
    [
        ("seeds: [0, 0]", "seeds lists 0 twice"),
        ("seeds: []", "'seeds' must be a non-empty list"),
        ("seeds: [a]", "'seeds' must be a list of whole numbers"),
        ("sweep: {train.lr: []}", "sweep 'train.lr' must be a non-empty list"),
        ("sweep: {train.lr: 0.1}", "'sweep' must be a mapping of recipe keys to lists"),
        ("sweep: {train.lr: [0.1, 0.1]}", "sweep 'train.lr' lists 0.1 twice"),
    ],
)
def test_a_grid_with_no_cell_or_a_cell_twice_is_refused(tmp_path, body, words):
    with pytest.raises(RecipeError, match=words):
        ablate.load_spec(_spec(tmp_path, f"objectives: [ntp]\n{body}\n"))


def test_a_bad_grid_is_one_line_before_anything_runs(tmp_path, capsys):
    from bico.cli import main

    spec = _spec(tmp_path, "objectives: [ntp]\nseeds: [0, 0]\ngenerate_data: {facts_per_subset: 2}\n")
    assert main(["ablate", str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bico: error: ") and "twice" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_cell_finished_before_a_new_recipe_key_stays_finished(tmp_path):
    """A key (or a whole section, e.g. ``replay``) added later with a default that keeps the old
    behaviour does not make finished cells stale; a non-default value of it does."""
    spec = ablate.load_spec(TINY_SPEC, SHRINK + [f"output_dir={tmp_path}"])
    cell = ablate.build_cells(spec)[0]
    expected = ablate.fingerprint(cell, spec)
    old = json.loads(json.dumps(expected))
    del old["recipe"]["replay"]
    old["recipe"]["data"].pop("identity_bridge")
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"cell": cell.key, "fingerprint": old}))
    assert ablate.load_result(path, expected) is not None
    cell.recipe.replay.rows = 4
    assert ablate.load_result(path, ablate.fingerprint(cell, spec)) is None


def test_cells_saved_with_torch_dtype_names_stay_finished(tmp_path):
    """``model.dtype: float32`` (the old vocabulary) and ``fp32`` are the same recipe."""
    spec = ablate.load_spec(TINY_SPEC, SHRINK + [f"output_dir={tmp_path}"])
    cell = ablate.build_cells(spec)[0]
    expected = ablate.fingerprint(cell, spec)
    old = json.loads(json.dumps(expected))
    old["recipe"]["model"]["dtype"], old["recipe"]["train"]["precision"] = "float32", "auto"
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"cell": cell.key, "fingerprint": old}))
    assert ablate.load_result(path, expected) is not None
    old["recipe"]["model"]["dtype"] = "bfloat16"
    path.write_text(json.dumps({"cell": cell.key, "fingerprint": old}))
    assert ablate.load_result(path, expected) is None
