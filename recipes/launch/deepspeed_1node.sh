#!/usr/bin/env bash
# N GPUs on one machine with the deepspeed launcher.
#
#   GPUS=8 bash recipes/launch/deepspeed_1node.sh recipes/demo/smollm2_bico.yaml [overrides...]
#   DS_CONFIG=recipes/deepspeed/zero2.json bash recipes/launch/deepspeed_1node.sh RECIPE
#
# The global batch is train.batch_size x train.grad_accum x GPUS.
set -euo pipefail
cd "$(dirname "$0")/../.."
RECIPE=${1:?usage: deepspeed_1node.sh RECIPE [overrides...]}; shift
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
DS_CONFIG=${DS_CONFIG:-recipes/deepspeed/zero3.json}
deepspeed --num_gpus "$GPUS" --master_port "${MASTER_PORT:-29500}" \
    --module bico train "$RECIPE" "train.deepspeed=$DS_CONFIG" "$@"
