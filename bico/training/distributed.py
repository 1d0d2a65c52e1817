"""Ranks and the process group, as set up by a launcher (``deepspeed``, ``torchrun``).

Both launchers start one process per GPU and describe the job in environment variables:
``RANK`` (global rank), ``LOCAL_RANK`` (rank on this node), ``WORLD_SIZE`` (all ranks),
``MASTER_ADDR`` and ``MASTER_PORT`` (where rank 0 listens). Without them bico is one process
and every helper here is a no-op, so single-process code pays nothing.

The process group uses NCCL on GPUs and gloo on CPU (``DS_ACCELERATOR=cpu``, used by the
tests to run several ranks on one machine).
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

from bico.errors import TrainingError

logger = logging.getLogger(__name__)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise TrainingError(f"environment variable {name}={value!r} is not an integer") from None


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if initialized() else _env_int("WORLD_SIZE", 1)


def rank() -> int:
    return dist.get_rank() if initialized() else _env_int("RANK", 0)


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    """Rank 0: the one process that writes logs, plots, models and evaluation output."""
    return rank() == 0


def launched() -> bool:
    """True when a launcher started several ranks."""
    return _env_int("WORLD_SIZE", 1) > 1


def setup(device: torch.device, *, use_deepspeed: bool) -> torch.device:
    """Join the launcher's process group; returns the device this rank trains on.

    On GPUs rank r of a node uses ``cuda:LOCAL_RANK``. One process without a launcher: nothing
    to do, except that DeepSpeed needs a process group, so it gets one of size 1.
    """
    if not launched() and not use_deepspeed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if initialized():
        return device
    if not launched():
        for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(name, value)
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        if name not in os.environ:
            raise TrainingError(f"WORLD_SIZE is set but {name} is not: start ranks with deepspeed or torchrun")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if use_deepspeed:
        import deepspeed

        if device.type == "cpu":
            _skip_shm_comm_build()
        deepspeed.init_distributed(dist_backend=backend)  # also sets up deepspeed.comm
    else:
        dist.init_process_group(backend)
    logger.info("rank %d of %d (local rank %d) on %s, backend %s", rank(), world_size(), local_rank(), device, backend)
    return device


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _skip_shm_comm_build() -> None:
    """On CPU, DeepSpeed compiles a shared-memory all-reduce op (about a minute of C++ on first
    use) that only its tensor-parallel *inference* path uses; training reduces through gloo.
    Skip that build so CPU ranks start in seconds. Set BICO_DS_SHM_COMM=1 to keep it."""
    if os.environ.get("BICO_DS_SHM_COMM") == "1":
        return
    import importlib

    try:  # (``import deepspeed.comm.torch as m`` would give the torch package: deepspeed.comm re-exports it)
        ds_torch = importlib.import_module("deepspeed.comm.torch")
    except ImportError:
        return
    if callable(getattr(ds_torch, "build_shm_op", None)):
        ds_torch.build_shm_op = lambda: None


def barrier() -> None:
    if initialized() and world_size() > 1:
        dist.barrier()


def teardown() -> None:
    """In a launched rank, leave the process group once every rank is done with it: a group left to
    the interpreter's exit can still have communicator threads running, which aborts the rank
    ("terminate called without an active exception") after its work is done. One process keeps
    its group (DeepSpeed's size-1 group is reused by the next run in the same process)."""
    if launched() and initialized():
        barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks (float64); the values themselves when there is one rank."""
    if not initialized() or world_size() == 1:
        return list(values)
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()
