"""coverage --arch-gates (harness/parity/arch_gates.py): each capability test of a planted module is found and
answered as SM90/SM100/SM120/SM121 would, and flagged for what it does to SM120; then SGLang 0.5.23's own
findings, the ones the seed PR's class and sglang#39482 predict."""

import textwrap

import pytest

from harness.parity import arch_gates
from tests.conftest import needs_sglang

PLANTED = """
import torch
from sglang.srt.runtime_context import get_platform
from sglang.srt.utils import is_sm100_supported


def newer_than_hopper():
    return torch.cuda.get_device_capability()[0] >= 10


def pick_kernel():
    if get_platform().is_blackwell:      # SM120 takes the datacenter branch
        return "tcgen05"
    return "wgmma"


def exact_rtx():
    return torch.cuda.get_device_capability() == (12, 0)   # DGX Spark (12, 1) left out


def start(blocks):
    if not newer_than_hopper() or blocks <= 0:
        return None
    if not is_sm100_supported():
        raise RuntimeError("needs SM100")
    return blocks


def hopper_only():
    return get_platform().is_sm90
"""


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    needs_sglang()
    root = tmp_path_factory.mktemp("gates")
    (root / "planted_gates.py").write_text(textwrap.dedent(PLANTED))
    from harness.workers.sglang_src import require_root

    sites, unread = arch_gates.read(require_root(), ["planted_gates"], extra_path=root)
    assert unread == []
    return {(s.function, s.atom): s for s in sites}


def test_every_test_is_found_and_answered(planted):
    s = planted[("newer_than_hopper", "torch.cuda.get_device_capability()[0] >= 10")]
    assert s.values == {"sm90": False, "sm100": True, "sm120": True, "sm121": True}
    s = planted[("pick_kernel", "get_platform().is_blackwell")]
    assert s.values == {"sm90": False, "sm100": True, "sm120": True, "sm121": True}
    s = planted[("start", "is_sm100_supported()")]
    assert s.values == {"sm90": False, "sm100": True, "sm120": False, "sm121": False}
    s = planted[("start", "newer_than_hopper()")]  # a module-local gate function, called
    assert s.values["sm120"] is True and s.values["sm90"] is False


def test_sm120_in_sm100s_branch_is_flagged_and_sm90s_is_not(planted):
    assert "as_sm100" in planted[("pick_kernel", "get_platform().is_blackwell")].flags
    assert "as_sm100" not in planted[("hopper_only", "get_platform().is_sm90")].flags
    assert "as_sm100" not in planted[("start", "is_sm100_supported()")].flags


def test_an_exact_tuple_that_leaves_sm121_out_is_flagged(planted):
    s = planted[("exact_rtx", "torch.cuda.get_device_capability() == (12, 0)")]
    assert s.values["sm120"] is True and s.values["sm121"] is False
    assert "sm121_differs" in s.flags


def test_a_raise_past_an_early_exit_sm120_does_not_take_is_flagged(planted):
    # SM120 passes `newer_than_hopper()`, so it reaches the raise behind is_sm100_supported()
    assert "raises" in planted[("start", "newer_than_hopper()")].flags
    assert "raises" in planted[("start", "is_sm100_supported()")].flags
    assert "raises" not in planted[("pick_kernel", "get_platform().is_blackwell")].flags


def test_sglang_0_5_23s_findings():
    needs_sglang()
    from harness.workers.sglang_src import require_root

    modules = [
        "sglang.srt.layers.attention.dsv4.v41_indexer",
        "sglang.srt.layers.attention.dsv4.dsv41_sparse",
        "sglang.kernels.ops.moe.moe_fused_gate",
    ]
    sites, unread = arch_gates.read(require_root(), modules)
    assert unread == []
    by = {(s.function, s.atom): s for s in sites}
    # V4.1's candidate indexer raises at start-up on SM120 when candidate blocks are configured
    assert {"as_sm100", "raises"} <= set(by[("make_candidate_indexer", "is_sm100_or_newer()")].flags)
    # the fused low-ratio compressor, documented as needing sm100+, is gated on major >= 10
    assert "as_sm100" in by[("fused_low_ratio_compress_supported", "torch.cuda.get_device_capability()[0] >= 10")].flags
    # the router's SM120 argument test matches (12, 0) exactly: DGX Spark (12, 1) takes the other branch
    gate = [s for (f, a), s in by.items() if f == "moe_fused_gate" and "(12, 0)" in a]
    assert gate and "sm121_differs" in gate[0].flags
