"""Attention benchmark: ``python benchmarks/attention.py [args]`` is ``bico bench [args]``.

The H100 run (defaults on CUDA: cases causal, bidirectional, bico, prefix_lm, packed, glm; providers
bico-triton, bico-triton-mirror, sdpa-dense, flex; T = 1024..16384 with 16384 tokens per call;
Hq=32, Hkv=8, D=128, bf16; fwd and fwd+bwd; 3 warm-up and 20 timed calls), writing
benchmarks/results/attention-nvidia-h100-80gb-hbm3.json and .png (the stem follows the device name):

    python benchmarks/attention.py

spelled out:

    python benchmarks/attention.py --seqlens 1024,2048,4096,8192,16384 --heads 32 --kv-heads 8 \\
        --head-dim 128 --dtype bf16 --modes fwd,fwd+bwd --warmup 3 --repeats 20 --out benchmarks/results

A quick CPU run (PyTorch reference only; the kernel and flex are recorded as skipped):

    python benchmarks/attention.py --device cpu --seqlens 256,512 --repeats 3
"""

import sys

from bico.cli import main  # needs bico installed (`make venv` installs it in editable mode)

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
