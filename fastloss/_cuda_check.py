"""The CUDA backend's compile check: every kernel a call launches, compiled for
real GPUs on a machine without one.

The simulator (``NUMBA_ENABLE_CUDASIM=1``) runs the kernels as Python, which
accepts code the real compiler rejects and says nothing of registers or spills.
The compiler itself needs no GPU: numba-cuda with libNVVM (the ``nvidia-nvvm``
wheel) writes PTX, and ``ptxas`` (the ``nvidia-cuda-nvcc`` wheel) assembles it.
Two steps:

1. **record** -- under the simulator, each kernel launch records its kernel set
   (the key of ``numba_cuda.kernel_set``), the kernel's name in the set and its
   argument types.  ``tests/conftest.py`` installs the recorder when
   ``FASTLOSS_RECORD_CUDA_LAUNCHES`` names a folder, so the signatures come from
   the real call path of the test suite, not from a list that can drift; each
   process writes ``launches-<pid>.json`` there.
2. **check** -- ``python -m fastloss cuda-check FOLDER``: one fresh process per
   compute capability (no simulator) rebuilds each recorded set, compiles each
   signature to PTX, assembles it with ``ptxas -v``, and reads registers,
   spills, stack (local memory), shared memory and the float64 arithmetic in
   the PTX.  It writes the table (Markdown and JSON) and fails on a compile or
   assembly error, on a spill, and on a kernel of the backend that no launch
   recorded.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator

__all__ = ["record_launches", "recorded", "write_launches", "check", "main"]

# ---------------------------------------------------------------------------
# step 1: the recorder (simulator only)

_recorded: set[tuple] = set()      # (set key, kernel name, argument types), as JSON
_unknown: set[str] = set()         # kernels launched outside numba_cuda.kernel_set
_record_folder: str | None = None


def _members(kernels) -> Iterator[tuple[str, Any]]:
    """(name, kernel) of a kernel set: one kernel, a tuple or a dict of them."""
    if isinstance(kernels, dict):
        yield from kernels.items()
    elif isinstance(kernels, tuple):
        for k in kernels:
            yield k.py_func.__name__, k
    else:
        yield kernels.py_func.__name__, kernels


def _built_kernels() -> Iterator[tuple[tuple, str, Any]]:
    """(set key, kernel name, kernel) over the kernel sets built so far."""
    from .kernels import numba_cuda
    for key, kernels in list(numba_cuda._built._items.items()):
        if isinstance(key, tuple) and key[0] in numba_cuda._KERNEL_SETS:
            for name, kernel in _members(kernels):
                yield key, name, kernel


def _kernel_names() -> dict[Any, tuple[tuple, str]]:
    """py_func -> (set key, kernel name) over the kernel sets built so far."""
    return {kernel.py_func: (key, name) for key, name, kernel in _built_kernels()}


def _type_desc(ty) -> list:
    """A kernel argument's Numba type as JSON: a device array by its dtype,
    dimensions and layout (never read-only, as device arrays are), or a scalar."""
    from numba import types
    if isinstance(ty, types.Array):
        return ["array", str(ty.dtype), ty.ndim, ty.layout]
    return ["scalar", str(ty)]


def _type_of(arg) -> list:
    """A launch argument's type, as the real launch types it."""
    import numba
    return _type_desc(numba.typeof(arg))


def _record_compiled_overloads() -> None:
    """On a real GPU: the signatures each built kernel was compiled for (its
    dispatcher's overloads) are the launches of this process."""
    for key, name, kernel in _built_kernels():
        for argtypes in kernel.overloads:
            _recorded.add((json.dumps(key), name,
                           json.dumps([_type_desc(t) for t in argtypes])))


def _install_recorder() -> None:
    """Wrap the simulator's kernel launch so that each launch adds its signature
    to ``_recorded`` (once per process)."""
    if not _simulated():
        raise RuntimeError("the launch recorder runs only under NUMBA_ENABLE_CUDASIM=1")
    from numba.cuda.simulator import kernel as simulated
    launch = simulated.FakeCUDAKernel.__call__
    if getattr(launch, "_fastloss_recorder", False):
        return
    names: dict = {}

    def recording_call(self, *args):
        if not self._device and not simulated._kernel_context:   # a launch, not a device call
            where = names.get(self.fn)
            if where is None:
                names.update(_kernel_names())
                where = names.get(self.fn)
            if where is None:
                _unknown.add(f"{self.fn.__module__}.{self.fn.__qualname__}")
            else:
                key, name = where
                _recorded.add((json.dumps(key), name,
                               json.dumps([_type_of(a) for a in args])))
        return launch(self, *args)

    recording_call._fastloss_recorder = True  # type: ignore[attr-defined]
    setattr(simulated.FakeCUDAKernel, "__call__", recording_call)


