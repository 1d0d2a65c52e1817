"""The claim, checked: the reversal curse under NTP, and BICO's effect on it.

A tiny Llama (2 layers, width 128, word-level vocabulary) is trained from scratch on generated
fictitious facts: the p2d facts are seen only as "name -> description", the "both" facts in both
orders (which teaches the question format "description -> name"), as in Berglund et al.'s
training set. Then it is asked the p2d facts in both directions.

Measured over seeds 0, 1, 2 with exactly this configuration (see README, "Behavioural test"):

    objective  forward EM        reverse EM        reverse likelihood win
    ntp        0.77 0.40 0.70    0.00 0.00 0.00    0.37 0.47 0.40
    bico       0.80 0.80 0.60    0.30 0.37 0.23    0.97 0.93 0.87

The seeds were measured with one torch thread; the test runs with one thread too. With two
threads, seed 0 gave the same NTP numbers and BICO forward EM 0.80, likelihood win 0.97, but
reverse EM 0.10 instead of 0.30: greedy reverse answers of this tiny model flip on float
rounding, its likelihood does not. So the assertions on generation are loose (BICO answers at
least 2 of the 30 reversed questions that NTP never answers) and the likelihood gap carries
the claim, with margins below the smallest gap seen. The two arms train in two processes (one
thread each, the measured setting) when the machine has two cores, halving the wall time.
"""

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from bico.config import load_recipe
from bico.data import generate_reversal_dataset
from bico.evaluation.reversal import evaluate
from bico.training.train import train
from helpers import one_torch_thread

SPLITS = ["p2d_prompts_test", "p2d_reverse_prompts_test"]


def run(objective, data_dir, out_dir, seed=0):
    recipe = load_recipe(
        None,
        [
            "model.name=tiny-random",
            "model.tokenizer=words",
            "model.layers=2",
            "model.hidden_size=128",
            "model.heads=4",
            "model.kv_heads=2",
            "model.intermediate_size=256",
            f"model.init_seed={seed}",
            "finetune.method=full",
            f"objective.name={objective}",
            f"data.dir={data_dir}",
            "data.max_length=64",
            "data.train_files=[p2d_prompts_train.jsonl,both_prompts_train.jsonl]",
            "train.epochs=60",
            "train.batch_size=16",
            "train.lr=1e-3",
            "train.warmup_steps=10",
            f"train.seed={seed}",
            "train.progress=false",
            "train.save_model=false",
            "train.log_every=1000",
            f"train.output_dir={out_dir}",
        ],
    )
    result = train(recipe)
    scores = evaluate(
        result.model, result.tokenizer, data_dir, SPLITS, max_new_tokens=24, batch_size=64, progress=False
    )["splits"]
    return {
        "forward": scores["p2d_prompts_test"]["exact_match"],
        "reverse": scores["p2d_reverse_prompts_test"]["exact_match"],
        "reverse_win": scores["p2d_reverse_prompts_test"]["logprob_win_rate"],
    }


def run_one_thread(objective, data_dir, out_dir):
    with one_torch_thread():  # as measured
        return run(objective, data_dir, out_dir)


@pytest.mark.slow
def test_reversal_curse_and_bico(tmp_path):
    data = tmp_path / "facts"
    generate_reversal_dataset(data, facts_per_subset=6, train_paraphrases=30, test_paraphrases=5, seed=0)
    jobs = [(name, data, tmp_path / name) for name in ("ntp", "bico")]
    if (os.cpu_count() or 1) >= 2:
        # spawn: a fresh interpreter per arm, so nothing of this process's torch state leaks in
        with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
            ntp, bico = pool.map(run_one_thread, *zip(*jobs))
    else:
        ntp, bico = (run_one_thread(*job) for job in jobs)
    print({"ntp": ntp, "bico": bico})
    # The curse: NTP learns the trained direction and cannot answer the reverse one.
    assert ntp["forward"] >= 0.4
    assert ntp["reverse"] <= 0.05
    assert ntp["reverse_win"] <= 0.6  # no better than chance (0.5) at telling the right name
    # BICO: the reverse direction is learned, in generation and in likelihood.
    assert bico["forward"] >= 0.4
    assert bico["reverse"] >= ntp["reverse"] + 0.05
    assert bico["reverse_win"] >= ntp["reverse_win"] + 0.25
