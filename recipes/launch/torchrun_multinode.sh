#!/usr/bin/env bash
# M nodes x N GPUs with torchrun: run the same command on every node, changing NODE_RANK.
#
#   # on node 0 (its address is MASTER_ADDR)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 GPUS=8 bash recipes/launch/torchrun_multinode.sh RECIPE
#   # on node 1
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 GPUS=8 bash recipes/launch/torchrun_multinode.sh RECIPE
#
# Under SLURM: srun --nodes=$NNODES --ntasks-per-node=1 with NODE_RANK=$SLURM_NODEID.
# train.output_dir must be on a file system all nodes share.
set -euo pipefail
cd "$(dirname "$0")/../.."
RECIPE=${1:?usage: torchrun_multinode.sh RECIPE [overrides...]}; shift
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR (node 0)}"
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
DS_CONFIG=${DS_CONFIG:-recipes/deepspeed/zero3.json}
torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS" \
    --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" \
    -m bico train "$RECIPE" "train.deepspeed=$DS_CONFIG" "$@"
