"""Compile gate: every kernel variant the runtime launches compiles cleanly for Hopper (sm_90a).

No GPU needed: Triton compiles to a cubin with its bundled ptxas when the target is given. For each
variant (fwd / dK/dV / dQ x mirrored RoPE x dQ mode x bf16/fp16 x D 64/128) at the config the
runtime launches by default (the pruned table's first entry), typed as the runtime specialises
its arguments: shared memory within 227 KB, the dots on wgmma, no ptxas warning or advice
(e.g. C7515, wgmma serialised), and zero spills (or, for a variant listed in KNOWN_SPILLS, no more
than committed). One compile per variant, in parallel processes; nothing is cached across runs.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from bico_kernels import compile_report  # noqa: E402  (imports no Triton compiler until used)
from bico_kernels.config_table import KNOWN_SPILLS  # noqa: E402
from bico_kernels.configs import runtime_variants  # noqa: E402

_UNAVAILABLE = compile_report.ptxas_available()
pytestmark = pytest.mark.skipif(bool(_UNAVAILABLE), reason=f"cannot compile for sm_90a here: {_UNAVAILABLE}")

VARIANTS = runtime_variants()
# Compiles run in parallel processes (ptxas is single-threaded); BICO_COMPILE_WORKERS overrides.
WORKERS = int(os.environ.get("BICO_COMPILE_WORKERS", min(4, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def compiled():
    # The interpreter (conftest sets TRITON_INTERPRET on machines without CUDA) would replace the
    # kernels, so the compiles run in a child process without it.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import json, sys\n"
        "from bico_kernels import compile_report as cr\n"
        "from bico_kernels.configs import runtime_variants\n"
        f"rs = cr.compile_many(cr.default_pairs(runtime_variants()), workers={WORKERS})\n"
        "print('@@' + json.dumps([r.as_dict() for r in rs]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stderr[-4000:]
    payload = next(line for line in run.stdout.splitlines() if line.startswith("@@"))
    return {d["variant"]: compile_report.result_from_dict(d) for d in json.loads(payload[2:])}


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.key() for v in VARIANTS])
def test_variant_compiles_clean_for_sm90a(compiled, variant):
    r = compiled[variant.key()]
    assert not r.error, r.error
    assert r.shared <= compile_report.SMEM_LIMIT, f"{r.shared} B of shared memory"
    assert r.wgmma > 0, "no wgmma: the dots fell back to mma.sync"
    assert not r.warnings, r.warnings
    known = KNOWN_SPILLS.get(variant.key(), (0, 0))
    assert r.registers > 0 and r.spill_stores <= known[0] and r.spill_loads <= known[1], (
        f"{r.config.label()}: {r.registers} registers, spills {r.spill_stores}/{r.spill_loads} B (allowed {known})"
    )
