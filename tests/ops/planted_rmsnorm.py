"""The real RMSNorm op, SGLang's CPU reference clean, and copies of RMSNorm.forward_native's source
(srt/layers/layernorm.py) with one line edited each, as a review would see them: eps 1e-5 written for
the config's 1e-6, the norm weight left off, the residual output left as the old residual. The CUDA
path (sgl_kernel, no CPU build) is skipped here: the faults are planted in the reference, to show the
checks can fail."""

from pathlib import Path as _P

from harness.parity.op import Path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "rmsnorm.py")
OP = "planted_rmsnorm"
DTYPE, PRIMARY, TOLERANCE, CEILINGS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.CEILINGS
make_inputs, metrics = _real.make_inputs, _real.metrics

FAULTS = {
    # caught only by the edge row whose mean(x^2) equals eps: elsewhere it moves y by ~5e-6
    "wrong_eps": ("torch.rsqrt(variance + self.variance_epsilon)", "torch.rsqrt(variance + 1e-5)"),
    "weight_dropped": ("x = (x * self.weight).to(orig_dtype)", "x = x.to(orig_dtype)"),
    "residual_not_updated": ("residual = x.to(orig_dtype)", "residual = residual.to(orig_dtype)"),
}


def cases():
    return [c for c in _real.cases() if "tiny" in c.tags]


def _faulty(edit):
    return lambda t, case: _real.run_native(t, case, edit)


PATHS = list(_real.PATHS) + [Path(f"planted.{name}", _faulty(edit)) for name, edit in FAULTS.items()]
