"""Coverage, measured: the inventory of SGLang 0.5.23's SM120 forward path against the op files' COVERS,
and against SGLang's sources."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.parity.catalogue import Op
from harness.parity.coverage import (
    COVERED,
    NOT,
    PARTIAL,
    Group,
    Inventory,
    InventoryError,
    check_registry,
    exists,
    inventory_file,
    load_inventory,
    measure,
    source_hash,
    unknown,
)
from tests.conftest import OPS, ROOT, cli, needs_sglang

INVENTORY = ROOT / "kernels" / "inventory" / "sglang-0.5.23.toml"


def _op(name: str, covers: dict[str, str]) -> Op:
    return Op(name, Path(f"{name}.py"), SimpleNamespace(COVERS=covers))


def _tree(tmp: Path) -> Path:
    """A stand-in SGLang source tree: sglang/k.py with a function, a class and its method, an alias."""
    (tmp / "sglang").mkdir()
    (tmp / "sglang" / "__init__.py").write_text("")
    (tmp / "sglang" / "k.py").write_text(
        "def f():\n    pass\n\nclass C:\n    def m(self):\n        pass\n\nalias = f\n"
    )
    return tmp


def test_a_function_is_found_by_its_source_not_by_importing(tmp_path):
    root = _tree(tmp_path)
    assert exists(root, "sglang.k:f") and exists(root, "sglang.k:C") and exists(root, "sglang.k:C.m")
    assert exists(root, "sglang.k:alias")
    assert not exists(root, "sglang.k:g") and not exists(root, "sglang.k:C.n") and not exists(root, "sglang.nope:f")


def test_group_status_follows_what_the_ops_declare(tmp_path):
    root = _tree(tmp_path)
    groups = [
        Group(1, "all covered", ("triton",), (), "", ("sglang.k:f", "sglang.k:C.m")),
        Group(2, "one of two", ("triton",), (), "", ("sglang.k:f", "sglang.k:C")),
        Group(3, "covered in part", ("jit_cuda",), (), "", ("sglang.k:C",)),
        Group(4, "nothing", ("torch",), (), "", ("sglang.k:alias", "sglang.k:gone")),
    ]
    ops = {
        "a": _op("a", {"sglang.k:f": "", "sglang.k:C.m": ""}),
        "b": _op("b", {"sglang.k:C": "width 512 only", "sglang.k:typo": ""}),
    }
    by_row = {
        c.group.row: c for c in measure(Inventory(Path("i.toml"), groups, {}, frozenset(), frozenset()), ops, root)
    }
    assert by_row[1].status == COVERED and by_row[1].by == {"sglang.k:f": ["a"], "sglang.k:C.m": ["a"]}
    assert by_row[2].status == PARTIAL  # its second function is covered only in part
    assert by_row[3].status == PARTIAL and by_row[3].limits == {"sglang.k:C": "width 512 only"}
    assert by_row[4].status == NOT and by_row[4].absent == ["sglang.k:gone"]
    assert unknown(groups, ops) == {"b": ["sglang.k:typo"]}


def test_a_bad_inventory_names_the_file_and_field(tmp_path):
    bad = tmp_path / "sglang-9.toml"
    bad.write_text('[[group]]\nrow = 1\nname = "x"\nfunctions = ["no_colon"]\n')
    with pytest.raises(InventoryError, match=r"sglang-9.toml: group\[0\].functions"):
        load_inventory(bad)
    bad.write_text('[[group]]\nrow = "one"\nname = "x"\nfunctions = []\n')
    with pytest.raises(InventoryError, match=r"group\[0\].row"):
        load_inventory(bad)
    bad.write_text('[[group]]\nrow = 1\nname = "x"\nkinds = ["cuda"]\nfunctions = []\n')
    with pytest.raises(InventoryError, match=r"group\[0\].kinds"):
        load_inventory(bad)


def test_every_function_of_the_inventory_is_in_sglang_0_5_23():
    needs_sglang()
    from harness.workers.sglang_src import sglang_root

    inv = load_inventory(INVENTORY)
    missing = [fn for g in inv.groups for fn in (*g.functions, *g.selectors) if not exists(sglang_root(), fn)]
    assert not missing, missing
    assert len(inv.groups) >= 29
    # the sources recorded are those of 0.5.23: nothing has changed since
    changed = [fn for fn, h in inv.sources.items() if source_hash(sglang_root(), fn) != h]
    assert not changed, changed


def test_every_function_an_op_file_covers_is_in_the_inventory():
    from harness.parity.catalogue import discover

    ops = discover(ROOT / "kernels")
    assert unknown(load_inventory(INVENTORY).groups, ops) == {}
    assert all(hasattr(op.module, "COVERS") for op in ops.values()), "an op file without COVERS"


def test_the_coverage_command_prints_the_table_and_the_counts():
    needs_sglang()
    r = cli(["coverage"])
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    counts = [int(w) for w in last.replace(",", "").split() if w.isdigit()]
    assert "mhc_fused_post_pre" in r.stdout
    table = r.stdout.split("\n\nkernel registry")[0].strip().splitlines()[-1]
    counts = [int(w) for w in table.replace(",", "").split() if w.isdigit()]
    assert len(counts) == 4 and sum(counts[:3]) == counts[3] == len(load_inventory(INVENTORY).groups)
    # SGLang 0.5.23's registry, read in a process of its own: every spec eligible on 12.0 is known
    assert "kernel registry: 510 specs, 471 eligible on compute capability 12.0" in r.stdout
    assert "the inventory does not know" not in r.stdout


def test_covers_that_is_not_a_map_of_functions_is_named(tmp_path):
    from harness.parity.catalogue import CatalogueError, load_op_file

    text = (ROOT / "kernels" / "hash_topk.py").read_text()
    bad = tmp_path / "hash_topk.py"
    bad.write_text(text + '\nCOVERS = {"hash_topk": ""}\n')
    with pytest.raises(CatalogueError, match=r"hash_topk.py: COVERS must be"):
        load_op_file(bad)


def test_a_changed_source_is_reported_and_an_unchanged_one_is_not(tmp_path):
    root = _tree(tmp_path)
    recorded = {"sglang.k:f": source_hash(root, "sglang.k:f"), "sglang.k:C.m": source_hash(root, "sglang.k:C.m")}
    groups = [Group(1, "g", ("triton",), (), "", ("sglang.k:f", "sglang.k:C.m"))]
    inv = Inventory(Path("i.toml"), groups, recorded, frozenset(), frozenset())
    assert measure(inv, {}, root)[0].changed == []
    k = root / "sglang" / "k.py"
    k.write_text(k.read_text().replace("    def m(self):\n        pass", "    def m(self):\n        return 1"))
    from harness.parity import coverage

    coverage._nodes.cache_clear()  # parsed once per file and process
    assert measure(inv, {}, root)[0].changed == ["sglang.k:C.m"]


def test_the_registry_check_names_what_the_inventory_does_not_know():
    groups = [Group(1, "g", ("triton",), (), "", ("sglang.k:f",))]
    inv = Inventory(Path("i.toml"), groups, {}, frozenset({"x.out", "x.gone"}), frozenset({"x.later"}))
    specs = [
        {"op": "k.f", "backend": "triton", "target": "sglang.k:f", "eligible": True},  # in a group
        {"op": "x.out", "backend": "jit", "target": "sglang.x:out", "eligible": True},  # known outside
        {"op": "x.later", "backend": "jit", "target": "sglang.x:later", "eligible": True},  # to place
        {"op": "x.new", "backend": "jit", "target": "sglang.x:new", "eligible": True},  # unknown
        {"op": "x.sm100", "backend": "jit", "target": "sglang.x:sm100", "eligible": False},  # not on 12.0
    ]
    c = check_registry(inv, specs)
    assert [s["op"] for s in c.unknown] == ["x.new"]
    assert c.gone == ["x.gone"] and c.unplaced == ["x.later"] and (c.eligible, c.total) == (4, 5)


def test_the_inventory_of_another_version_is_the_newest_there_is(tmp_path):
    for v in ("0.5.9", "0.5.23", "0.5.10"):
        (tmp_path / f"sglang-{v}.toml").write_text("")
    assert inventory_file(tmp_path, "0.5.10").name == "sglang-0.5.10.toml"
    assert inventory_file(tmp_path, "0.5.22").name == "sglang-0.5.23.toml"
    assert inventory_file(tmp_path / "none", "0.5.22") is None


TOY_KERNEL = """import torch
import triton
import triton.language as tl


