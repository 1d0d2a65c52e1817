"""Data layer: JSONL I/O, the reversal-curse generator, evaluation splits.

The generated data follows the file layout of Berglund et al. experiment1, so the
original files and ``bico data reversal --out DIR`` output are interchangeable.
"""

from bico.data.jsonl import DataError, iter_jsonl, load_jsonl
from bico.data.reversal import generate_reversal_dataset, load_facts, load_facts_for_berglund
from bico.data.splits import (
    REVERSAL_EVAL_SPLITS,
    check_eval_splits,
    fact_groups,
    load_split,
    make_randomized,
    resolve_data_dir,
)

__all__ = [
    "DataError",
    "iter_jsonl",
    "load_jsonl",
    "generate_reversal_dataset",
    "load_facts",
    "load_facts_for_berglund",
    "resolve_data_dir",
    "REVERSAL_EVAL_SPLITS",
    "make_randomized",
    "check_eval_splits",
    "fact_groups",
    "load_split",
]
