"""JIT CUDA kernels planted for the SM120 audit, built through SGLang's own `load_jit`: SGLang's top-k
v1 as it ships (64 KB of dynamic shared memory, fits SM120's 101376 B), the same source with the
128 KB of dynamic shared memory the original SM120 pull request found in `topk.cu`, and a cluster path
selected on SM120 where SGLang compiles its cluster paths for SM90/SM100 only (top-k v2)."""

import tempfile
from pathlib import Path as FilePath

import torch

from harness.parity.op import ORACLE, Case, Path, import_module

OP = "planted_jit"
DTYPE = "fp32"
PRIMARY = None
TOLERANCE = (0.0, 0.0)
TOPK, PAGE = 512, 64
HERE = FilePath(__file__).resolve().parent


def cases():
    return [Case("b2_len1024", {"B": 2, "L": 1024}, frozenset({"tiny"}))]


def make_inputs(case, gen):
    B, L = case.params["B"], case.params["L"]
    return {
        "scores": torch.randn(B, L, generator=gen),
        "seq_lens": torch.full((B,), L, dtype=torch.int32),
        "page_table": torch.arange(B * (L // PAGE), dtype=torch.int32).reshape(B, -1),
    }


def oracle(t, case):
    return {"max": t["scores"].double().amax(1)}


def metrics(outputs, oracle, inputs, case):
    return []  # planted for the audit, which never runs them: their outputs are not judged


def _topk_v1(t, source: str, name: str):
    jit = import_module("sglang.kernels.jit.utils")
    args = jit.make_cpp_args(jit.is_arch_support_pdl())
    module = jit.load_jit(
        name, *args, cuda_files=[source], cuda_wrappers=[("topk_transform", f"TopKKernel<{args}>::transform")]
    )
    B = t["scores"].shape[0]
    out = torch.full((B, TOPK), -2, dtype=torch.int32)
    module.topk_transform(t["scores"], t["seq_lens"], t["page_table"], out, PAGE, None)
    return {"page_indices": out}


def sglang_topk_v1(t, case):
    return _topk_v1(t, "deepseek_v4/topk_v1.cuh", "planted_topk_v1")


def topk_128k(t, case):
    """SGLang's topk_v1.cuh with its buffer at 32768 entries: 128 KB of dynamic shared memory."""
    src = FilePath(import_module("sglang.kernels.jit.utils.compile.paths").KERNEL_PATH) / "csrc/deepseek_v4/topk_v1.cuh"
    text = src.read_text()
    shipped = "constexpr uint32_t kSMEM = 16 * 1024 * sizeof(uint32_t);"
    assert shipped in text, "SGLang's topk_v1.cuh no longer declares its 64 KB buffer this way"
    planted = FilePath(tempfile.gettempdir()) / "sm120-harness-planted" / "topk_v1_128k.cuh"
    planted.parent.mkdir(exist_ok=True)
    patched = text.replace(shipped, "constexpr uint32_t kSMEM = 32 * 1024 * sizeof(uint32_t);")
    if not planted.exists() or planted.read_text() != patched:
        planted.write_text(patched)
    return _topk_v1(t, str(planted), "planted_topk_v1_128k")


def cluster_on_sm120(t, case):
    jit = import_module("sglang.kernels.jit.utils")
    module = jit.load_jit(
        "planted_cluster_select",
        cuda_files=[str(HERE / "cuda" / "cluster_select.cuh")],
        cuda_wrappers=[("run", "ClusterSelect::run")],
    )
    out = torch.empty(t["scores"].shape[0])
    module.run(t["scores"], out)
    return {"max": out}


PATHS = [
    Path(ORACLE, oracle, golden=True),
    Path("sglang.topk_v1", sglang_topk_v1, needs_cuda=True),
    Path("topk_128k", topk_128k, needs_cuda=True),
    Path("cluster_on_sm120", cluster_on_sm120, needs_cuda=True),
]
