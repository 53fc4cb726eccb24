"""Which process this is when graft runs under ``accelerate launch`` (or torchrun), from the launcher's
environment: files are written by the main process only, every process trains.

Reading the environment keeps this module free of torch at import time; :func:`barrier` initialises
Accelerate's process group only in a multi-process run.
"""

from __future__ import annotations

import os


def num_processes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def process_index() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_main_process() -> bool:
    """True in a single-process run, and in process 0 of a multi-process one."""
    return process_index() == 0


def local_device():
    """This process's device: its own GPU (``LOCAL_RANK``) when there are GPUs, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every process reaches this point (no-op in a single-process run)."""
    if num_processes() > 1:
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        # the same process group Accelerator() sets up: it reads ACCELERATE_USE_CPU, PartialState does
        # not, and a PartialState made first without it is a single-process state (DistributedType.NO)
        # that every later Accelerator inherits: each process then trained alone, unsynchronised
        PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).wait_for_everyone()
