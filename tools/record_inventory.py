"""Write the [sources] and [registry] tables of a forward-path inventory from the SGLang installed (or at
$SM120_HARNESS_SGLANG_SRC), after its groups have been read against those sources:

    python tools/record_inventory.py kernels/inventory/sglang-0.5.23.toml

[sources]: the hash of every listed function's source as it is now (harness/parity/coverage.py reports a
function whose source later differs as `changed`). Run it when the op files have been checked against
the sources, not before: it records that they were.

[registry]: every op id of SGLang's kernel registry eligible on compute capability 12.0 that no group
lists, as `outside` or `unplaced`. An id already in one of the two lists keeps its place (a reviewer may
have moved it); a new id is screened: `unplaced` where the name of its function appears in DeepSeek-V4's
sources (the model files and the dsv4 attention code), else `outside`. The screen is by name only, so
`unplaced` is a list to review, not a finding.

Everything after MARK in the file is rewritten; the groups above it are kept as they are."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from harness.parity.coverage import load_inventory, source_hash
from harness.parity.registry import specs
from harness.workers.sglang_src import generated, require_root

MARK = "# ---- below: written by tools/record_inventory.py; edit the groups above, then run it again ----"
DSV4_SOURCES = (
    "srt/models/deepseek_v4*.py",
    "srt/layers/attention/dsv4/**/*.py",
    "srt/layers/attention/deepseek_v4*.py",
)


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dsv4_text(root: Path) -> str:
    files = sorted({f for pattern in DSV4_SOURCES for f in (root / "sglang").glob(pattern)})
    return "\n".join(f.read_text(encoding="utf-8") for f in files)


def record(file: Path) -> str:
    inv = load_inventory(file)
    root = require_root()
    registry = specs(root) or []
    listed = [fn for g in inv.groups for fn in (*g.functions, *g.selectors)]
    hashes = {fn: source_hash(root, fn) for fn in dict.fromkeys(listed)}
    text = _dsv4_text(root)
    on_path = {fn for g in inv.groups for fn in g.functions}
    outside, unplaced = set(inv.outside), set(inv.unplaced)
    for s in registry:
        if not s["eligible"] or s["target"] in on_path or s["op"] in outside | unplaced:
            continue
        name = s["target"].split(":")[1].split(".")[0]  # a method by its class: `forward_native` names nothing
        (unplaced if re.search(rf"\b{re.escape(name)}\b", text) else outside).add(s["op"])
    have = {s["op"] for s in registry}
    lines = [
        MARK,
        "",
        f"# SGLang {generated('__version__')}: the source of each listed function when the inventory was read",
        "[sources]",
        *(f"{_quote(fn)} = {_quote(h)}" for fn, h in sorted(hashes.items()) if h),
        "",
        f"# SGLang {generated('__version__')}'s kernel registry: {len(registry)} specs, "
        f"{sum(s['eligible'] for s in registry)} eligible on compute capability 12.0; those no group lists:",
        "[registry]",
        "# named in DeepSeek-V4's sources (by the function's name: a screen, to review and place in a group)",
        "unplaced = [",
        *(f"  {_quote(op)}," for op in sorted(unplaced & have)),
        "]",
        "# not named in DeepSeek-V4's sources: not on its SM120 path",
        "outside = [",
        *(f"  {_quote(op)}," for op in sorted(outside & have)),
        "]",
    ]
    head = file.read_text(encoding="utf-8").split(MARK)[0].rstrip("\n")
    return head + "\n\n" + "\n".join(lines) + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.write_text(record(target), encoding="utf-8")
    print(f"{target}: [sources] and [registry] written")
