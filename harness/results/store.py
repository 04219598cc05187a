"""The run store: one folder per run, never modified once finished.

    <store>/<run_id>/run.json              manifest: fingerprint, profile, status, times
    <store>/<run_id>/measurements.parquet  every measurement row (written when the run ends)
    <store>/<run_id>/measurements.jsonl    the journal, appended and fsynced as rows come; it is what
                                           survives a kill, and readers fall back to it
    <store>/<run_id>/artifacts/            worker logs, the HTML page, ...

Every file is replaced atomically (written under a temporary name, then renamed).

The store is a folder or any fsspec URL (`s3://bucket/runs`, `gs://...`, `file:///...`) so runners can
share one: a run is then written to a local staging folder as above and published when it ends,
run.json last, so a reader never sees a half-published run."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.results.redaction import redact, redact_files

COLUMNS = (
    "run_id",
    "suite",
    "case",
    "case_version",
    "impl",
    "reference",
    "metric",
    "value",
    "unit",
    "better",
    "samples",
    "status",
    "detail",
)
SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("suite", pa.string()),
        ("case", pa.string()),
        ("case_version", pa.string()),
        ("impl", pa.string()),
        ("reference", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("unit", pa.string()),
        ("better", pa.string()),
        ("samples", pa.list_(pa.float64())),
        ("status", pa.string()),
        ("detail", pa.string()),
    ]
)
# the statuses that fail a run; else "ok", "skipped(<reason>)", "absent(<what>)"
FAILURES = ("failed", "crashed", "timeout")
ABSENT = "absent"  # absent(<module>.<name> not in SGLang <version>): the path's function is not in the SGLang measured


class StoreError(Exception):
    pass


def is_url(store: str | Path) -> bool:
    return "://" in str(store)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, sort_keys=True)


def row(
    run_id: str,
    suite: str,
    case: str,
    case_version: str,
    impl: str,
    metric: str,
    value: float,
    *,
    reference: str | None = None,
    unit: str = "",
    better: str = "lower",
    samples: Iterable[float] | None = None,
    status: str = "ok",
    detail: dict | None = None,
) -> dict:
    """One measurement, in the schema every suite shares."""
    return {
        "run_id": run_id,
        "suite": suite,
        "case": case,
        "case_version": case_version,
        "impl": impl,
        "reference": reference,
        "metric": metric,
        "value": float(value),
        "unit": unit,
        "better": better,
        "samples": [float(s) for s in samples] if samples is not None else None,
        "status": status,
        "detail": dumps(detail or {}),
    }


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass
class RunWriter:
    """Writes one run as it goes: the journal first, the parquet file when it ends."""

    dir: Path
    manifest: dict
    publish_to: str | None = None  # the run's URL in a remote store, else None
    secrets: frozenset[str] = frozenset()  # values hidden in everything written (harness/results/redaction.py)

    @classmethod
    def create(cls, store: str | Path, manifest: dict, secrets: Iterable[str] = ()) -> RunWriter:
        run_id = new_run_id()
        remote = is_url(store)
        local_root = Path(tempfile.mkdtemp(prefix="sm120-harness-run-")) if remote else Path(store)
        run_dir = local_root / run_id
        try:
            (run_dir / "artifacts").mkdir(parents=True, exist_ok=False)
        except OSError as exc:
            raise StoreError(f"{run_dir}: cannot create the run folder: {exc}") from exc
        manifest = {
            **manifest,
            "run_id": run_id,
            "status": "running",
            "started_at": now(),
            "ended_at": None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        writer = cls(run_dir, manifest, f"{str(store).rstrip('/')}/{run_id}" if remote else None, frozenset(secrets))
        try:
            writer.save_manifest()
            writer._journal = open(run_dir / "measurements.jsonl", "a", encoding="utf-8")
        except OSError as exc:  # a full disk: no empty folder is left to be taken for a run
            shutil.rmtree(run_dir, ignore_errors=True)
            raise StoreError(f"{run_dir}: cannot start the run: {exc}") from exc
        return writer

    @classmethod
    def reopen(cls, run: Run, keep: Callable[[dict], bool], secrets: Iterable[str] = ()) -> RunWriter:
        """Continue a local run (resume): its rows that `keep` accepts go back into a fresh journal,
        the others (failures to be retried) are dropped; the manifest says it is running again."""
        if run.status == "running":
            raise StoreError(f"{run.dir}: the run is still running (pid {run.manifest.get('pid')})")
        rows = [r for r in json.loads(run.measurements.to_json(orient="records")) if keep(r)]
        journal = run.dir / "measurements.jsonl"
        atomic_write(journal, "".join(dumps(r) + "\n" for r in rows).encode())
        (run.dir / "measurements.parquet").unlink(missing_ok=True)
        manifest = {**run.manifest, "status": "running", "ended_at": None, "pid": os.getpid()}
        manifest["host"] = socket.gethostname()
        manifest["resumed"] = [*run.manifest.get("resumed", []), now()]
        writer = cls(run.dir, manifest, secrets=frozenset(secrets))
        writer.save_manifest()
        writer._journal = open(journal, "a", encoding="utf-8")
        return writer

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    @property
    def artifacts(self) -> Path:
        return self.dir / "artifacts"

    def save_manifest(self) -> None:
        manifest = redact(self.manifest, self.secrets)
        atomic_write(self.dir / "run.json", (json.dumps(manifest, indent=2, default=_json_default) + "\n").encode())

    def add(self, rows: list[dict]) -> None:
        for r in rows:
            missing = set(COLUMNS) - set(r)
            if missing:
                raise StoreError(f"measurement row lacks {sorted(missing)}")
            self._journal.write(dumps(redact(r, self.secrets)) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())

    def finish(self, status: str, **extra: Any) -> None:
        """Consolidate the journal into measurements.parquet, then mark the manifest."""
        self._journal.close()
        redact_files(self.artifacts, self.secrets)  # what the server and the clients logged
        rows = read_journal(self.dir / "measurements.jsonl")
        buf = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buf)
        parquet = self.dir / "measurements.parquet"
        try:
            atomic_write(parquet, buf.getvalue().to_pybytes())
        except OSError as exc:  # a full disk: the journal keeps every row; the run reads as interrupted
            raise StoreError(f"{parquet}: cannot be written ({exc}); the rows are kept in measurements.jsonl") from exc
        self.manifest.update(status=status, ended_at=now(), measurements=len(rows), **extra)
        try:
            self.save_manifest()
        except OSError as exc:
            parquet.unlink(missing_ok=True)  # the journal stays the run's record
            raise StoreError(f"{self.dir / 'run.json'}: cannot be written ({exc}); the rows are kept") from exc
        (self.dir / "measurements.jsonl").unlink()

    def publish(self) -> str:
        """Copy a finished run to its remote store, run.json last; a local store needs nothing. If the
        copy fails, the local staging folder is kept and named in the error."""
        if self.publish_to is None:
            return str(self.dir)
        fs, root = fsspec.core.url_to_fs(self.publish_to)
        files = sorted(p for p in self.dir.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == "run.json")
        try:
            for f in files:
                target = f"{root}/{f.relative_to(self.dir).as_posix()}"
                fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                fs.put_file(str(f), target)
        except Exception as exc:
            raise StoreError(
                f"could not publish {self.dir} to {self.publish_to}: {exc} (the run is kept in {self.dir})"
            ) from exc
        shutil.rmtree(self.dir.parent, ignore_errors=True)
        return self.publish_to


def read_journal(path: Path) -> list[dict]:
    """Rows of a journal; a torn last line (the process died mid-write) is dropped."""
    rows = []
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


@dataclass
class Run:
    dir: Path
    manifest: dict
    measurements: pd.DataFrame

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    @property
    def status(self) -> str:
        return self.manifest["status"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


DAMAGED = "damaged"  # a run whose files cannot be read, or do not agree with each other


def _manifest(text: bytes | str, where: str) -> dict:
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("run_id"), str):
        raise StoreError(f"{where}: not a run manifest (no run_id)")
    return manifest


def _rows(read: Callable[[], pa.Table], where: str, manifest: dict) -> pd.DataFrame:
    """A finished run's rows; a file that cannot be read, or holds another count of rows than its
    manifest says it was written with, is damaged."""
    try:
        df = read().to_pandas()
    except Exception as exc:  # pyarrow says ArrowInvalid, OSError, ... for a truncated or foreign file
        raise StoreError(f"{where}: cannot be read ({type(exc).__name__}: {exc})") from exc
    wrote = manifest.get("measurements")
    if isinstance(wrote, int) and wrote != len(df):
        raise StoreError(f"{where}: {len(df)} rows, its run.json says {wrote} were written")
    return df


def _load_remote(url: str) -> Run:
    fs, root = fsspec.core.url_to_fs(url)
    try:
        manifest = _manifest(fs.cat_file(f"{root}/run.json"), f"{url}/run.json")
    except FileNotFoundError as exc:
        raise StoreError(f"{url}: no run.json, not a run") from exc

    def read() -> pa.Table:
        with fs.open(f"{root}/measurements.parquet", "rb") as f:
            return pq.read_table(f, schema=SCHEMA)

    return Run(url, manifest, _rows(read, f"{url}/measurements.parquet", manifest))


def load_run(run_dir: str | Path) -> Run:
    """One run; StoreError naming the file where it is damaged."""
    if is_url(run_dir):
        return _load_remote(str(run_dir))
    run_dir = Path(run_dir)
    try:
        manifest = _manifest((run_dir / "run.json").read_bytes(), str(run_dir / "run.json"))
    except FileNotFoundError as exc:
        raise StoreError(f"{run_dir}: no run.json, not a run") from exc
    except OSError as exc:
        raise StoreError(f"{run_dir / 'run.json'}: cannot be read ({exc})") from exc
    parquet = run_dir / "measurements.parquet"
    if parquet.exists():
        df = _rows(lambda: pq.read_table(parquet, schema=SCHEMA), str(parquet), manifest)
    elif manifest.get("status") not in ("running", "interrupted"):
        raise StoreError(f"{parquet}: missing, though its run.json says the run ended {manifest.get('status')}")
    else:
        df = pd.DataFrame(read_journal(run_dir / "measurements.jsonl"), columns=list(COLUMNS))
        # A run whose process is gone without finishing was killed: say so, on read, without writing.
        if manifest.get("status") == "running" and not (
            manifest.get("host") == socket.gethostname() and _pid_alive(int(manifest.get("pid", -1)))
        ):
            manifest = {**manifest, "status": "interrupted"}
    return Run(run_dir, manifest, df)


def _damaged(where: str | Path, run_id: str, exc: StoreError) -> Run:
    """A run that cannot be read, as `list_runs` lists it: named, with the reason, and no rows."""
    manifest = {"run_id": run_id, "status": DAMAGED, "damaged": str(exc)}
    return Run(where, manifest, pd.DataFrame(columns=list(COLUMNS)))


def list_runs(store: str | Path) -> list[Run]:
    """Every run of the store, oldest folder first; a damaged run is listed with status `damaged` and
    the reason, so one bad run never hides the others."""
    runs = []
    if is_url(store):
        fs, root = fsspec.core.url_to_fs(str(store))
        if not fs.exists(root):
            return []
        for p in sorted(p for p in fs.ls(root, detail=False) if fs.exists(f"{p}/run.json")):
            url = fs.unstrip_protocol(p)
            try:
                runs.append(_load_remote(url))
            except StoreError as exc:
                runs.append(_damaged(url, p.rstrip("/").rsplit("/", 1)[-1], exc))
        return runs
    store = Path(store)
    if not store.is_dir():
        return []
    for d in sorted(store.iterdir()):
        if (d / "run.json").exists():
            try:
                runs.append(load_run(d))
            except StoreError as exc:
                runs.append(_damaged(d, d.name, exc))
    return runs


def latest(store: str | Path, match: Callable[[dict], bool]) -> Run | None:
    """The latest run (by start time) whose manifest `match` accepts; only its measurements are read."""
    found: list[tuple[str, str]] = []
    if is_url(store):
        fs, root = fsspec.core.url_to_fs(str(store))
        dirs = fs.ls(root, detail=False) if fs.exists(root) else []
        for d in dirs:
            try:
                manifest = json.loads(fs.cat_file(f"{d}/run.json"))
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            if match(manifest):
                found.append((manifest.get("started_at", ""), fs.unstrip_protocol(d)))
    elif Path(store).is_dir():
        for d in Path(store).iterdir():
            try:
                manifest = json.loads((d / "run.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if match(manifest):
                found.append((manifest.get("started_at", ""), str(d)))
    return load_run(max(found)[1]) if found else None


def resolve_run(store: str | Path, ref: str) -> Run:
    """A run named by its directory, its id, `latest`, `latest:<profile>`, or an SGLang commit prefix.
    `latest` names the last run that ended (never one in progress, nor a damaged one); a damaged run
    asked for by name is an error naming its file."""
    if Path(ref).is_dir() and (Path(ref) / "run.json").exists():
        return load_run(Path(ref))
    runs = list_runs(store)
    if ref == "latest" or ref.startswith("latest:"):
        profile = ref.partition(":")[2]
        match = [
            r
            for r in runs
            if r.status not in ("running", DAMAGED)
            and (not profile or r.manifest.get("profile", {}).get("name") == profile)
        ]
        if not match:
            raise StoreError(f"{store}: no run that ended matches {ref!r}")
        return max(match, key=lambda r: r.manifest.get("started_at", ""))
    match = [r for r in runs if r.run_id == ref] or [
        r
        for r in runs
        if len(ref) >= 7 and (r.manifest.get("fingerprint", {}).get("sglang_commit") or "").startswith(ref)
    ]
    if not match:
        raise StoreError(f"{store}: no run with id or SGLang commit {ref!r}")
    found = max(match, key=lambda r: r.manifest.get("started_at", ""))
    if found.status == DAMAGED:
        raise StoreError(found.manifest["damaged"])
    return found


BISECTS = "bisects"  # <store>/bisects/<id>.json: a bisect's steps and result (harness/history/bisect.py)


def save_bisect(store: str | Path, record: dict) -> str:
    """Write (or replace, as the bisect goes on) one bisect's record; returns where it is."""
    data = (json.dumps(record, indent=2, default=_json_default) + "\n").encode()
    name = f"{record['id']}.json"
    if not is_url(store):
        target = Path(store) / BISECTS / name
        try:
            atomic_write(target, data)
        except OSError as exc:
            raise StoreError(f"{target}: cannot write the bisect record: {exc}") from exc
        return str(target)
    fs, root = fsspec.core.url_to_fs(str(store))
    target = f"{root}/{BISECTS}/{name}"
    try:
        fs.makedirs(f"{root}/{BISECTS}", exist_ok=True)
        fs.pipe_file(target, data)
    except Exception as exc:
        raise StoreError(f"{store}/{BISECTS}/{name}: cannot write the bisect record: {exc}") from exc
    return fs.unstrip_protocol(target)


def list_bisects(store: str | Path) -> list[dict]:
    """Every bisect record of a store, oldest first."""
    if is_url(store):
        fs, root = fsspec.core.url_to_fs(str(store))
        folder = f"{root}/{BISECTS}"
        files = sorted(fs.glob(f"{folder}/*.json")) if fs.exists(folder) else []
        texts = [(fs.unstrip_protocol(f), fs.cat_file(f)) for f in files]
    else:
        folder = Path(store) / BISECTS
        texts = [(str(f), f.read_bytes()) for f in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    records = []
    for where, text in texts:
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoreError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("steps"), list):
            raise StoreError(f"{where}: not a bisect record (no 'steps' list)")
        records.append(record)
    return sorted(records, key=lambda r: r.get("started_at", ""))
