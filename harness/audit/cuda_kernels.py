"""The SM120 audit of SGLang's JIT CUDA kernels, on a machine without a GPU.

For each module a path built (harness/workers/jit_capture.py records SGLang's own `build.ninja` for it, with
the target and template arguments of a compute capability 12.0 host), SGLang's build is run as
written, with one change at the link: the module is linked against harness/cuda_launch_recorder.cpp
instead of libcudart. Then:

- the object's cubin gives each kernel's static shared memory, registers, local memory (spills) and
  SASS, through cuobjdump;
- the module's entry points are called with the arguments each captured call had (tensors that
  carry only their shapes, on a "CUDA" device): SGLang's launch code runs, and the recorder keeps the
  dynamic shared memory it opts into (`cudaFuncSetAttribute`) and every launch's grid, block,
  dynamic shared memory and cluster shape. No kernel runs.

Builds are cached under the user's cache folder by the hash of the build description and the
generated sources, and checked against the hash of every file the compiler read.

    python -m harness.audit.cuda_kernels MODULE.so CALLS.json OUT.json     (the replay, in its own process)
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.audit import sm120
from harness.audit.toolchain import cache_root, child_env, triton_tool
from harness.results import metrics as M

RECORDER = Path(__file__).with_name("cuda_launch_recorder.cpp")
BUILD_TIMEOUT_S = 1800


class CudaAuditError(Exception):
    """A module that could not be built or evaluated here; the message says why."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _variables(build_file: str) -> dict[str, str]:
    out = {}
    for line in build_file.splitlines():
        m = re.match(r"^(\w+) = (.*)$", line)
        if m:
            out[m[1]] = m[2]
    return out


def _recording_link(build_file: str, recorder: Path) -> str:
    """SGLang's build description with the recorder linked in place of libcudart (and every symbol
    resolved at link time, so a runtime call the recorder does not answer is named there)."""
    lines = []
    for line in build_file.splitlines():
        if line.startswith("ldflags = "):
            flags = shlex.split(line[len("ldflags = ") :])
            lib_dirs = [f[2:] for f in flags if f.startswith("-L")]
            flags = [f for f in flags if f != "-lcudart"]
            flags += [str(recorder), "-Wl,-z,defs", "-Wl,-Bsymbolic", *(f"-Wl,-rpath,{d}" for d in lib_dirs)]
            line = "ldflags = " + " ".join(shlex.quote(f) for f in flags)
        lines.append(line)
    return "\n".join(lines) + "\n"


