"""Tools built on training and evaluation: train-then-evaluate (:mod:`.pipeline`), the demo, ablation
grids (:mod:`.ablate` and its report and plots), attention benchmarks (:mod:`.bench`), memory plans (:mod:`.plan`)."""
