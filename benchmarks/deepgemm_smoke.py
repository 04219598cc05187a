"""DeepGEMM on this GPU, end to end: harness.parity.deepgemm's probe, then every DeepGEMM golden of the catalogue
called once on one small case and compared with that op's fp64 oracle (calc_diff and max |err| over the
valid region, against the op's calc_diff ceiling). A golden whose `archs` exclude this GPU is listed as
such (the FP8 x FP4 MoE GEMM is SM100/SM120 only). Exit 1 when a golden fails or crosses its ceiling.

    python benchmarks/deepgemm_smoke.py [--case OP=CASE ...]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from harness.content import content_dir
from harness.parity import deepgemm, drift
from harness.parity.catalogue import discover
from harness.parity.inputs import build_inputs, to_device
from harness.parity.op import ORACLE, Unavailable

# small DeepSeek-V4-Flash shapes every SM90 kernel takes
DEFAULT_CASES = {
    "fp8_block_gemm": "wqkv_a_m64",
    "indexer_logits": "b1_equal1000",
    "mhc_pre_norm": "b33",
    "mxfp4_moe": None,  # the op's first case
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", action="append", default=[], metavar="OP=CASE", help="the case to run for OP")
    args = ap.parse_args()
    chosen = dict(DEFAULT_CASES)
    for item in args.case:
        op, sep, case = item.partition("=")
        if not sep:
            ap.error(f"--case {item}: expected OP=CASE")
        chosen[op] = case
    if not torch.cuda.is_available():
        print("deepgemm_smoke: needs a CUDA GPU", file=sys.stderr)
        return 2
    try:
        dg = deepgemm.load()
    except Unavailable as exc:
        print(f"deepgemm_smoke: DeepGEMM is not usable here: {exc}", file=sys.stderr)
        return 1
    cap = torch.cuda.get_device_capability()
    print(
        f"deep_gemm {getattr(dg, '__version__', '?')} from {dg.__file__}; torch {torch.__version__}; "
        f"{torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]}); probe bf16_gemm_nt passed"
    )
    ops = discover(content_dir("kernels"))
    failed = 0
    for op_name, case_name in chosen.items():
        op = ops.get(op_name)
        if op is None:
            print(f"deepgemm_smoke: no op {op_name} in the catalogue", file=sys.stderr)
            return 2
        cases = op.cases()
        if case_name and case_name not in cases:
            print(f"deepgemm_smoke: {op_name} has no case {case_name}", file=sys.stderr)
            return 2
        case = cases[case_name] if case_name else next(iter(cases.values()))
        for name, path in op.goldens.items():
            if not name.startswith("deepgemm"):
                continue
            label = f"{op_name:16s} {name:18s} {case.name:22s}"
            why = path.unsupported_reason(cap)
            if why:
                print(f"{label} not run: {why}")
                continue
            inputs = to_device(build_inputs(op.module, op.name, case, 0), "cuda")
            try:
                started = time.perf_counter()
                out = path.run(inputs, case)
                torch.cuda.synchronize()
                seconds = time.perf_counter() - started
                ref = op.paths[ORACLE].run(inputs, case)
            except Unavailable as exc:
                print(f"{label} skipped: {exc}")
                continue
            except Exception as exc:  # a golden that raises is what this script is here to show
                print(f"{label} FAILED: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")
                failed += 1
                continue
            primary = op.primary
            valid = op.valid_region(inputs, case).get(primary)
            cd = drift.calc_diff(out[primary], ref[primary], valid)
            err, where = drift.max_abs(out[primary], ref[primary], valid)
            ceiling = op.ceilings.get("calc_diff")
            ok = ceiling is None or cd <= ceiling
            failed += not ok
            print(
                f"{label} {'ok' if ok else 'OVER CEILING'}: calc_diff {cd:.3g} (ceiling {ceiling}), "
                f"max |err| {err:.3g} at {where}, output {tuple(out[primary].shape)}, first call {seconds:.1f} s "
                "(JIT included)"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
