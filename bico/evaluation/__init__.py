"""Evaluation: the reversal-curse splits (:mod:`.reversal`), the celebrity suite (:mod:`.celebrity`),
lm-evaluation-harness (:mod:`.lm_harness`), weight interpolation (:mod:`.interpolate`), statistics (:mod:`.stats`)."""
