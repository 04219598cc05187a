"""Seeded input building on the CPU, so every machine builds the same bytes, and their digest."""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import torch

from harness.op import Case


def case_seed(seed: int, op: str, case: Case) -> int:
    """One seed per (run seed, op, case): a case's inputs do not depend on which other cases run."""
    return (seed * 1_000_003 + zlib.crc32(f"{op}/{case.name}".encode())) % (2**63)


def build_inputs(op_module, op: str, case: Case, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(case_seed(seed, op, case))
    inputs = op_module.make_inputs(case, gen)
    for name, t in inputs.items():
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            raise TypeError(f"{op}: make_inputs({case.name}) returned {name!r} that is not a CPU tensor")
    return dict(inputs)


def cached_inputs(op_module, op: str, case: Case, seed: int, cache_dir: Path) -> dict[str, torch.Tensor]:
    """build_inputs, shared through `cache_dir` by the processes of one run: every path of a case then
    reads the very same bytes, and the seconds of building them are spent once."""
    from safetensors.torch import load_file, save_file

    file = Path(cache_dir) / case.name / f"inputs-{seed}.safetensors"
    if file.exists():
        return load_file(str(file))
    inputs = build_inputs(op_module, op, case, seed)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}")
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(tmp))
    os.replace(tmp, file)
    return inputs


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def to_device(tensors: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in tensors.items()}
