"""The real FP8 block GEMM op, with SGLang's Triton kernel file copied and edited once per path: faults that
only a launch configuration or a guard band shows (tests/test_edited_sglang.py)."""

from functools import partial
from pathlib import Path as _P

from harness.parity.op import Path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "fp8_block_gemm.py")
OP = "planted_edit_fp8_block_gemm"
DTYPE, PRIMARY, TOLERANCE, CEILINGS, OUTPUTS = (
    _real.DTYPE,
    _real.PRIMARY,
    _real.TOLERANCE,
    _real.CEILINGS,
    _real.OUTPUTS,
)
make_inputs, metrics, cost = _real.make_inputs, _real.metrics, _real.cost

_END_OF_FIRST_KERNEL = "\n\n\n@triton.jit\ndef _w8a8_block_fp8_matmul_hopper("
EDITS = {
    # the scales step after the first K tile of each group instead of the last: the same whenever a group is
    # one tile (the default config), wrong when it is two (a tuned config with BLOCK_SIZE_K 64)
    "scale_step_early": (
        "scale_step_k = tl.where((k + 1) % n_tiles_k_per_group_k == 0, 1, 0)\n        accumulator += tl.dot(a, b)",
        "scale_step_k = tl.where(k % n_tiles_k_per_group_k == 0, 1, 0)\n        accumulator += tl.dot(a, b)",
    ),
    # the row mask one too far: one row of N written past the output, the values of every real row right
    "row_mask_off_by_one": (
        "    tl.store(c_ptrs, c, mask=c_mask)" + _END_OF_FIRST_KERNEL,
        "    tl.store(c_ptrs, c, mask=(offs_cm[:, None] <= M) & (offs_cn[None, :] < N))" + _END_OF_FIRST_KERNEL,
    ),
}


def cases():
    return [c for c in _real.cases() if "tiny" in c.tags]


PATHS = [p for p in _real.PATHS if p.name in ("fp64", "sglang.triton", "sglang.triton.subgroup_tiles")]
for _name, _edit in EDITS.items():
    PATHS.append(Path(f"edited.{_name}", partial(_real.sglang_triton, edit=_edit)))
    PATHS.append(Path(f"edited.{_name}.subgroup_tiles", partial(_real.sglang_triton, subgroup=True, edit=_edit)))
