"""The one folder a runner keeps between runs: every JIT cache the paths fill (Triton, FlashInfer,
DeepGEMM, TileLang, SGLang's own, TVM-FFI's, the CUDA driver's) and the harness's input cache.

It is `SM120_HARNESS_CACHE`, else the profile's `[kernels] cache_dir`, else
`$XDG_CACHE_HOME/sm120-harness` (`~/.cache/sm120-harness`). The environment names it first because
where a runner keeps its caches is the runner's business, while a profile is shared by every runner."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV = "SM120_HARNESS_CACHE"

# variable -> sub-folder; each tool reads its variable when it first compiles, in the worker
VARIABLES = {
    "TRITON_CACHE_DIR": "triton",
    # FlashInfer appends .cache/flashinfer to this base itself (flashinfer/jit/env.py)
    "FLASHINFER_WORKSPACE_BASE": "flashinfer",
    "DG_JIT_CACHE_DIR": "deep_gemm",
    # SGLang's DeepGEMM wrapper overwrites DG_JIT_CACHE_DIR with this one at import
    "SGLANG_DG_CACHE_DIR": "deep_gemm",
    "SGLANG_CACHE_DIR": "sglang",
    "TILELANG_CACHE_DIR": "tilelang",
    "TVM_FFI_CACHE_DIR": "tvm-ffi",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "CUDA_CACHE_PATH": "nv",
}
INPUTS = "inputs"


def default_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sm120-harness"


@dataclass(frozen=True)
class CacheDir:
    root: Path
    source: str  # where its name came from: the environment variable, the profile, or the default

    @property
    def inputs(self) -> Path:
        return self.root / INPUTS

    def env(self) -> dict[str, str]:
        return {var: str(self.root / sub) for var, sub in VARIABLES.items()}

    def usage(self) -> dict[str, dict[str, int]]:
        """Bytes and files per sub-folder, as they are now."""
        out = {}
        for sub in sorted({*VARIABLES.values(), INPUTS}):
            files = size = 0
            for dirpath, _, names in os.walk(self.root / sub):
                for n in names:
                    try:
                        size += os.lstat(os.path.join(dirpath, n)).st_size
                    except OSError:  # removed meanwhile by a concurrent run
                        continue
                    files += 1
            out[sub] = {"bytes": size, "files": files}
        return out


def locate(profile_dir: str | None) -> CacheDir:
    if os.environ.get(ENV):
        return CacheDir(Path(os.environ[ENV]).expanduser().resolve(), ENV)
    if profile_dir:
        return CacheDir(Path(profile_dir).expanduser().resolve(), "[kernels] cache_dir")
    return CacheDir(default_root(), "default")
