"""Time every elementwise loss on an NVIDIA GPU with ``backend="cuda"``.

    python bench/gpu_bench.py --out DIR [--n 100000000] [--repeats 10]

Inputs are made on the host by ``fastloss.testing.make_inputs`` and copied to
the device once (``numba.cuda.to_device``), so every call reads device memory
only.  Each call is timed with CUDA events around it (after warm-up calls that
compile the kernels), median of ``--repeats``; the events bracket the whole
call, so host-side work that waits on the device (fetching a reduced value)
is counted too.  The ceiling is the device-to-device copy bandwidth measured
in the same run (``DeviceNDArray.copy_to_device``, counting read + write).

Bytes moved: forward reads input + target; value+grad also writes the gradient.
Writes ``DIR/gpu_bench.md`` and ``DIR/gpu_bench.json``; a loss that fails is
reported and the others still run.  ``NUMBA_ENABLE_CUDASIM=1 python
bench/gpu_bench.py --n 2000 --out /tmp/x`` checks the plumbing without a GPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

TARGET_SHARE = 0.80          # of the copy bandwidth, for the elementwise losses


def event_timer(cuda, simulator: bool):
    """A ``timer(fn, number)`` for fastloss._bench.median_time from CUDA events on
    the default stream (where fastloss launches when no stream is given).  The
    simulator's events record no time, so there it is the wall clock."""
    def timer(fn, number):
        start, end = cuda.event(), cuda.event()
        wall = time.perf_counter()
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        if simulator:
            return time.perf_counter() - wall
        return start.elapsed_time(end) / 1e3
    return timer


def copy_bandwidth(cuda, n, repeats, timer, median_time):
    """Device-to-device copy of n float32 values: GB/s counting read + write."""
    src = cuda.to_device(np.ones(n, dtype=np.float32))
    dst = cuda.device_array_like(src)
    t = median_time(lambda: dst.copy_to_device(src), repeats=repeats, warmup=2, min_time=0,
                    timer=timer)
    return 2 * src.nbytes / t / 1e9, t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_bench.md/.json")
    ap.add_argument("--n", type=int, default=100_000_000, help="elements (default 1e8)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--losses", help="comma-separated (default: every case)")
    ap.add_argument("--host-backend", help="backend that computes the expected value on the "
                    "host (default: automatic, i.e. c; numpy under the simulator, whose "
                    "thousands of Python threads once crashed a C call beside them)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    from numba import cuda

    import fastloss
    from fastloss._bench import gpu_name, make_call, median_time, to_host
    from fastloss.testing import CASES, make_inputs

    sim = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    host_backend = args.host_backend or ("numpy" if sim else None)
    info = fastloss.backends()["cuda"]
    print(f"fastloss {fastloss.__version__}; cuda backend: "
          f"{'available' if info.available else info.reason}; simulator: {sim}", flush=True)
    name = gpu_name(cuda)
    timer = event_timer(cuda, sim)
    repeats = args.repeats
    bw, t_copy = copy_bandwidth(cuda, args.n, repeats, timer, median_time)
    print(f"device {name}: copy bandwidth {bw:.0f} GB/s ({t_copy * 1e3:.3f} ms for "
          f"{args.n:,} float32)", flush=True)

    losses = args.losses.split(",") if args.losses else list(CASES)
    rows, device_inputs = [], {}
    for loss in losses:
        case = CASES[loss]
        if case.kind not in device_inputs:               # one upload per kind of input
            device_inputs.clear()                        # keep one pair on the device
            x, y = make_inputs(case, args.n, np.float32, seed=0)
            device_inputs[case.kind] = (x, y, cuda.to_device(x), cuda.to_device(y))
        x, y, dx, dy = device_inputs[case.kind]
        nbytes = x.nbytes
        # the host (c by default, multi-threaded) says what the value must be
        host_value = float(make_call(case, host_backend, x, y)())
        for grad in (False, True):
            mode = "value+grad" if grad else "forward"
            moved = 2 * nbytes + (nbytes if grad else 0)
            row = {"loss": loss, "mode": mode, "n": args.n, "bytes_moved": moved}
            try:
                call = make_call(case, "cuda", dx, dy, grad=grad)
                start = time.perf_counter()
                out = call()
                cuda.synchronize()
                row["first_call_s"] = time.perf_counter() - start
                value = float(to_host(out[0] if grad else out))
                row.update(value=value, host_value=host_value,
                           agrees=math.isclose(value, host_value, rel_tol=1e-4, abs_tol=1e-7))
                t = median_time(call, repeats=repeats, warmup=2, min_time=0, timer=timer)
                row.update(ms=t * 1e3, gbps=moved / t / 1e9, share=moved / t / 1e9 / bw)
                print(f"{loss:<33} {mode:<10} {t * 1e3:9.3f} ms {row['gbps']:8.0f} GB/s "
                      f"{row['share']:5.0%}" + ("" if row["agrees"] else
                      f"  WRONG VALUE {value!r}, host {host_value!r}"), flush=True)
            except Exception as exc:                     # noqa: BLE001 - report, go on
                row["error"] = f"{type(exc).__name__}: {exc}"
                print(f"{loss:<33} {mode:<10} FAILED {row['error']}", flush=True)
                traceback.print_exc()
            rows.append(row)

    header = {"device": name, "simulator": sim, "n": args.n, "copy_GBps": bw,
              "fastloss": fastloss.__version__, "repeats": repeats}
    (args.out / "gpu_bench.json").write_text(json.dumps({**header, "rows": rows}, indent=1))
    lines = [f"# fastloss on {name}{' (SIMULATOR: timings meaningless)' if sim else ''}", "",
             f"n = {args.n:,} float32, mean reduction, `backend=\"cuda\"`; median of {repeats} "
             f"calls timed with CUDA events after warm-up.  Copy bandwidth (device-to-device, "
             f"read + write, same run): **{bw:.0f} GB/s**.  Bytes moved: input + target "
             f"(+ gradient written for value+grad).  Target: ≥ {TARGET_SHARE:.0%} of the copy "
             f"bandwidth.", "",
             "A value that disagrees with the host's (rel. 1e-4) is a MISS whatever its speed.",
             "", "| loss | mode | ms | GB/s moved | % of copy BW | target | value (host) | "
             "first call s |",
             "|---|---|---:|---:|---:|---|---|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['loss']} | {r['mode']} | failed: {r['error'][:120]} | | | MISS "
                         f"| | |")
        else:
            ok = "PASS" if r["share"] >= TARGET_SHARE and r["agrees"] else "MISS"
            lines.append(f"| {r['loss']} | {r['mode']} | {r['ms']:.3f} | {r['gbps']:.0f} | "
                         f"{r['share']:.0%} | {ok} | {r['value']:.6g} ({r['host_value']:.6g})"
                         f"{'' if r['agrees'] else ' WRONG'} | {r['first_call_s']:.2f} |")
    (args.out / "gpu_bench.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'gpu_bench.md'}")
    return 1 if any("error" in r or not r["agrees"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
