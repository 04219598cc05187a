"""What a person sees in the terminal: a line per result as it comes, a summary table at the end.
Everything goes to stderr, so `--json` keeps stdout for machines."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable

import pandas as pd

from harness.parity.coverage import COVERED, NOT, PARTIAL, GroupCoverage, RegistryCheck
from harness.results import metrics as M
from harness.results.metrics import ORACLE
from harness.results.store import DAMAGED, Run
from harness.workers.worker import Result


class Progress:
    """A line per result as it comes, through `say`."""

    def __init__(self, total: int, say: Callable[[str], None]):
        self.total, self.done, self.say, self.t0 = total, 0, say, time.monotonic()

    def result(self, op: str, case: str, path: str, result: Result, rows: list[dict]) -> None:
        self.done += 1
        calc = next((r["value"] for r in rows if r["metric"] == M.CALC_DIFF and r["reference"] == ORACLE), None)
        extra = f"  calc_diff {M.fmt(calc)}" if calc is not None else ""
        err = result.detail.get("error")
        extra += f"  ({err.splitlines()[0][:120]})" if err and result.status != "ok" else ""
        width = len(str(self.total))
        self.say(
            f"[{self.done:>{width}}/{self.total}] {op}/{case}  {path}  {result.status}  "
            f"{M.fmt(result.seconds)} s{extra}"
        )


def summary(df: pd.DataFrame, breaches: pd.DataFrame) -> str:
    """One line per (case, path): its status, drift against the oracle, and its ratio to each golden."""
    if df.empty:
        return "no measurements"
    over = set(zip(breaches["case"], breaches["impl"], breaches["reference"].fillna(""), breaches["metric"]))
    known = breaches[breaches["allowed_by"].notna()] if "allowed_by" in breaches else breaches.iloc[0:0]
    allowed = set(zip(known["case"], known["impl"], known["reference"].fillna(""), known["metric"]))
    outcome = df[df["metric"] == M.OUTCOME]
    goldens = sorted(set(df.loc[df["metric"] == M.RMSE_RATIO, "reference"].dropna()))
    timed = bool((df["metric"] == M.TIME_US).any())
    head = ["case", "path", "status", M.CALC_DIFF, "worst_row", M.MAX_ABS] + [f"rmse/{g}" for g in goldens]
    head += [M.TIME_US, "roofline"] if timed else []
    lines = [head]
    for _, o in outcome.iterrows():
        sub = df[(df["case"] == o["case"]) & (df["impl"] == o["impl"])]

        def cell(metric: str, ref: str | None, sub=sub, o=o) -> str:
            same_ref = sub["reference"].isna() if ref is None else sub["reference"] == ref
            hit = sub[(sub["metric"] == metric) & same_ref]
            if hit.empty:
                return ""
            key = (o["case"], o["impl"], ref or "", metric)
            flag = "~" if key in allowed else "!" if key in over else ""
            return M.fmt(float(hit["value"].iloc[0])) + flag

        status = o["status"] if len(o["status"]) <= 40 else o["status"][:37] + "..."
        lines.append(
            [
                o["case"],
                o["impl"],
                status,
                cell(M.CALC_DIFF, ORACLE),
                cell(M.WORST_ROW_CALC_DIFF, ORACLE),
                cell(M.MAX_ABS, ORACLE),
            ]
            + [cell(M.RMSE_RATIO, g) for g in goldens]
            + ([cell(M.TIME_US, None), cell(M.ROOFLINE_FRAC, None)] if timed else [])
        )
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines)
    return text + ("\n(! = over its ceiling; ~ = over it, a known finding: see below)" if over else "")


def audit_summary(df: pd.DataFrame, breaches: pd.DataFrame) -> str:
    """One line per (kernel variant, path): shared memory, registers, spills, forbidden instructions."""
    df = df[df["suite"] == "audit"]
    if df.empty:
        return "no kernels audited"
    over = set(zip(breaches["case"], breaches["impl"], breaches["metric"]))
    lines = [["kernel / config", "path", "status", "shared B", "dynamic B", "regs", "spill B", "forbidden", "cluster"]]
    for (case, impl), g in df.groupby(["case", "impl"], sort=False):
        vals = dict(zip(g["metric"], g["value"]))
        status = next(iter(g["status"]))

        def cell(metric: str, case=case, impl=impl, vals=vals) -> str:
            v = vals.get(metric)
            if v is None or math.isnan(v):
                return ""
            return str(int(v)) + ("!" if (case, impl, metric) in over else "")

        status = status if len(status) <= 40 else status[:37] + "..."
        if M.KERNELS in vals:
            lines.append([case, impl, status, f"{M.fmt(vals[M.KERNELS])} kernel(s)", "", "", "", "", ""])
            continue
        lines.append(
            [
                case,
                impl,
                status,
                cell(M.SHARED_BYTES),
                cell(M.DYNAMIC_SHARED_BYTES),
                cell(M.REGISTERS),
                cell(M.SPILL_BYTES),
                cell(M.FORBIDDEN_INSTRUCTIONS),
                cell(M.CLUSTER_LAUNCHES),
            ]
        )
    widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines)
    return text + ("\n(! = over its ceiling)" if over else "")


def serving_summary(m: pd.DataFrame) -> str:
    """GSM8K per tool with its interval, then tok/s and median TTFT/ITL per sweep point."""
    lines = []
    out = m[m["metric"] == M.OUTCOME]
    failed = out[(out["suite"].isin(["accuracy", "perf"])) & (out["status"] != "ok")]
    acc = m[(m["metric"] == M.GSM8K_ACC) & (m["status"] == "ok")]
    if len(acc):
        lines.append(f"{'GSM8K':<28} {'accuracy':>9} {'95% interval':>16} {'n':>6}")
        for case, v, detail in zip(acc["case"], acc["value"], acc["detail"]):
            d = json.loads(detail or "{}")  # the interval is stored with the row (harness/serving/suite.py)
            ci = "{:.3f}-{:.3f}".format(*d["wilson95"]) if d.get("wilson95") else "-"
            lines.append(f"{case:<28} {v:>9.3f} {ci:>16} {d.get('n') or '-':>6}")
    perf = m[(m["suite"] == "perf") & (m["status"] == "ok")]
    if len(perf):
        piv = perf.pivot_table(index="case", columns="metric", values="value", aggfunc="first")
        order = sorted(piv.index, key=lambda c: (c.rsplit("/", 1)[0], int(c.rsplit("/c", 1)[1])))
        lines.append(f"\n{'point':<32} {'out tok/s':>10} {'req/s':>8} {'TTFT ms':>9} {'ITL ms':>8} {'repeats':>7}")
        for case in order:
            r = piv.loc[case]
            reps = perf[(perf["case"] == case) & (perf["metric"] == M.OUTPUT_TOK_S)]["samples"].iloc[0]
            lines.append(
                f"{case:<32} {M.fmt(r.get(M.OUTPUT_TOK_S)):>10} {M.fmt(r.get(M.REQUEST_S)):>8} "
                f"{M.fmt(r.get(M.latency('ttft', 'median'))):>9} {M.fmt(r.get(M.latency('itl', 'median'))):>8} "
                f"{len(reps):>7}"
            )
    for case, detail in zip(failed["case"], failed["detail"]):
        lines.append(f"FAILED {case}: {str(detail)[:300]}")
    return "\n".join(lines) if lines else "no serving measurement"


class ClosableStdout:
    """stdout that keeps a command going when its reader closes early (`gate ... | head`): what is left
    to print is dropped, and the command's exit code stands."""

    def __init__(self, stream):
        self.stream, self.closed_by_reader = stream, False

    def write(self, text: str) -> int:
        if not self.closed_by_reader:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self.closed_by_reader = True
        return len(text)

    def flush(self) -> None:
        if not self.closed_by_reader:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self.closed_by_reader = True

    def restore(self):
        """The stream it wrapped; where the reader went away, its descriptor now points at /dev/null, so
        that Python's flush at exit does not raise again."""
        if self.closed_by_reader:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        return self.stream

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def runs_table(runs: list[Run]) -> str:
    """`runs`: a line per run with what makes `latest` unambiguous (profile, suites, --only, status); a
    damaged run with the file and the reason."""
    head = ("run", "started", "status", "profile", "suites", "only", "sglang", "gpu")
    lines = [head]
    for r in runs:
        m = r.manifest
        if r.status == DAMAGED:
            lines.append((r.run_id, "", DAMAGED, m["damaged"], "", "", "", ""))
            continue
        fp = m.get("fingerprint", {})
        lines.append(
            (
                r.run_id,
                m.get("started_at", "?"),
                r.status,
                m.get("profile", {}).get("name", "?"),
                ",".join(m.get("suites") or []) or "-",
                ",".join(m.get("only") or []) or "all",
                (fp.get("sglang_commit") or "")[:10] or (fp.get("packages") or {}).get("sglang") or "?",
                ((fp.get("gpu") or {}).get("names") or ["cpu"])[0],
            )
        )
    whole = [x for x in lines if x[2] != DAMAGED]
    widths = [max(len(str(x[i])) for x in whole) for i in range(len(head))]

    def line(x: tuple) -> str:
        if x[2] == DAMAGED:  # the reason, however long, at the end
            return "  ".join([x[0].ljust(widths[0]), "".ljust(widths[1]), DAMAGED.ljust(widths[2]), x[3]])
        return "  ".join(str(c).ljust(w) for c, w in zip(x, widths)).rstrip()

    return "\n".join(line(x) for x in lines)


