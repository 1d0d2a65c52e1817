"""benchmarks/reversal_frontier.py draws issue 23's frontier from the committed cell results."""

import json
import subprocess
import sys

from helpers import ROOT


def test_frontier_is_drawn_from_the_committed_cells(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "reversal_frontier.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    points = json.loads((tmp_path / "frontier.json").read_text())
    assert (tmp_path / "frontier-bico-generator.png").stat().st_size > 1000
    cure = points["bico-generator"]["bico_names+permute+kl4+prompts"]
    assert 0 <= cure["knowledge"] <= 1 and set(cure["reverse_em"]) == {
        "p2d_reverse_prompts_test",
        "d2p_reverse_prompts_test",
    }
