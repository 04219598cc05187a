"""Stored goldens: outputs of golden paths captured on a GPU where they run, replayed where they
cannot (FlashMLA's V4 kernels exist for SM90/SM100 only; DeepGEMM releases differ in what they
support).

    <dir>/index.json                          every entry, with the sha256 of its manifest
    <dir>/<op>/<case>/<golden>.safetensors    the outputs (never a pickle)
    <dir>/<op>/<case>/<golden>.json           manifest: op, case, case_version, seed, input digest,
                                              producer (path, package versions), GPU, driver, date,
                                              sha256 of the safetensors file

A stored golden is used only for the same op, case, case_version, seed and input digest; a file that
does not match its manifest, or a manifest that does not match the index, is an error for that case
alone."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.results.store import atomic_write, now

INDEX = "index.json"


class GoldenError(Exception):
    """A stored golden that exists but cannot be trusted (corrupted, truncated, tampered)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _rel(op: str, case: str, golden: str) -> str:
    return f"{op}/{case}/{golden}"


def _read_index(root: Path) -> dict:
    file = root / INDEX
    if not file.exists():
        return {"entries": {}}
    try:
        index = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise GoldenError(f"{file}: not valid JSON ({exc})") from exc
    if not isinstance(index.get("entries"), dict):
        raise GoldenError(f"{file}: entries: missing or not a table")
    return index


def write(
    root: Path,
    *,
    op: str,
    case: str,
    case_version: str,
    golden: str,
    seed: int,
    input_digest: str,
    outputs_file: Path,
    fingerprint: dict,
) -> dict:
    """Store one captured golden: the outputs, their manifest, and the index entry."""
    root = Path(root)
    rel = _rel(op, case, golden)
    target = root / f"{rel}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(outputs_file, tmp)
    tmp.replace(target)
    gpu = fingerprint.get("gpu") or {}
    manifest = {
        "op": op, "case": case, "case_version": case_version, "golden": golden, "seed": seed,
        "input_digest": input_digest, "sha256": sha256_file(target), "bytes": target.stat().st_size,
        "producer": {"path": golden, "packages": fingerprint.get("packages"),
                     "sglang_commit": fingerprint.get("sglang_commit")},
        "gpu": (gpu.get("names") or [None])[0], "capability": gpu.get("capability"), "driver": gpu.get("driver"),
        "cuda": gpu.get("cuda"), "date": now(),
    }  # fmt: skip
    mfile = root / f"{rel}.json"
    atomic_write(mfile, (json.dumps(manifest, indent=2) + "\n").encode())
    index = _read_index(root)
    index["entries"][rel] = {
        "manifest": f"{rel}.json",
        "manifest_sha256": sha256_file(mfile),
        "case_version": case_version,
        "seed": seed,
        "input_digest": input_digest,
    }
    atomic_write(root / INDEX, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
    return manifest


@dataclass
class Stored:
    file: Path
    manifest: dict


def lookup(root: Path, *, op: str, case: str, case_version: str, golden: str, seed: int) -> Stored | str:
    """The verified stored golden, or why there is none usable (a string: 'not comparable' reasons).
    Raises GoldenError when what is stored has been altered."""
    root = Path(root)
    rel = _rel(op, case, golden)
    entry = _read_index(root)["entries"].get(rel)
    if entry is None:
        return f"no stored golden for {rel} in {root}"
    mfile = root / entry["manifest"]
    if not mfile.exists():
        raise GoldenError(f"{mfile}: listed in {root / INDEX} but missing")
    if sha256_file(mfile) != entry["manifest_sha256"]:
        raise GoldenError(f"{mfile}: manifest does not match its sha256 in {root / INDEX} (tampered?)")
    manifest = json.loads(mfile.read_text())
    data = root / f"{rel}.safetensors"
    if not data.exists():
        raise GoldenError(f"{data}: missing")
    if data.stat().st_size != manifest["bytes"] or sha256_file(data) != manifest["sha256"]:
        raise GoldenError(f"{data}: does not match the sha256 in {mfile} (corrupted or truncated)")
    if manifest["case_version"] != case_version:
        return f"case changed since capture (case_version {manifest['case_version']} -> {case_version})"
    if manifest["seed"] != seed:
        return f"captured with seed {manifest['seed']}, this run uses {seed}"
    return Stored(data, manifest)