def coverage_table(groups: list[GroupCoverage]) -> str:
    """`coverage`: a line per kernel group of the inventory (covered / partial / not, by which ops and
    the registry's op ids, what their cases leave out, what the SGLang measured lacks or changed), then
    the counts."""
    head = ("row", "kernel group", "kinds", "status", "by (registry ids)", "left out, absent, changed")
    lines = [head]
    for c in sorted(groups, key=lambda c: c.group.row):
        ops = sorted({op for names in c.by.values() for op in names})
        gaps = [f"{fn.split(':')[1]}: {why}" for fn, why in c.limits.items()]
        gaps += [f"not covered: {fn.split(':')[1]}" for fn in c.group.functions if fn not in c.by and c.by]
        gaps += [f"absent: {fn}" for fn in c.absent]
        gaps += [f"changed since the inventory was read: {fn}" for fn in c.changed]
        ids = sorted({i for fn in c.by for i in c.registry_ids.get(fn, [])})
        by = ",".join(ops) + (f" [{','.join(ids)}]" if ids else "")
        lines.append((str(c.group.row), c.group.name[:48], ",".join(c.group.kinds), c.status, by or "-",
                      "; ".join(gaps)))  # fmt: skip
    widths = [max(len(x[i]) for x in lines) for i in range(len(head) - 1)]
    text = "\n".join("  ".join([*(c.ljust(w) for c, w in zip(x, widths)), x[-1]]).rstrip() for x in lines)
    return f"{text}\n\n{coverage_counts(groups)}"