@triton.jit
def _double_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr, NEGATE: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    if NEGATE:
        x = -x
        x = x * 1
    tl.store(y_ptr + offs, x * 2, mask=mask)


@triton.jit
def _never_kernel(x_ptr):
    tl.store(x_ptr, 0.0)


def double(x):
    y = torch.empty_like(x)
    _double_kernel[(1,)](x, y, x.numel(), BLOCK=triton.next_power_of_2(x.numel()), NEGATE=False)
    return y
"""


def test_line_coverage_names_the_kernel_lines_no_case_reaches(tmp_path):
    """`coverage --lines` over a stand-in SGLang whose kernel has a branch no case takes: the branch's two
    lines, found here by their text, are the ones reported never executed; the kernel never launched is
    named as not run."""
    (tmp_path / "sglang").mkdir()
    (tmp_path / "sglang" / "__init__.py").write_text("")
    (tmp_path / "sglang" / "toy.py").write_text(TOY_KERNEL)
    branch = [i for i, line in enumerate(TOY_KERNEL.splitlines(), 1) if line.strip() in ("x = -x", "x = x * 1")]
    r = cli(
        ["coverage", "--lines", "--kernels-dir", OPS, "--only", "toy_lines"],
        env={"SM120_HARNESS_SGLANG_SRC": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr
    assert "sglang/toy.py: 5 of 7 kernel statements executed in 1 kernel(s)" in r.stdout, r.stdout
    assert f"_double_kernel: 5/7  never: lines {branch[0]}, {branch[1]}" in r.stdout
    assert "not run: _never_kernel" in r.stdout
