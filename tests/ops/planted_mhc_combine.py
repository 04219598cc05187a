"""SGLang's Triton mhc_combine kernel launched with the bugs its launch or its caller can really have: the
stride between pre's 4 weights wrong (0: every stream weighted by pre[m, 0]), one stream left out of
the sum, and the residual flattened hidden-major ([T, H, 4]) where the kernel reads it stream-major; and a
copy of SGLang's own mhc_combine whose output is allocated fp32 rather than in out_dtype (closer to fp64:
only the output contract catches it)."""

import inspect
from pathlib import Path as _P

import torch
import triton

from harness.parity.op import Path, import_module, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "mhc_combine.py")
OP = "planted_mhc_combine"
DTYPE, PRIMARY, TOLERANCE, OUTPUTS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.OUTPUTS
make_inputs = _real.make_inputs
HC = _real.HC


def cases():
    return [c for c in _real.cases() if "tiny" in c.tags]


def _launch(x_flat, pre, *, pre_stride_k=None, hc=HC):
    """mhc_combine's own launch, with the two arguments a bug would change."""
    mhc = import_module("sglang.kernels.ops.layernorm.mhc")
    m, h = x_flat.shape[0], x_flat.shape[1] // HC
    y = torch.empty(m, h, dtype=torch.bfloat16, device=x_flat.device)
    mhc._mhc_combine_kernel[(m, triton.cdiv(h, 1024))](
        x_flat,
        pre,
        y,
        h,
        x_flat.stride(0),
        pre.stride(0),
        pre.stride(1) if pre_stride_k is None else pre_stride_k,
        y.stride(0),
        HC=hc,
        BLOCK_H=1024,
    )
    return {"y": y}


def hidden_major_flatten(t, case):
    x = t["x_flat"].unflatten(1, (HC, -1)).transpose(1, 2).reshape(t["x_flat"].shape[0], -1)
    return _real.sglang_triton({**t, "x_flat": x.contiguous()}, case)


def fp32_output(t, case):
    """mhc_combine from a copy of its source with one edit: `dtype=out_dtype` -> `dtype=torch.float32`."""
    mhc = import_module("sglang.kernels.ops.layernorm.mhc")
    src = inspect.getsource(mhc.mhc_combine)
    old = "dtype=out_dtype"
    if src.count(old) != 1:
        raise AssertionError(f"mhc_combine: {old!r} occurs {src.count(old)} times")
    ns = dict(vars(mhc))
    exec(src.replace(old, "dtype=torch.float32"), ns)  # noqa: S102 (SGLang's own source, one edit)
    return {"y": ns["mhc_combine"](t["x_flat"], t["pre"], HC, torch.bfloat16)}


PATHS = list(_real.PATHS) + [
    Path("planted.fp32_output", fp32_output),
    Path("planted.pre_stride_zero", lambda t, c: _launch(t["x_flat"], t["pre"], pre_stride_k=0)),
    Path("planted.stream_dropped", lambda t, c: _launch(t["x_flat"], t["pre"], hc=HC - 1)),
    Path("planted.hidden_major_flatten", hidden_major_flatten),
]
