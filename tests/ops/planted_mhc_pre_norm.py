"""The real mHC prenorm op fed the bugs such a GEMM really has. SGLang's own `hc_pre_torch_impl` carries
the one a caller can give it (eps not passed); the rest are an fp32 transcription of it with one change
each. Beside them, two that must pass: the transcription unchanged, and the same with hc_fn rounded to
TF32 as DeepGEMM's and TileLang's tensor cores round it (so the ceilings admit the kernels it stands for,
and a bf16 GEMM, the next precision down, is flagged)."""

from pathlib import Path as _P

import torch

from harness.parity.op import Path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "mhc_pre_norm.py")
OP = "planted_mhc_pre_norm"
DTYPE, PRIMARY, TOLERANCE, CEILINGS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.CEILINGS
make_inputs = _real.make_inputs
K = _real.K


def cases():
    return [c for c in _real.cases() if "tiny" in c.tags]


def _tf32(w: torch.Tensor) -> torch.Tensor:
    """fp32 rounded to TF32's 10 mantissa bits (round to nearest, ties to even)."""
    bits = w.float().contiguous().view(torch.int32)
    return ((bits + 0xFFF + ((bits >> 13) & 1)) & ~0x1FFF).view(torch.float32)


def _fp32(t, case, *, eps=None, mean=True, streams="stream_major", fn=lambda w: w, x_cast=lambda x: x):
    x = t["x"]
    if streams == "hidden_major":
        x = x.transpose(1, 2)
    x_flat = x_cast(x.flatten(1).float())
    eps = case.params["eps"] if eps is None else eps
    sq = x_flat.square().sum(-1, keepdim=True)
    rsqrt = torch.rsqrt((sq / x_flat.shape[1] if mean else sq) + eps)
    w = fn(t["hc_fn"])
    return {"mixes": torch.nn.functional.linear(x_flat.to(w.dtype), w).float() * rsqrt}


def eps_not_passed(t, case):
    _, mixes = _real.hc_pre_torch_impl(0.0)(t["x"], t["hc_fn"])
    return {"mixes": mixes.squeeze(1)}


PATHS = list(_real.PATHS) + [
    Path("planted.clean_fp32", lambda t, c: _fp32(t, c)),
    Path("planted.clean_tf32", lambda t, c: _fp32(t, c, fn=_tf32)),
    Path("planted.eps_not_passed", eps_not_passed),
    Path("planted.rsqrt_of_sum", lambda t, c: _fp32(t, c, mean=False)),
    Path("planted.streams_interleaved", lambda t, c: _fp32(t, c, streams="hidden_major")),
    Path("planted.bf16_gemm", lambda t, c: _fp32(t, c, fn=lambda w: w.bfloat16(), x_cast=lambda x: x.bfloat16())),
]
