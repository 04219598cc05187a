"""On a CUDA host without sgl_kernel, SGLang's import chain must still load (its fallbacks never call
sgl_kernel), and a path that does call it must be skipped naming what it called. CUDA is faked here the
way SGLang detects it (torch.cuda.is_available, torch.version.cuda), in a subprocess of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import ROOT, needs_sglang

FAKE_CUDA = """
import torch
torch.cuda.is_available = lambda: True
torch.version.cuda = "13.0"
torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
torch.cuda.get_device_name = lambda *a, **k: "NVIDIA H200"
torch.cuda.device_count = lambda: 1
"""


def _run(body: str, tmp_path, extra_path: str = "") -> subprocess.CompletedProcess:
    script = tmp_path / "probe.py"
    script.write_text(FAKE_CUDA + textwrap.dedent(body))
    env_path = f"{ROOT}{':' + extra_path if extra_path else ''}"
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": env_path, "HOME": str(tmp_path)},
    )


def test_cuda_import_chain_loads_and_a_call_is_unavailable(tmp_path):
    needs_sglang()
    r = _run(
        """
        import importlib
        try:  # without the stand-in, SGLang's CUDA import chain needs sgl_kernel
            importlib.import_module("sglang.srt.layers.attention.dsv4.indexer")
            print("PLAIN-IMPORTED")
        except ModuleNotFoundError as exc:
            print("PLAIN-MISSING", exc.name)
        for name in [m for m in list(__import__("sys").modules) if m.startswith("sglang")]:
            del __import__("sys").modules[name]
        from harness.parity.op import Unavailable
        from harness.workers.sglang_src import SGL_KERNEL_CALLS, import_module
        mod = import_module("sglang.srt.layers.attention.dsv4.indexer")
        print("LOADED", callable(mod.fp8_paged_mqa_logits_torch))
        import sgl_kernel
        try:
            sgl_kernel.quantization.ggml_dequantize(1, 2)
        except Unavailable as exc:
            print("UNAVAILABLE", exc, SGL_KERNEL_CALLS)
        """,
        tmp_path,
    )
    assert "PLAIN-MISSING sgl_kernel" in r.stdout, r.stdout + r.stderr
    assert "LOADED True" in r.stdout, r.stdout + r.stderr
    assert (
        "UNAVAILABLE calls sgl_kernel.quantization.ggml_dequantize, and sgl_kernel is not installed"
        " ['sgl_kernel.quantization.ggml_dequantize']" in r.stdout
    ), r.stdout + r.stderr


def test_no_stand_in_where_sgl_kernel_is_installed(tmp_path):
    pkg = tmp_path / "site" / "sgl_kernel"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("REAL = True\n")
    r = _run(
        """
        from harness.workers.sglang_src import stand_in_sgl_kernel
        print("STAND-IN", stand_in_sgl_kernel())
        import sgl_kernel
        print("REAL", sgl_kernel.REAL)
        """,
        tmp_path,
        extra_path=str(tmp_path / "site"),
    )
    assert "STAND-IN False" in r.stdout and "REAL True" in r.stdout, r.stdout + r.stderr