def record_launches(folder: str) -> None:
    """Record every kernel launch of this process (under the simulator) for the
    compile check; :func:`write_launches` writes them into ``folder``."""
    global _record_folder
    if _simulated():
        _install_recorder()
    # (on a real GPU, write_launches reads the kernels' compiled overloads instead)
    _record_folder = folder


def recorded() -> list[dict]:
    """The signatures recorded so far in this process."""
    return [{"set": json.loads(k), "kernel": n, "args": json.loads(a)}
            for k, n, a in sorted(_recorded)]


def write_launches() -> str | None:
    """Write what this process recorded (``launches-<pid>.json``); its path."""
    if _record_folder is None:
        return None
    if not _simulated() and "fastloss.kernels.numba_cuda" in sys.modules:
        _record_compiled_overloads()
    os.makedirs(_record_folder, exist_ok=True)
    path = os.path.join(_record_folder, f"launches-{os.getpid()}.json")
    with open(path, "w") as f:
        json.dump({"launches": recorded(), "outside_kernel_sets": sorted(_unknown)}, f)
    return path


def read_launches(folder: str) -> tuple[list[dict], list[str]]:
    """The distinct recorded signatures in ``folder`` and the kernels launched
    outside ``kernel_set``."""
    seen, unknown = {}, set()
    for path in sorted(glob.glob(os.path.join(folder, "launches-*.json"))):
        with open(path) as f:
            data = json.load(f)
        for row in data["launches"]:
            seen[json.dumps(row, sort_keys=True)] = row
        unknown.update(data["outside_kernel_sets"])
    return [seen[k] for k in sorted(seen)], sorted(unknown)


# ---------------------------------------------------------------------------
# step 2: compile (a fresh process per compute capability, no simulator)

#: PTX arithmetic on float64 registers (moves, loads, stores and conversions
#: are not counted)
_F64_OP = re.compile(r"^\s*(?:@%p\d+\s+)?(add|sub|mul|fma|mad|div|rcp|sqrt|rsqrt|neg|abs|"
                     r"min|max|setp|selp|ex2|lg2|copysign|testp)[.\w]*\.f64\b", re.M)
_F32_OP = re.compile(r"^\s*(?:@%p\d+\s+)?(add|sub|mul|fma|mad|div|rcp|sqrt|rsqrt|neg|abs|"
                     r"min|max|setp|selp|ex2|lg2|copysign|testp)[.\w]*\.f32\b", re.M)


def _simulated() -> bool:
    from numba import config
    return bool(getattr(config, "ENABLE_CUDASIM"))


def _nvidia_roots() -> list[str]:
    """The folders of the ``nvidia`` namespace package (the CUDA wheels)."""
    import importlib
    try:
        return list(importlib.import_module("nvidia").__path__)
    except ImportError:
        return []


def ptxas_path() -> str:
    """ptxas from the nvidia-cuda-nvcc wheel (or the PATH)."""
    for root in _nvidia_roots():
            for found in glob.glob(os.path.join(root, "*", "bin", "ptxas")) + glob.glob(
                    os.path.join(root, "cuda_nvcc", "bin", "ptxas")):
                return found
    on_path = shutil.which("ptxas")
    if on_path is None:
        raise FileNotFoundError("ptxas not found: pip install -e '.[cuda-check]' "
                                "(nvidia-cuda-nvcc) or put the CUDA toolkit's bin on PATH")
    return on_path


def toolchain_missing() -> str | None:
    """Why the compile step cannot run here (no libNVVM or no ptxas), or None."""
    try:
        ptxas_path()
    except FileNotFoundError as exc:
        return str(exc)
    if not any(glob.glob(os.path.join(r, "*", "lib", "libnvvm.so*")) for r in _nvidia_roots()) \
            and not os.environ.get("CUDA_HOME"):
        return "libNVVM not found: pip install -e '.[cuda-check]' (nvidia-nvvm)"
    return None


