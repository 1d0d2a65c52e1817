#!/usr/bin/env bash
# M nodes x N GPUs with the deepspeed launcher. Run it once, on the first host of the hostfile.
#
#   HOSTFILE=recipes/launch/hostfile bash recipes/launch/deepspeed_multinode.sh RECIPE [overrides...]
#
# Needs: passwordless ssh from this node to every host, pdsh (the default remote launcher),
# the same checkout and Python environment at the same path on every node, and
# train.output_dir on a file system all nodes share (checkpoints are written by every rank).
set -euo pipefail
cd "$(dirname "$0")/../.."
RECIPE=${1:?usage: deepspeed_multinode.sh RECIPE [overrides...]}; shift
HOSTFILE=${HOSTFILE:-recipes/launch/hostfile}
MASTER_ADDR=${MASTER_ADDR:-$(grep -v '^[[:space:]]*#' "$HOSTFILE" | awk 'NF {print $1; exit}')}
DS_CONFIG=${DS_CONFIG:-recipes/deepspeed/zero3.json}
deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" \
    --module bico train "$RECIPE" "train.deepspeed=$DS_CONFIG" "$@"
