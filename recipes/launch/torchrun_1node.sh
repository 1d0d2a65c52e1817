#!/usr/bin/env bash
# N GPUs on one machine with torchrun (no DeepSpeed launcher needed; DeepSpeed still trains).
#
#   GPUS=8 bash recipes/launch/torchrun_1node.sh recipes/demo/smollm2_bico.yaml [overrides...]
set -euo pipefail
cd "$(dirname "$0")/../.."
RECIPE=${1:?usage: torchrun_1node.sh RECIPE [overrides...]}; shift
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
DS_CONFIG=${DS_CONFIG:-recipes/deepspeed/zero3.json}
torchrun --standalone --nproc_per_node "$GPUS" \
    -m bico train "$RECIPE" "train.deepspeed=$DS_CONFIG" "$@"