def _numba_type(desc: list):
    from numba import types
    if desc[0] == "array":
        return types.Array(getattr(types, desc[1]), desc[2], desc[3])
    return types.boolean if desc[1] == "bool" else getattr(types, desc[1])


def _ptxas_info(text: str) -> dict[str, int]:
    """registers, spills, stack, shared memory of the (one) kernel in ptxas -v's text."""
    def grab(pattern):
        found = re.findall(pattern, text)
        return max(map(int, found)) if found else 0
    return {"registers": grab(r"Used (\d+) registers"),
            "spill_stores": grab(r"(\d+) bytes spill stores"),
            "spill_loads": grab(r"(\d+) bytes spill loads"),
            "stack": grab(r"(\d+) bytes stack frame"),
            "smem": grab(r"(\d+) bytes smem"),
            "lmem": grab(r"(\d+) bytes lmem")}


def _compile_all(launches: list[dict], cc: tuple[int, int], ptxas: str) -> list[dict]:
    """Compile and assemble every recorded signature for ``cc``; one row each."""
    if _simulated():
        raise RuntimeError("the compile step needs NUMBA_ENABLE_CUDASIM=0")
    from numba import cuda
    from numba.cuda import dispatcher

    class _Target:
        compute_capability = cc

    # Device functions are compiled for "the current device", which asks the
    # driver; there is none here, so the target stands in for it.
    dispatcher.get_current_device = lambda: _Target()
    from .kernels import numba_cuda

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for launch in launches:
            key, name = launch["set"], launch["kernel"]
            row = {"set": key, "kernel": name, "args": launch["args"], "cc": f"{cc[0]}{cc[1]}"}
            start = time.perf_counter()
            try:
                kernel = dict(_members(numba_cuda.kernel_set(*key)))[name]
                sig = tuple(_numba_type(a) for a in launch["args"])
                ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
                src = os.path.join(tmp, "k.ptx")
                with open(src, "w") as f:
                    f.write(ptx)
                done = subprocess.run([ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", src, "-o",
                                       os.path.join(tmp, "k.cubin")],
                                      capture_output=True, text=True)
                if done.returncode:
                    raise RuntimeError(f"ptxas: {done.stderr.strip()[-2000:]}")
                row.update(_ptxas_info(done.stderr), ok=True,
                           f64_ops=len(_F64_OP.findall(ptx)), f32_ops=len(_F32_OP.findall(ptx)))
            except Exception as exc:   # reported in the table, and the check fails
                row.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[-2000:]}")
            row["seconds"] = round(time.perf_counter() - start, 3)
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# the check: coverage, the compiles, the table

def expected_sets() -> list[tuple]:
    """Every kernel set key the dispatch layer can launch: the shared sets, each
    elementwise and row-wise kernel (both row shapes) and both tile dtypes."""
    from ._registry import records
    elementwise = [r.kernel for r in records("elementwise")] + ["_identity"]  # (Σ weight)
    rowwise = [k for r in records("multiclass") for k in r.kernels]
    return ([("shared",), ("row_shared",), ("overlap",), ("boxes",), ("pair_rows",)]
            + [("elementwise", k) for k in elementwise]
            + [("rowwise", k, b) for k in rowwise for b in (False, True)]
            + [("pair_tiles", d) for d in ("float32", "float64")])


def _describe(args: list) -> str:
    def one(a):
        if a[0] == "array":
            return f"{a[1]}[{','.join(':' * a[2])}{'' if a[3] == 'C' else a[3]}]"
        return a[1]
    return ", ".join(one(a) for a in args)


