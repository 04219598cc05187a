"""The standalone mHC post, SGLang's torch reference clean, and copies of its source
(`_mhc_post_torch` in kernels/ops/layernorm/mhc.py) with one line edited each: the comb read with its
indices exchanged (a[hco, hci] for a[hci, hco] in the TileLang loop), the post weight dropped from the
sublayer output's term, the combine summed over the wrong axis. The TileLang kernel needs a GPU, so the
faults are planted in the reference, to show the checks can fail."""

from pathlib import Path as _P

import torch

from harness.parity.op import Path, load_module

_KERNELS = _P(__file__).resolve().parents[2] / "kernels"
_real = load_module(_KERNELS / "mhc_post.py")
_compile = load_module(_KERNELS / "rmsnorm.py").compile_method
OP = "planted_mhc_post"
DTYPE, PRIMARY, TOLERANCE = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE
make_inputs = _real.make_inputs
MHC = "kernels/ops/layernorm/mhc.py"

FAULTS = {
    "comb_transposed": (
        "comb_res_mix.unsqueeze(-1) * residual",
        "comb_res_mix.transpose(1, 2).unsqueeze(-1) * residual",
    ),
    "post_dropped": ("out = post_layer_mix * x.unsqueeze(1)", "out = x.unsqueeze(1)"),
    "sum_over_wrong_axis": (".sum(dim=1)", ".sum(dim=2)"),
}


def cases():
    return [c for c in _real.cases() if "tiny" in c.tags]


def _run(edit):
    def run(t, case):
        fn = _compile(MHC, "_mhc_post_torch", {"torch": torch}, edit)
        return {"residual": fn(t["x"], t["residual"], t["post"].unsqueeze(-1), t["comb"])}

    return run


PATHS = list(_real.PATHS) + [
    Path("planted.clean_copy", _run(None)),
    *(Path(f"planted.{name}", _run(edit)) for name, edit in FAULTS.items()),
]