def coverage_counts(groups: list[GroupCoverage]) -> str:
    counts = {s: sum(c.status == s for c in groups) for s in (COVERED, PARTIAL, NOT)}
    return f"{counts[COVERED]} covered, {counts[PARTIAL]} partial, {counts[NOT]} not covered, of {len(groups)} groups"


def registry_lines(check: RegistryCheck) -> str:
    """What SGLang's kernel registry has that the inventory does not place."""
    out = [f"kernel registry: {check.total} specs, {check.eligible} eligible on compute capability 12.0"]
    if check.unknown:
        out.append(f"  {len(check.unknown)} eligible spec(s) the inventory does not know (place them, or run "
                   "tools/record_inventory.py):")  # fmt: skip
        out += [f"    {s['op']} [{s['backend']}] {s['target']}" for s in check.unknown]
    if check.unplaced:
        out.append(f"  named in DeepSeek-V4's sources, in no group yet (to review): {', '.join(check.unplaced)}")
    if check.gone:
        out.append(f"  listed in the inventory, no longer registered: {', '.join(check.gone)}")
    return "\n".join(out)


def stored_coverage(df: pd.DataFrame) -> list[dict]:
    """A run's coverage rows (suite "coverage"), by group row: the group, its status and its gaps."""
    out = []
    for _, r in df[df["suite"] == "coverage"].sort_values("case").iterrows():
        d = json.loads(r["detail"] or "{}")
        out.append({"row": int(r["case"].removeprefix("group")), "share": float(r["value"]), **d})
    return out