def _table(rows: list[dict]) -> str:
    """The Markdown table: one line per kernel and cc, the worst over its signatures."""
    by: dict[tuple, list[dict]] = {}
    for r in rows:
        by.setdefault((json.dumps(r["set"]), r["kernel"], r["cc"]), []).append(r)
    lines = ["| kernel set | kernel | cc | signatures | registers (max) | spill bytes "
             "(st/ld) | stack bytes (max) | shared bytes | float64 ops in PTX (max) | "
             "float32 ops (max) | compile s (sum) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (key, name, cc), rs in sorted(by.items()):
        ok = [r for r in rs if r["ok"]]
        bad = len(rs) - len(ok)
        def worst(field):
            return max((r[field] for r in ok), default=0)
        lines.append(
            f"| {' '.join(map(str, json.loads(key)))} | {name} | sm_{cc} | {len(rs)}"
            f"{f' ({bad} FAILED)' if bad else ''} | {worst('registers')} | "
            f"{worst('spill_stores')}/{worst('spill_loads')} | {worst('stack')} | "
            f"{worst('smem')} | {worst('f64_ops')} | {worst('f32_ops')} | "
            f"{sum(r['seconds'] for r in rs):.1f} |")
    return "\n".join(lines)


def check(folder: str, ccs: list[str], report: str | None, json_out: str | None,
          jobs: int) -> int:
    launches, outside = read_launches(folder)
    problems = []
    if not launches:
        problems.append(f"no launches recorded in {folder} (run the tests with "
                        f"FASTLOSS_RECORD_CUDA_LAUNCHES={folder})")
    if outside:
        problems.append(f"kernels launched outside numba_cuda.kernel_set: {outside}")
    recorded = {tuple(r["set"]) for r in launches}
    missing_sets = [k for k in expected_sets() if k not in recorded]
    if missing_sets:
        problems.append(f"kernel sets no test launched: {missing_sets}")

    missing = toolchain_missing()
    if missing:
        print("FAIL:", missing, file=sys.stderr)
        return 1
    ptxas = ptxas_path()
    # one process per (cc, share of the signatures), in parallel: a fresh Numba per
    # target (device functions are compiled once per process, for one target)
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for cc in ccs:
            for part in range(jobs):
                share = launches[part::jobs]
                src = os.path.join(tmp, f"in-{cc}-{part}.json")
                dst = os.path.join(tmp, f"out-{cc}-{part}.json")
                with open(src, "w") as f:
                    json.dump(share, f)
                env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
                procs.append((dst, subprocess.Popen(
                    [sys.executable, "-m", "fastloss._cuda_check", "--compile", src, dst,
                     "--cc", cc, "--ptxas", ptxas], env=env)))
        rows = []
        for dst, proc in procs:
            if proc.wait():
                problems.append(f"the compile process for {dst} exited with {proc.returncode}")
                continue
            with open(dst) as f:
                rows.extend(json.load(f))

    failed = [r for r in rows if not r["ok"]]
    for r in failed:
        problems.append(f"{r['set']} {r['kernel']} sm_{r['cc']} ({_describe(r['args'])}): "
                        f"{r['error']}")
    spilled = sorted({(json.dumps(r["set"]), r["kernel"]) for r in rows
                      if r["ok"] and (r["spill_stores"] or r["spill_loads"])})
    if spilled:
        problems.append(f"kernels that spill registers: {spilled}")
    # every kernel of every recorded set has a recorded launch
    from .kernels import numba_cuda
    names = {(tuple(r["set"]), r["kernel"]) for r in launches}
    for key in sorted(recorded, key=str):
        for name, _ in _members(numba_cuda.kernel_set(*key)):
            if (key, name) not in names:
                problems.append(f"kernel {name} of set {key}: no test launched it")

    text = (f"{len(launches)} recorded signatures ({len(recorded)} kernel sets) x "
            f"{len(ccs)} targets: {len(rows) - len(failed)} compiled and assembled, "
            f"{len(failed)} failed\n\n" + _table(rows) + "\n")
    print(text)
    if report:
        with open(report, "w") as f:
            f.write(text)
    if json_out:
        with open(json_out, "w") as f:
            json.dump(rows, f, indent=0)
    for p in problems:
        print("FAIL:", p[:3000], file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastloss cuda-check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", help="the recorded launches "
                        "(FASTLOSS_RECORD_CUDA_LAUNCHES of a test run)")
    parser.add_argument("--cc", nargs="+", default=["80", "90"],
                        help="compute capabilities, e.g. 80 90 (default)")
    parser.add_argument("--report", help="write the Markdown table here")
    parser.add_argument("--json", help="write every signature's figures here")
    parser.add_argument("--jobs", type=int, default=1,
                        help="compile processes per target (default 1)")
    parser.add_argument("--compile", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--ptxas", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compile:
        src, dst = args.compile
        with open(src) as f:
            launches = json.load(f)
        cc = args.cc[0]
        rows = _compile_all(launches, (int(cc[:-1]), int(cc[-1])), args.ptxas or ptxas_path())
        with open(dst, "w") as f:
            json.dump(rows, f)
        return 0
    if not args.folder:
        parser.error("the folder of recorded launches is required")
    return check(args.folder, args.cc, args.report, args.json, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
