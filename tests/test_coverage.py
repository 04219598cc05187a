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
    InventoryError,
    exists,
    load_inventory,
    measure,
    unknown,
)
from tests.conftest import ROOT, cli, needs_sglang

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
    by_row = {c.group.row: c for c in measure(groups, ops, root)}
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

    groups = load_inventory(INVENTORY)
    missing = [fn for g in groups for fn in (*g.functions, *g.selectors) if not exists(sglang_root(), fn)]
    assert not missing, missing
    assert len(groups) >= 29


def test_every_function_an_op_file_covers_is_in_the_inventory():
    from harness.parity.catalogue import discover

    ops = discover(ROOT / "kernels")
    assert unknown(load_inventory(INVENTORY), ops) == {}
    assert all(hasattr(op.module, "COVERS") for op in ops.values()), "an op file without COVERS"


def test_the_coverage_command_prints_the_table_and_the_counts():
    needs_sglang()
    r = cli(["coverage"])
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    counts = [int(w) for w in last.replace(",", "").split() if w.isdigit()]
    assert len(counts) == 4 and sum(counts[:3]) == counts[3] == len(load_inventory(INVENTORY))
    assert "mhc_fused_post_pre" in r.stdout


def test_covers_that_is_not_a_map_of_functions_is_named(tmp_path):
    from harness.parity.catalogue import CatalogueError, load_op_file

    text = (ROOT / "kernels" / "hash_topk.py").read_text()
    bad = tmp_path / "hash_topk.py"
    bad.write_text(text + '\nCOVERS = {"hash_topk": ""}\n')
    with pytest.raises(CatalogueError, match=r"hash_topk.py: COVERS must be"):
        load_op_file(bad)
