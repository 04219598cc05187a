"""The environment a run measured: GPU, driver, CUDA, package versions, the SGLang commit."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.workers.environment import Unavailable
from harness.workers.sglang_src import generated as sglang_generated
from harness.workers.sglang_src import sglang_root

# distribution name -> key in the fingerprint
PACKAGES = {
    "torch": "torch",
    "triton": "triton",
    "flashinfer-python": "flashinfer",
    "sgl-flash-mla": "flash_mla",
    "sglang": "sglang",
    "sm120-harness": "harness",
}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def imported_version(module: str) -> str | None:
    """The version of the `module` an import would load (found, not imported): its distribution's where one
    holds that very file, else the module's own `__version__`. A source build on PYTHONPATH (DeepGEMM
    built by tools/deepgemm-build) shadows any installed wheel, and the golden must say which it was."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return None
    origin = Path(spec.origin).resolve()
    for dist in metadata.packages_distributions().get(module, []):
        found = metadata.distribution(dist)
        if Path(str(found.locate_file(f"{module}/__init__.py"))).resolve() == origin:
            return found.version
    m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", origin.read_text(errors="replace"), re.MULTILINE)
    return m.group(1) if m else None


def _git(folder: Path, *args: str) -> str | None:
    if not shutil.which("git"):
        return None
    try:
        r = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def _git_head(folder: Path, *, top: tuple[Path, ...] | None = None) -> str | None:
    """HEAD of the checkout holding `folder`; with `top`, only if that checkout's root is one of
    them (a site-packages inside some other repository's virtualenv is not an SGLang checkout)."""
    if top is not None:
        root = _git(folder, "rev-parse", "--show-toplevel")
        if root is None or Path(root).resolve() not in {t.resolve() for t in top}:
            return None
    return _git(folder, "rev-parse", "HEAD")


def sglang_commit() -> tuple[str | None, str | None]:
    """(commit, where it came from): SGLANG_GIT_COMMIT, else the git checkout holding the sglang
    sources in use, else the installed distribution's direct_url.json."""
    if os.environ.get("SGLANG_GIT_COMMIT"):
        return os.environ["SGLANG_GIT_COMMIT"], "SGLANG_GIT_COMMIT"
    try:
        root = sglang_root()
    except Unavailable:
        root = None
    if root is not None:
        head = _git_head(root, top=(root, root.parent))  # sglang/ at the top, or under python/
        if head:
            return head, f"git checkout at {root}"
    generated = sglang_generated("__commit_id__")
    if generated:
        return generated, "sglang/_version.py"
    try:
        text = metadata.distribution("sglang").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        text = None
    if text:
        commit = json.loads(text).get("vcs_info", {}).get("commit_id")
        if commit:
            return commit, "direct_url.json"
    return None, None


def _gpus() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"count": 0, "names": [], "capability": None, "driver": None, "cuda": torch.version.cuda}
    n = torch.cuda.device_count()
    driver = None
    if shutil.which("nvidia-smi"):
        try:
            r = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            driver = r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            pass
    props = torch.cuda.get_device_properties(0)
    return {
        "count": n,
        "names": [torch.cuda.get_device_name(i) for i in range(n)],
        "capability": list(torch.cuda.get_device_capability(0)),
        "sm_count": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "driver": driver,
        "cuda": torch.version.cuda,
    }


def sglang_git() -> dict[str, str | None]:
    """Branch and commit subject of the SGLang under test: from the CI's environment (a pull request's
    head branch) or the checkout. Untrusted text: pages escape it."""
    branch = os.environ.get("SGLANG_GIT_BRANCH") or os.environ.get("GITHUB_HEAD_REF") or None
    message = os.environ.get("SGLANG_GIT_MESSAGE")
    try:
        root = sglang_root()
    except Unavailable:
        root = None
    if root is not None and _git_head(root, top=(root, root.parent)):
        branch = branch or _git(root, "rev-parse", "--abbrev-ref", "HEAD")
        message = message or _git(root, "log", "-1", "--format=%s")
    return {"branch": branch, "message": message}


def fingerprint() -> dict[str, Any]:
    commit, commit_source = sglang_commit()
    packages = {key: _version(dist) for dist, key in PACKAGES.items()}
    packages["sglang"] = sglang_generated("__version__") or packages["sglang"]
    packages["deep_gemm"] = imported_version("deep_gemm")
    return {
        "gpu": _gpus(),
        "packages": packages,
        "sglang_commit": commit,
        "sglang_commit_source": commit_source,
        "harness_commit": _git_head(Path(__file__).resolve().parent),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
    }
