#!/usr/bin/env bash
# Two DeepSpeed ranks on one CPU-only machine (gloo over loopback): the multi-GPU code path,
# runnable anywhere in about a minute. Same recipe and flags as on GPUs, only DS_ACCELERATOR
# and the launcher differ.
#
#   bash recipes/launch/cpu_2ranks.sh                      # torchrun (default)
#   LAUNCHER=deepspeed bash recipes/launch/cpu_2ranks.sh   # the deepspeed launcher
#   bash recipes/launch/cpu_2ranks.sh train.deepspeed=recipes/deepspeed/zero3.json   # extra overrides
set -euo pipefail
cd "$(dirname "$0")/../.."
RANKS=${RANKS:-2}
OUT=${OUT:-runs/launch-cpu}
DS_CONFIG=${DS_CONFIG:-recipes/deepspeed/zero2.json}
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# A small generated dataset, so the example needs nothing but this checkout.
[ -f "$OUT/data/p2d_prompts_train.jsonl" ] || python -m bico data reversal --out "$OUT/data" --facts 4 \
    --train-paraphrases 6 --test-paraphrases 3
# train.overwrite=true: a rerun of this example replaces its previous run (append
# train.overwrite=false train.resume=true to continue one instead).
ARGS=(train recipes/demo/tiny.yaml "data.dir=$OUT/data" "train.deepspeed=$DS_CONFIG" "train.output_dir=$OUT/run"
      train.max_steps=6 train.batch_size=2 train.progress=false train.overwrite=true "$@")

if [ "${LAUNCHER:-torchrun}" = deepspeed ]; then
    # --module: run bico as `python -m bico`; on CPU --num_gpus is the number of ranks.
    deepspeed --num_gpus "$RANKS" --master_port "${MASTER_PORT:-29510}" --module bico "${ARGS[@]}"
else
    torchrun --nproc_per_node "$RANKS" --master_addr 127.0.0.1 --master_port "${MASTER_PORT:-29510}" -m bico "${ARGS[@]}"
fi
