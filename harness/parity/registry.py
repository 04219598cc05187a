"""SGLang's kernel registry (`sglang.kernels.registry`, from 0.5.23: every op id with its backends), read
in a process of its own: registering is metadata only, but importing the op groups imports torch, Triton
and SGLang's knobs, which the engine's process never does.

    python -m harness.parity.registry MAJOR MINOR
prints, as JSON, null where these sources have no registry, else one object per spec:
{"op", "backend", "target" ("module:qualname"), "eligible" (on compute capability MAJOR.MINOR)}."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

TIMEOUT_S = 300


class RegistryError(Exception):
    """The registry could not be read; the message says why."""


def specs(root: Path, capability: tuple[int, int] = (12, 0)) -> list[dict] | None:
    """The registry of the SGLang sources under `root`, or None where they have none."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "harness.parity.registry", *map(str, capability)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise RegistryError(f"reading SGLang's kernel registry took over {TIMEOUT_S} s") from exc
    if r.returncode != 0:
        tail = " ".join(r.stderr.strip().splitlines()[-1:])[:300]
        raise RegistryError(f"reading SGLang's kernel registry failed (exit {r.returncode}): {tail}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _main(major: int, minor: int) -> list[dict] | None:
    try:
        from sglang.kernels.registry import registry
        from sglang.kernels.spec import DeviceType, PlatformInfo, capabilities_satisfied
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("sglang"):
            return None
        raise
    ops = importlib.import_module("sglang.kernels.ops")
    for group in pkgutil.iter_modules(ops.__path__):  # each group registers its specs on import
        importlib.import_module(f"sglang.kernels.ops.{group.name}")
    platform = PlatformInfo(device_type=DeviceType.CUDA, cuda_arch_major=major, cuda_arch_minor=minor)
    return [
        {
            "op": s.op,
            "backend": getattr(s.backend, "value", str(s.backend)),
            "target": s.target,
            "eligible": bool(capabilities_satisfied(s.capabilities, platform)),
        }
        for s in registry.all_specs()
    ]


if __name__ == "__main__":
    print(json.dumps(_main(int(sys.argv[1]), int(sys.argv[2]))))