def _run(cmd: list[str], cwd: Path, what: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if proc.returncode != 0:
        text = (proc.stdout + proc.stderr).strip()
        raise CudaAuditError(f"{what} failed (exit {proc.returncode}): {text[-3000:]}")
    return proc.stdout


def _recorder_object(cxx: str, cuda_include: Path, root: Path) -> Path:
    flags = ["-std=c++17", "-O1", "-fPIC", f"-I{cuda_include}"]
    key = _sha(RECORDER.read_bytes() + json.dumps([cxx, *flags]).encode())[:16]
    obj = root / f"recorder-{key}.o"
    if not obj.exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = obj.with_suffix(f".{os.getpid()}.o")
        _run([*shlex.split(cxx), *flags, "-c", str(RECORDER), "-o", str(tmp)], root, "compiling the launch recorder")
        os.replace(tmp, obj)
    return obj


def _dependencies(build_dir: Path) -> dict[str, str]:
    """Every file the compiler read (from its depfiles), with its sha256."""
    deps = {}
    for depfile in build_dir.glob("*.o.d"):
        text = depfile.read_text(errors="ignore").replace("\\\n", " ")
        for token in text.split(":", 1)[-1].split():
            p = Path(token) if Path(token).is_absolute() else build_dir / token
            if p.is_file() and str(p) not in deps and build_dir not in p.parents:
                deps[str(p)] = _sha(p.read_bytes())
    return deps


def _still_valid(entry: Path) -> bool:
    try:
        deps = json.loads((entry / "deps.json").read_text())
    except (OSError, ValueError):
        return False
    return all(Path(p).is_file() and _sha(Path(p).read_bytes()) == h for p, h in deps.items())


def _ninja() -> str:
    found = shutil.which("ninja")
    if found is None:
        try:
            import ninja  # PyPI's, where its venv's bin/ is not on PATH

            found = str(Path(ninja.BIN_DIR) / "ninja")
        except ImportError:
            raise CudaAuditError("ninja is not installed (the `audit` extra installs it)") from None
    return found


def build(module: dict, root: Path | None = None) -> tuple[Path, bool]:
    """Build one captured module for SM120 (SGLang's compile command, the recorder's link); returns
    the build folder and whether it came from the cache."""
    root = root or cache_root()
    units = [(u["filename"], u["source"]) for u in module["units"]]
    key = _sha(json.dumps([module["build_file"], units]).encode())[:20]
    entry = root / key
    if _still_valid(entry):
        return entry, True
    v = _variables(module["build_file"])
    nvcc = shlex.split(v["nvcc"])[0]
    if not Path(nvcc).exists():
        raise CudaAuditError(f"no CUDA compiler at {nvcc} (install the harness's `audit` extra, or set CUDA_HOME)")
    ninja = _ninja()
    recorder = _recorder_object(v["cxx"], Path(nvcc).parent.parent / "include", root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        for name, source in units:
            if source is not None:
                (tmp / name).write_text(source)
        (tmp / "build.ninja").write_text(_recording_link(module["build_file"], recorder))
        _run([ninja, "-f", "build.ninja"], tmp, f"building {module['module']} for SM120")
        (tmp / "deps.json").write_text(json.dumps(_dependencies(tmp)))
        if _still_valid(entry):  # a concurrent audit built the same module meanwhile: its build serves
            return entry, True
        shutil.rmtree(entry, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:
            if not _still_valid(entry):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry, False


def compile_command(module: dict) -> str:
    """SGLang's nvcc command line for the module's device code, as its build.ninja runs it."""
    v = _variables(module["build_file"])
    return f"{v['nvcc']} -MD -MF cuda_0.o.d {v['cudaflags']} -c cuda.cu -o cuda_0.o"


def _cuobjdump() -> str:
    tool = triton_tool("cuobjdump") or shutil.which("cuobjdump")
    if tool is None:
        raise CudaAuditError("no cuobjdump (Triton's wheel ships one)")
    return tool


def _demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("c++filt")
    if tool is None or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def resources(files: list[Path]) -> dict[str, dict]:
    """Per kernel of these objects' or cubins' device code: registers, static shared memory, local
    memory, stack, the target, and the SASS instructions SM120 lacks."""
    tool = _cuobjdump()
    out: dict[str, dict] = {}
    for obj in files:
        res = _run([tool, "-res-usage", str(obj)], obj.parent, "cuobjdump -res-usage")
        sass = _run([tool, "-sass", str(obj)], obj.parent, "cuobjdump -sass")
        arch = re.search(r"arch = (\S+)", res)
        for m in re.finditer(
            r"Function (\S+):\s*\n\s*REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", res, re.MULTILINE
        ):
            out[m[1]] = {
                M.REGISTERS: int(m[2]),
                "stack_bytes": int(m[3]),
                "static_shared": int(m[4]),
                "local_bytes": int(m[5]),
                "target": arch[1] if arch else None,
                "sass_forbidden": [],
            }
        for name, body in re.findall(r"Function : (\S+)\n(.*?)(?=\n\s*Function : |\Z)", sass, re.DOTALL):
            if name in out:
                out[name]["sass_forbidden"] = sorted(set(sm120.FORBIDDEN_SASS.findall(body)))
    names = _demangle(list(out))
    for k, r in out.items():
        r["name"] = names[k]
    return out


def replay(build_dir: Path, module: str, calls: list[dict], timeout_s: float) -> list[dict]:
    """Each captured call of the module's entry points, run against the recorder in a process of its
    own (a crash in SGLang's host code is that module's finding): what each asked of the runtime."""
    so = build_dir / f"{module}.so"
    with tempfile.TemporaryDirectory(prefix="sm120-replay-") as tmp:
        todo, done = Path(tmp) / "calls.json", Path(tmp) / "out.json"
        todo.write_text(json.dumps(calls))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "harness.audit.cuda_kernels", str(so), str(todo), str(done)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=child_env(),
            )
        except subprocess.TimeoutExpired as exc:
            raise CudaAuditError(f"evaluating the launch code of {module} timed out") from exc
        if proc.returncode != 0 or not done.exists():
            raise CudaAuditError(
                f"evaluating the launch code of {module} exited with {proc.returncode}: {proc.stderr[-2000:]}"
            )
        return json.loads(done.read_text())


def audit_module(module: dict, calls: list[dict], timeout_s: float) -> dict:
    """One captured module, compiled and its launches evaluated: per kernel, what it needs on SM120."""
    t0 = time.perf_counter()
    build_dir, cached = build(module)
    kernels = resources(sorted(o for o in build_dir.glob("*.o") if not o.name.startswith("recorder")))
    evaluated = replay(build_dir, module["module"], calls, timeout_s) if calls else []
    return {
        "module": module["module"],
        "sources": module["sources"],
        "command": compile_command(module),
        "cached": cached,
        "seconds": time.perf_counter() - t0,
        "kernels": kernels,
        "calls": evaluated,
    }


# ------------------------------------------------------------------------------------------------
# the replay child: fake CUDA tensors through DLPack, the module's entry points, the recorder's log

_DLPACK_DTYPES = {  # torch dtype name -> (DLPack type code, bits)
    "float32": (2, 32), "float16": (2, 16), "float64": (2, 64), "bfloat16": (4, 16),
    "int8": (0, 8), "int16": (0, 16), "int32": (0, 32), "int64": (0, 64),
    "uint8": (1, 8), "uint16": (1, 16), "uint32": (1, 32), "uint64": (1, 64), "bool": (6, 8),
    "float8_e4m3fn": (10, 8), "float8_e5m2": (12, 8), "float8_e8m0fnu": (14, 8),
}  # fmt: skip
KDL_CUDA = 2


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


ALIGN = 256  # bytes: cudaMalloc's alignment


class ShapeOnlyTensor:
    """A DLPack producer for a tensor on CUDA device 0 whose memory is a zeroed host buffer: enough for
    host code that reads shapes, strides and dtypes; no kernel ever reads it."""

    def __init__(self, shape: list[int], strides: list[int], dtype: str) -> None:
        if dtype not in _DLPACK_DTYPES:
            raise CudaAuditError(f"the replay has no DLPack type for {dtype}")
        code, bits = _DLPACK_DTYPES[dtype]
        extent = 1 + sum((n - 1) * s for n, s in zip(shape, strides)) if all(shape) else 0
        self._buf = ctypes.create_string_buffer(max(extent * bits // 8, 1) + ALIGN)
        self._shape = (ctypes.c_int64 * len(shape))(*shape)
        self._strides = (ctypes.c_int64 * len(shape))(*strides)
        self._m = _DLManagedTensor()
        t = self._m.dl_tensor
        base = ctypes.addressof(self._buf)
        # aligned as cudaMalloc's memory is: launch code checks vector alignment (tiny_gemm: 32 B)
        t.data, t.device, t.ndim = base + (-base) % ALIGN, _DLDevice(KDL_CUDA, 0), len(shape)
        t.dtype, t.shape, t.strides, t.byte_offset = _DLDataType(code, bits, 1), self._shape, self._strides, 0

    def __dlpack_device__(self) -> tuple[int, int]:
        return (KDL_CUDA, 0)

    def __dlpack__(self, **_):
        new = ctypes.pythonapi.PyCapsule_New
        new.restype, new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        return new(ctypes.addressof(self._m), b"dltensor", None)


def _replay_child(so: str, calls_file: str, out_file: str) -> None:
    import tvm_ffi

    module = tvm_ffi.load_module(so)
    log = ctypes.CDLL(so).sm120_harness_launch_records
    log.restype = ctypes.c_char_p
    keep, out = [], []

    def arg(a):
        if isinstance(a, dict) and "tensor" in a:
            t = ShapeOnlyTensor(**a["tensor"])
            keep.append(t)
            return tvm_ffi.from_dlpack(t)
        return a

    for call in json.loads(Path(calls_file).read_text()):
        result = {"function": call["function"], "args": call["args"]}
        try:
            getattr(module, call["function"])(*[arg(a) for a in call["args"]])
        except Exception as exc:  # SGLang's own check refusing these arguments: a finding, not a crash
            result["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:1500]
        result["events"] = [json.loads(line) for line in log().decode().splitlines() if line]
        out.append(result)
    Path(out_file).write_text(json.dumps(out))


if __name__ == "__main__":
    sys.modules["torch"] = None  # tvm_ffi's optional torch support: ten seconds of import the replay never uses
    _replay_child(*sys.argv[1:4])
