"""A small git repository of SGLang's own sources with a history to bisect: SGLang 0.5.23's
`triton_hash_topk.py` (the file hash_topk's `sglang.triton` path loads, by file path) and the package
files around it, in SGLang's layout (`python/sglang/...`), then one commit per change:

    touch    a harmless edit (the README)
    fault    a numeric fault planted in the real kernel: exp2 where the softplus needs exp
    delete   the kernel file removed (the harness cannot run that commit)
    restore  the kernel file back as it was before the delete
    segfault the kernel module crashes the process at import (as an extension's init can)
    prebuilt an edit of sgl-kernel/, SGLang's compiled extension (built once, installed: out of reach)

Used by tests/test_bisect.py and benchmarks/bisect_walltime.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

KERNEL = "kernels/ops/moe/triton_hash_topk.py"  # under sglang/
PACKAGE_FILES = ("__init__.py", "_version.py", "version.py", KERNEL)
EXACT = "tl.log(1.0 + tl.exp(-tl.abs(logit)))"
FAULTY = "tl.log(1.0 + tl.exp2(-tl.abs(logit)))"  # exp2(x) is not exp(x): every routed weight moves

PROFILE = """
name = "bisect"
[kernels]
cases = ["tiny_t1_s0"]
timeout_s = 300
[kernels.ops.hash_topk]
impls = ["sglang.triton", "sglang.cuda"]  # the CUDA path: out of reach without a GPU
"""

SUBJECTS = {
    "touch": "docs: the ROCm fallbacks of the MoE ops",
    "fault": "hash_topk_triton: exp2 in the softplus",
    "delete": "moe: move triton_hash_topk out of kernels/ops",
    "restore": "moe: bring triton_hash_topk back",
    "prebuilt": "sgl-kernel: hash_topk launch bounds",
    "segfault": "moe: load the hash_topk helpers at import",
}
# appended to the kernel module: it reads address 0, a SIGSEGV while the module is imported
SEGFAULT = "import ctypes  # noqa: E402\n\nctypes.string_at(0)\n"


def _git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "SGLang history",
        "GIT_AUTHOR_EMAIL": "history@example.invalid",
        "GIT_COMMITTER_NAME": "SGLang history",
        "GIT_COMMITTER_EMAIL": "history@example.invalid",
        "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
        "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    }
    r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True)
    return r.stdout.strip()


def build(repo: Path, changes: list[str]) -> list[str]:
    """Create the repository at `repo`: the base commit, then one commit per change. Returns every
    commit's sha, the base first."""
    from harness.workers.sglang_src import require_root

    source = require_root() / "sglang"
    package = repo / "python" / "sglang"
    for name in PACKAGE_FILES:
        if (source / name).is_file():
            (package / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, package / name)
    kernel = package / KERNEL
    if EXACT not in kernel.read_text():
        raise RuntimeError(f"{source / KERNEL}: no {EXACT!r} to plant the fault in (another SGLang version?)")
    readme = repo / "README.md"
    readme.write_text("SGLang 0.5.23: the files of hash_topk's Triton path\n")
    _git(repo, "init", "--quiet", "--initial-branch=main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "--quiet", "-m", "SGLang 0.5.23: the files of hash_topk's Triton path")
    shas = [_git(repo, "rev-parse", "HEAD")]
    kept = kernel.read_text()
    for n, change in enumerate(changes):
        if change == "touch":
            readme.write_text(readme.read_text() + f"edit {n}\n")
        elif change == "fault":
            kernel.write_text(kernel.read_text().replace(EXACT, FAULTY))
        elif change == "delete":
            kept = kernel.read_text()
            kernel.unlink()
        elif change == "restore":
            kernel.write_text(kept)
        elif change == "segfault":
            kernel.write_text(kernel.read_text() + "\n" + SEGFAULT)
        elif change == "prebuilt":
            cu = repo / "sgl-kernel" / "csrc" / "moe" / "hash_topk.cu"
            cu.parent.mkdir(parents=True, exist_ok=True)
            cu.write_text(f"// launch bounds, edit {n}\n")
        else:
            raise ValueError(f"unknown change {change!r}")
        _git(repo, "add", "-A")
        _git(repo, "commit", "--quiet", "-m", SUBJECTS[change] + (f" ({n})" if change == "touch" else ""))
        shas.append(_git(repo, "rev-parse", "HEAD"))
    return shas