def coverage_summary(df: pd.DataFrame) -> str:
    """What the run says of coverage: the counts, then each group not covered, plainly."""
    groups = stored_coverage(df)
    if not groups:
        return ""
    counts = {s: sum(g["status"] == s for g in groups) for s in (COVERED, PARTIAL, NOT)}
    lines = [
        f"coverage of DeepSeek-V4's SM120 kernel groups ({groups[0].get('inventory', '?')}): "
        f"{counts[COVERED]} covered, {counts[PARTIAL]} partial, {counts[NOT]} NOT covered, of {len(groups)}"
    ]
    lines += [f"  not covered: {g['row']} {g['group']}" for g in groups if g["status"] == NOT]
    lines += [f"  absent from this SGLang: {fn}" for g in groups for fn in g.get("absent", [])]
    lines += [f"  changed since the inventory was read: {fn}" for g in groups for fn in g.get("changed", [])]
    return "\n".join(lines)


def line_coverage_table(files: list[dict]) -> str:
    """`coverage --lines`: per SGLang file, each Triton kernel the catalogue reached, its statements executed
    under the interpreter, and the lines it never reached; kernels of the file it never ran, by name."""
    if not files:
        return "no SGLang Triton kernel ran (are the op files' CPU paths skipped here?)"
    out = []
    for f in files:
        ran = {k: v for k, v in f["kernels"].items() if v["executed"]}
        stmts = sum(v["statements"] for v in ran.values())
        hit = sum(v["executed"] for v in ran.values())
        out.append(f"{f['file']}: {hit} of {stmts} kernel statements executed in {len(ran)} kernel(s)")
        for k, v in ran.items():
            missed = ", ".join(map(str, v["missed"][:20])) + (" ..." if len(v["missed"]) > 20 else "")
            out.append(f"  {k}: {v['executed']}/{v['statements']}" + (f"  never: lines {missed}" if missed else ""))
        idle = sorted(set(f["kernels"]) - set(ran))
        if idle:
            out.append(f"  not run: {', '.join(idle)}")
    return "\n".join(out)


def known_findings(over: pd.DataFrame, broken: pd.DataFrame, expired: list[dict]) -> str:
    """The known findings this run met (allowlisted: they do not fail it), one line per path and case,
    and the entries whose date has passed (their rows fail it again)."""
    rows = pd.concat([df[df["allowed_by"].notna()] for df in (broken, over) if "allowed_by" in df])
    out = []
    if len(rows):
        groups = rows.groupby(["case", "impl", "allowed_by"], sort=True)["metric"]
        out.append(f"{len(groups)} known finding(s), allowlisted (they run, and do not fail the run):")
        for (case, impl, why), metrics in groups:
            out.append(f"  {case}  {impl}  ({', '.join(sorted(set(metrics)))}): {why}")
    for k in expired:
        out.append(f"EXPIRED on {k['until']} (now failing): {k['case']}  {k['impl']}  {k['metric']}: {k['why']}")
    return "\n".join(out)
