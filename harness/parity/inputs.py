"""Seeded input building on the CPU, so every machine builds the same bytes, and their digest."""

from __future__ import annotations

import functools
import hashlib
import os
import zlib
from pathlib import Path

import torch

from harness.parity.contract import Case


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


_BUILDERS = ("inputs.py", "dsv4.py", "op.py")  # the harness modules an op's make_inputs may build with


@functools.cache
def code_key(op_file: str) -> str:
    """What decides the bytes besides the case and the seed: the op files of its folder (an op may
    build its inputs with another's helpers), the harness's builders, and torch (its generator)."""
    h = hashlib.sha256(torch.__version__.encode())
    here = Path(__file__).resolve().parent
    for f in [*sorted(Path(op_file).resolve().parent.glob("*.py")), *(here / b for b in _BUILDERS)]:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def cache_file(op_module, op: str, case: Case, seed: int, cache_dir: Path) -> Path:
    return (
        Path(cache_dir) / op / f"{case.name}-{case.version(op)}-seed{seed}-{code_key(op_module.__file__)}.safetensors"
    )


def load_or_build(
    op_module, op: str, case: Case, seed: int, cache_dir: Path
) -> tuple[dict[str, torch.Tensor], str, bool]:
    """(inputs, their digest, whether they came from the cache). The cache is kept between runs and
    shared by every process using it; a file whose bytes no longer match the digest it was stored
    with is rebuilt, never used."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    file = cache_file(op_module, op, case, seed, cache_dir)
    if file.exists():
        try:
            with safe_open(str(file), framework="pt") as f:
                stored = (f.metadata() or {}).get("digest")
                inputs = {k: f.get_tensor(k) for k in f.keys()}
            dig = digest(inputs)
            if dig == stored:
                return inputs, dig, True
        except (SafetensorError, OSError, ValueError):
            pass  # torn or foreign: built again below
    inputs = build_inputs(op_module, op, case, seed)
    dig = digest(inputs)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}")
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(tmp), metadata={"digest": dig})
    os.replace(tmp, file)
    return inputs, dig, False


def cached_inputs(op_module, op: str, case: Case, seed: int, cache_dir: Path) -> dict[str, torch.Tensor]:
    """The inputs a worker used (load_or_build verified them), read back by the parent."""
    return load_or_build(op_module, op, case, seed, cache_dir)[0]


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
