"""``python -m fastloss bench --report DIR``: a benchmark page people can look at.

For each loss family (elementwise, multiclass, overlap, boxes, pairwise) it
times a few representative cases across sizes, forward and value+grad, on the
compiled CPU backends (c, numba) and the baselines (the NumPy reference,
PyTorch; MONAI for overlap and pytorch-metric-learning for pairwise where they
are installed), measures the peak extra memory of the overlap and pairwise
losses, and writes ``DIR/README.md`` (machine, command, charts, tables of
medians), one PNG per family, a memory PNG and the raw figures as JSON.

The measuring is _bench's (``_time_backends`` -> ``median_time``, the
``make_*_call`` factories, ``read_bandwidth``, ``peak_extra_bytes``); this
module only chooses sizes, runs the grid, draws and writes.  matplotlib is
imported here only, with the Agg backend (no display needed).
"""
from __future__ import annotations

import datetime
import importlib.util
import json
import os
import platform
import re
import shlex
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

import fastloss
from fastloss._bench import (CPU_COMPILED, MODES, PAIRWISE_CASES, OthersCPU, _progress, _ratio,
                             _split, _time_backends, cpu_backends, fastloss_threads, make_box_call,
                             make_call, make_multiclass_call, make_pairwise_call,
                             make_pairwise_inputs, multiclass_shape, numba_pairwise_missing,
                             pairwise_bench_sizes, pairwise_size, peak_extra_bytes,
                             pml_estimate_bytes, read_bandwidth, torch_available)
from fastloss.testing import (BOX_LOSS_NAMES, CASES, MULTICLASS_CASES, OVERLAP_CASES, make_boxes,
                              make_inputs, make_multiclass_inputs)

DEFAULT_SIZES = (10_000, 100_000, 1_000_000, 10_000_000)   # elements; ~4.5 min on 2 cores
QUICK_SIZES = (1_000, 10_000)
MEMORY_SIZES = 2          # peak memory at the largest sizes only: a fresh process per figure
                          # costs seconds (MONAI imports in 6 s), and at small sizes the peak
                          # is within the allocator's page-sized noise
PML_LIMIT_BYTES = 2e8     # pml's NT-Xent builds a (2N)^3 matrix: only the smallest sizes
PAGE = 4096               # the memory chart draws a peak of 0 at one page (log axis)
BASELINES = ("numpy", "torch", "monai", "pml")
BUSY = 0.25               # flag a run where other processes used more of the CPUs
COLORS = {"c": "tab:blue", "numba": "tab:orange", "numpy": "tab:green", "torch": "tab:red",
          "monai": "tab:purple", "pml": "tab:brown"}
BASE_STYLES = {"numpy": "--", "torch": "-", "monai": "-", "pml": ":"}


# --------------------------------------------------------------------------- families

def _torch_name(backend: str) -> str:
    """MONAI's module is the overlap cases' torch_fn, run by make_multiclass_call's "torch"."""
    return "torch" if backend == "monai" else backend


@dataclass(frozen=True)
class Family:
    """How the report builds and times one loss family at a size of about n elements."""

    title: str
    note: str                                  # what is compared with what, in words
    unit: str                                  # what the x axis counts
    cases: dict                                # label -> the case (or a box loss's name)
    default: tuple[str, ...]                   # the labels run unless --losses says
    baselines: tuple[str, ...]
    inputs: Callable                           # (case, n, dtype) -> arrays, in call order
    call: Callable                             # (case, backend, arrays, grad) -> callable
    size: Callable                             # arrays -> the x-axis value
    shape: Callable                            # (case, arrays) -> the size in words
    floor: bool = True                         # draw the pure-read time (streaming losses)
    grad_bytes: Callable | None = None         # (case, arrays) -> gradient bytes returned;
                                               # set: the family's peak memory is measured


def _shape(case, arrays) -> str:
    return "x".join(map(str, arrays[0].shape))


FAMILIES: dict[str, Family] = {
    "elementwise": Family(
        "Elementwise losses", "input + target of n elements; torch = torch.nn.functional.",
        "elements", CASES, ("mse_loss", "log_cosh_loss", "binary_cross_entropy_with_logits"),
        ("numpy", "torch"),
        inputs=lambda case, n, dtype: make_inputs(case, n, dtype, seed=0),
        call=lambda case, b, arrays, grad: make_call(case, b, *arrays, grad=grad),
        size=lambda arrays: arrays[0].size,
        shape=lambda case, arrays: f"{arrays[0].size:,}"),
    "multiclass": Family(
        "Multi-class losses", "(rows, classes) logits or one (1, C, H, W) image, int64 or uint8 "
        "labels; torch = the usual implementation (F.cross_entropy, int64 labels).",
        "logits", MULTICLASS_CASES, ("cross_entropy[llm]", "cross_entropy[seg]"),
        ("numpy", "torch"),
        inputs=lambda case, n, dtype: make_multiclass_inputs(case, multiclass_shape(case, n),
                                                             dtype, seed=0),
        call=lambda case, b, arrays, grad: make_multiclass_call(case, b, *arrays, grad=grad),
        size=lambda arrays: arrays[0].size, shape=_shape),
    "overlap": Family(
        "Overlap (Dice-family) losses", "one (1, C, D, H, W) volume of logits, uint8 labels, "
        "softmax inside; monai = MONAI's loss module (softmax=True, to_onehot_y=True).",
        "logits", OVERLAP_CASES, ("dice_loss[3d]",), ("numpy", "monai"),
        inputs=lambda case, n, dtype: make_multiclass_inputs(
            case, multiclass_shape(case, n, keep_ndim=True), dtype, seed=0),
        call=lambda case, b, arrays, grad: make_multiclass_call(case, _torch_name(b), *arrays,
                                                                grad=grad),
        size=lambda arrays: arrays[0].size, shape=_shape,
        grad_bytes=lambda case, arrays: arrays[0].nbytes),
    "boxes": Family(
        "Box IoU losses", "n / 16 (x1, y1, x2, y2) box pairs (the NumPy reference takes "
        "seconds per call at millions); torch = torchvision's formulas in torch ops.",
        "boxes", {name: name for name in BOX_LOSS_NAMES},
        ("generalized_box_iou_loss", "complete_box_iou_loss"), ("numpy", "torch"),
        inputs=lambda case, n, dtype: make_boxes(max(1, n // 16), dtype),
        call=lambda case, b, arrays, grad: make_box_call(case, b, *arrays, grad=grad),
        size=lambda arrays: len(arrays[0]), shape=lambda case, arrays: f"{len(arrays[0]):,}"),
    "pairwise": Family(
        "Pairwise (representation-learning) losses", "N = sqrt(n / 4) rows of D = 128 (a "
        "multiple of 8, at least 16: numba takes seconds per call at N = 3000); torch = the "
        "usual all-pairs implementation; pml = pytorch-metric-learning (where its memory "
        f"estimate is under {PML_LIMIT_BYTES / 1e9:g} GB); value+grad = the gradients of every "
        "embedding input; no NumPy (its reference builds float64 matrices).",
        "rows (N)", PAIRWISE_CASES, ("nt_xent_loss", "contrastive_loss"), ("torch", "pml"),
        inputs=lambda case, n, dtype: make_pairwise_inputs(
            case, *pairwise_bench_sizes(case, n // 4), 128, dtype, seed=0),
        call=lambda case, b, arrays, grad: make_pairwise_call(case, b, arrays, grad=grad),
        size=lambda arrays: len(arrays[0]),
        shape=lambda case, arrays: pairwise_size(case, len(arrays[0]), len(arrays[-1]),
                                                 arrays[0].shape[1]),
        floor=False,
        grad_bytes=lambda case, arrays: sum(a.nbytes for a in arrays[:len(case.embeddings)])),
}


def _loss_name(case) -> str:
    return case if isinstance(case, str) else case.name


def _runs_here(family: str, case, backend: str, arrays) -> bool:
    """Whether ``backend`` (one asked for, that runs here) times this case at this size."""
    if backend not in CPU_COMPILED and backend not in FAMILIES[family].baselines:
        return False
    if family == "pairwise" and backend == "numba":
        return not numba_pairwise_missing(case)
    if backend == "pml":
        estimate = pml_estimate_bytes(case, len(arrays[0]))
        return bool(case.pml) and estimate is not None and estimate <= PML_LIMIT_BYTES
    return True


# --------------------------------------------------------------------------- measuring

def measure(families: dict[str, list[str]], sizes, backends, dtype, repeats: int,
            memory_backends=()) -> dict:
    """Time every (family, case, size, backend, mode) and, for the families with
    ``grad_bytes``, the peak extra memory of one value+grad call at the largest
    MEMORY_SIZES sizes on ``memory_backends``.  Returns the records, and per
    family the seconds it took and the share of the CPUs others used meanwhile."""
    times, memory, runs = [], [], {}
    bar = _progress(sum(len(labels) for labels in families.values()) * len(sizes))
    try:
        for fam_name, labels in families.items():
            fam, start = FAMILIES[fam_name], time.perf_counter()
            with OthersCPU() as others:
                for label in labels:
                    case, seen = fam.cases[label], set()
                    for i, n in enumerate(sizes):
                        bar.set_description_str(f"{label} n={n:,}")
                        arrays = fam.inputs(case, n, dtype)
                        shape = fam.shape(case, arrays)
                        bar.update()
                        if shape in seen:           # a size that rounds to one already run
                            continue
                        seen.add(shape)
                        use = [b for b in backends if _runs_here(fam_name, case, b, arrays)]
                        measured = _time_backends(
                            lambda b, grad: fam.call(case, b, arrays, grad), use, MODES, repeats)
                        common = dict(family=fam_name, case=label, n=n, size=int(fam.size(arrays)),
                                      shape=shape, input_bytes=sum(a.nbytes for a in arrays))
                        times += [dict(common, backend=b, mode=MODES[grad], seconds=t)
                                  for (b, grad), t in measured.items()]
                        if fam.grad_bytes and i >= len(sizes) - MEMORY_SIZES:
                            memory += [dict(common, backend=b, peak_extra_bytes=peak_extra_bytes(
                                _peak_code(fam_name, label, b, n, dtype)))
                                for b in use if b in memory_backends]
            runs[fam_name] = dict(seconds=time.perf_counter() - start, others_cpu=others.share)
    finally:
        bar.close()
    return dict(times=times, memory=memory, families=runs)


_PEAK_CODE = """
import numpy as np
from fastloss._report import FAMILIES
family = FAMILIES[{family!r}]
case = family.cases[{label!r}]
warmup = family.call(case, {backend!r}, family.inputs(case, 1000, np.dtype({dtype!r})), True)
arrays = family.inputs(case, {n}, np.dtype({dtype!r}))
call = family.call(case, {backend!r}, arrays, True)
expected_bytes = family.grad_bytes(case, arrays)
"""


def _peak_code(family: str, label: str, backend: str, n: int, dtype) -> str:
    """peak_extra_bytes's child code for one value+grad call: a warm-up call at
    n = 1000 (imports, thread pools), the inputs, the call; the gradients it
    returns are not "extra"."""
    return _PEAK_CODE.format(family=family, label=label, backend=backend, n=n,
                             dtype=np.dtype(dtype).name)


# --------------------------------------------------------------------------- the machine

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD extensions that matter here, as /proc/cpuinfo lists them."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f
                          if ln.startswith(("flags", "Features"))), [])
    except OSError:
        flags = []
    return [f for f in ("avx512f", "avx2", "fma", "sse4_2", "asimd", "sve") if f in flags]


def machine_tag(date: str) -> str:
    """'xeon-2core-2026-12-01': the CPU family word, the core count, the date."""
    words = re.sub(r"\((R|TM|tm)\)|@.*|\b(CPU|Processor|Intel|AMD|\d+-Core)\b", " ",
                   cpu_model()).split()
    cpu = re.sub(r"[^a-z0-9]+", "-", (words[0] if words else platform.machine()).lower())
    return f"{cpu}-{os.cpu_count() or 1}core-{date}"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- the command

def _pyplot():
    """matplotlib.pyplot on the Agg backend, or a clear exit if it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--report draws charts with matplotlib, which does not import: "
                         "pip install matplotlib (or the bench extra: "
                         "pip install 'fastloss[bench]')") from None
    matplotlib.use("Agg")              # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt
    return plt


def _sizes(text: str | None, quick: bool) -> list[int]:
    if not text:
        return list(QUICK_SIZES if quick else DEFAULT_SIZES)
    try:
        sizes = sorted({int(float(s)) for s in text.split(",") if s.strip()})
    except ValueError:
        raise SystemExit(f"--sizes: expected comma-separated element counts, got {text!r}") \
            from None
    if not sizes or sizes[0] < 1:
        raise SystemExit(f"--sizes: expected positive element counts, got {text!r}")
    return sizes


def _report_backends(text: str | None) -> list[str]:
    """The backends asked for (default: every one that runs here), in a fixed order."""
    here = cpu_backends() + ["numpy"] + (["torch"] if torch_available() else [])
    here += [b for b, module in (("monai", "monai"), ("pml", "pytorch_metric_learning"))
             if "torch" in here and importlib.util.find_spec(module)]
    wanted = _split(text, list(CPU_COMPILED) + list(BASELINES), "backend") or here
    missing = [b for b in wanted if b not in here]
    if missing:
        info = fastloss.backends()
        raise SystemExit("; ".join(f"backend {b} unavailable" + (
            f": {info[b].reason}" if b in info else " (does not import)") for b in missing))
    return [b for b in list(CPU_COMPILED) + list(BASELINES) if b in wanted]


def _chosen_cases(losses: str | None) -> dict[str, list[str]]:
    """family -> case labels: the defaults, or every case of the losses named."""
    all_names = list(dict.fromkeys(_loss_name(c) for f in FAMILIES.values()
                                   for c in f.cases.values()))
    names = _split(losses, all_names, "loss")
    chosen = {fam_name: [label for label, case in fam.cases.items()
                         if (_loss_name(case) in names if names else label in fam.default)]
              for fam_name, fam in FAMILIES.items()}
    return {k: v for k, v in chosen.items() if v}


def cmd_report(args) -> int:
    plt = _pyplot()                    # fail before measuring for minutes, not after
    start = time.perf_counter()
    now = datetime.datetime.now(datetime.timezone.utc)
    tag = machine_tag(now.date().isoformat())
    out = Path(args.report.replace("{tag}", tag))
    dtype = np.dtype(args.dtype)
    sizes = _sizes(args.sizes, args.quick)
    backends = _report_backends(args.backends)
    families = _chosen_cases(args.losses)
    repeats = min(args.repeats, 3) if args.quick else args.repeats
    # the memory figures compare fastloss's c with the torch-based baselines; numba
    # is left out: each fresh process would compile its kernels first (seconds each)
    memory_backends = [b for b in backends if b in ("c", "torch", "monai", "pml")]

    bandwidth = read_bandwidth(10_000_000 if args.quick else 100_000_000)
    data = measure(families, sizes, backends, dtype, repeats, memory_backends)
    data.update(bandwidth_GBps=bandwidth, meta=dict(
        tag=tag, date=now.strftime("%Y-%m-%d %H:%M UTC"), cpu=cpu_model(),
        cores=os.cpu_count(), threads=fastloss_threads(), machine=platform.machine(),
        cpu_flags=cpu_flags(), isa=fastloss.isa(), dtype=dtype.name, sizes=sizes,
        repeats=repeats, backends=backends, omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
        command="python -m fastloss " + shlex.join(getattr(args, "argv", ["bench"])),
        versions={d: _version(d) for d in ("numpy", "numba", "torch", "monai",
                                           "pytorch-metric-learning", "matplotlib")},
        fastloss=fastloss.__version__, python=platform.python_version()))
    data["meta"]["seconds"] = time.perf_counter() - start    # before drawing: the measuring
    charts = write_report(out, data, plt)
    print(f"wrote {out / 'README.md'} and {len(charts)} charts in "
          f"{time.perf_counter() - start:.0f} s")
    return 0


# --------------------------------------------------------------------------- output

def fmt_time(s: float) -> str:
    """Four significant digits, so that the table's speed-ups can be recomputed from it."""
    return f"{s * 1e6:.4g} µs" if s < 1e-3 else f"{s * 1e3:.4g} ms" if s < 1 else f"{s:.4g} s"


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "–"
    return f"{b / 1e9:.3g} GB" if b >= 1e9 else f"{b / 1e6:.3g} MB" if b >= 1e6 else \
        f"{b / 1e3:.3g} kB"


def _index(records, value: str) -> dict:
    """{(case, shape, mode?, backend): value} of the time or memory records."""
    return {(r["case"], r["shape"], r.get("mode"), r["backend"]): r[value] for r in records}


def _points(records, family: str) -> list[tuple[str, str, int]]:
    """(case, shape, size) of a family's measured sizes, in run order."""
    return list(dict.fromkeys((r["case"], r["shape"], r["size"]) for r in records
                              if r["family"] == family))


def _backends_of(records, family: str) -> list[str]:
    present = {r["backend"] for r in records if r["family"] == family}
    return [b for b in list(CPU_COMPILED) + list(BASELINES) if b in present]


def time_table(data: dict, family: str) -> list[str]:
    """Markdown rows: one per case, size and mode; each backend's median, then each
    compiled backend's speed-up against each baseline (baseline time / its time)."""
    t = _index(data["times"], "seconds")
    backends = _backends_of(data["times"], family)
    pairs = [(fl, base) for fl in backends if fl in CPU_COMPILED
             for base in backends if base in BASELINES]
    head = ["case", FAMILIES[family].unit, "mode", *backends,
            *(f"{fl} vs {base}" for fl, base in pairs)]
    rows = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    for case, shape, _ in _points(data["times"], family):
        for mode in MODES.values():
            row = {b: t.get((case, shape, mode, b)) for b in backends}
            cells = [fmt_time(t) if t else "–" for t in (row[b] for b in backends)]
            ratios = [_ratio(base_t, fl_t) if fl_t and base_t else "–"
                      for fl_t, base_t in ((row[fl], row[base]) for fl, base in pairs)]
            rows.append("| " + " | ".join([case, shape, mode, *cells, *ratios]) + " |")
    return rows


def memory_table(data: dict, family: str) -> list[str]:
    m = _index(data["memory"], "peak_extra_bytes")
    backends = _backends_of(data["memory"], family)
    rows = ["| case | " + FAMILIES[family].unit + " | " + " | ".join(backends) + " |",
            "|---|---|" + "---:|" * len(backends)]
    for case, shape, _ in _points(data["memory"], family):
        rows.append(f"| {case} | {shape} | " + " | ".join(
            fmt_bytes(m.get((case, shape, None, b))) for b in backends) + " |")
    return rows


def plot_family(plt, data: dict, family: str, path: Path) -> None:
    """One row per case: time vs size (forward, value+grad), then the speed-ups
    of c and numba against each baseline; log-log."""
    records = [r for r in data["times"] if r["family"] == family]
    cases = list(dict.fromkeys(r["case"] for r in records))
    backends = _backends_of(records, family)
    bw = data["bandwidth_GBps"]
    fig, axes = plt.subplots(len(cases), 4, figsize=(18, 3.6 * len(cases) + 0.8), squeeze=False)
    for row, case in zip(axes, cases):
        mine = [r for r in records if r["case"] == case]
        for col, mode in enumerate(MODES.values()):
            ax, sx = row[col], row[col + 2]
            for b in backends:
                pts = sorted((r["size"], r["seconds"]) for r in mine
                             if r["backend"] == b and r["mode"] == mode)
                if pts:
                    ax.plot(*zip(*pts), "o-", color=COLORS[b], label=b)
            if FAMILIES[family].floor and bw:
                floor = sorted({(r["size"], r["input_bytes"] / (bw * 1e9)) for r in mine})
                ax.plot(*zip(*floor), "k--", lw=1, label=f"pure read at {bw:.1f} GB/s")
            base = {(r["size"], r["backend"]): r["seconds"] for r in mine if r["mode"] == mode}
            for fl in (b for b in backends if b in CPU_COMPILED):
                for other in (b for b in backends if b in BASELINES):
                    pts = sorted((s, base[s, other] / t) for (s, b), t in base.items()
                                 if b == fl and (s, other) in base)
                    if pts:
                        sx.plot(*zip(*pts), marker="o", ls=BASE_STYLES[other],
                                color=COLORS[fl], label=f"{fl} vs {other}")
            sx.axhline(1.0, color="grey", lw=0.8)             # below it: slower
            ax.set_title(f"{case}\ntime, {mode}", fontsize=10)
            ax.set_ylabel("median time per call")
            sx.set_title(f"{case}\nspeed-up, {mode}", fontsize=10)
            sx.set_ylabel("baseline time / fastloss time")
            for a in (ax, sx):
                _log_axes(a, FAMILIES[family].unit, sorted({r["size"] for r in mine}))
                a.legend(fontsize="x-small")
            _ticks_125(ax, fmt_time)
            _ticks_125(sx, lambda v: f"{v:g}×")
    fig.suptitle(f"{FAMILIES[family].title}, {data['meta']['dtype']}, mean reduction: "
                 f"{data['meta']['cpu']}, {data['meta']['cores']} cores, {data['meta']['date']}")
    fig.tight_layout()
    _save(plt, fig, path)


def _log_axes(ax, unit: str, sizes) -> None:
    """Log-log, the x ticks at the sizes measured ("10k", "1M")."""
    ax.set(xscale="log", yscale="log", xlabel=unit)
    ax.set_xticks(sizes, labels=[_si(s) for s in sizes])
    ax.xaxis.set_minor_formatter("")
    ax.grid(which="both", alpha=0.3)


def _si(v: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:g}"


def _ticks_125(ax, fmt) -> None:
    """Label a log y axis at 1-2-5 steps (decades over a wide range) with ``fmt``
    (matplotlib's default, 2×10^0, leaves a narrow range with one label or none)."""
    lo, hi = ax.get_ylim()
    steps = (1, 2, 5) if hi / lo < 1e3 else (1,)        # wide ranges: decades only
    ticks = [m * 10.0 ** e for e in range(-9, 13) for m in steps if lo <= m * 10.0 ** e <= hi]
    ax.set_yticks(ticks, labels=[fmt(t) for t in ticks])
    ax.yaxis.set_minor_formatter("")
    ax.set_ylim(lo, hi)


def plot_memory(plt, data: dict, path: Path) -> None:
    """Peak extra bytes of one value+grad call vs size, one panel per case."""
    cases = list(dict.fromkeys((r["family"], r["case"]) for r in data["memory"]))
    fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 4), squeeze=False)
    for ax, (family, case) in zip(axes[0], cases):
        mine = [r for r in data["memory"] if r["case"] == case]
        for b in _backends_of(mine, family):
            pts = sorted((r["size"], max(PAGE, r["peak_extra_bytes"])) for r in mine
                         if r["backend"] == b and r["peak_extra_bytes"] is not None)
            if pts:
                ax.plot(*zip(*pts), "o-", color=COLORS[b], label=b)
        ax.set_title(case)
        ax.set_ylabel("peak extra memory, value+grad")
        _log_axes(ax, FAMILIES[family].unit, sorted({r["size"] for r in mine}))
        _ticks_125(ax, fmt_bytes)
        if ax.lines:
            ax.legend(fontsize="small")
    fig.suptitle(f"Peak extra memory: {data['meta']['cpu']}, {data['meta']['date']}")
    fig.tight_layout()
    _save(plt, fig, path)


def _save(plt, fig, path: Path) -> None:
    """The figure as a 256-colour PNG: a third of the bytes of matplotlib's RGBA one, the
    same look (a chart has few colours); PIL comes with matplotlib."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    Image.open(buf).convert("RGB").quantize(256).save(path, optimize=True)


def write_report(out: Path, data: dict, plt) -> list[str]:
    """DIR/README.md, <family>-<tag>.png, memory-<tag>.png and data-<tag>.json;
    returns the charts' file names."""
    out.mkdir(parents=True, exist_ok=True)
    meta, tag = data["meta"], data["meta"]["tag"]
    (out / f"data-{tag}.json").write_text(json.dumps(data, indent=1))
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    charts = []
    busy = [r["others_cpu"] for r in data["families"].values() if r["others_cpu"] is not None]
    lines = [f"# fastloss CPU benchmark report: {tag}", "",
             f"- machine: {meta['cpu']}, {meta['cores']} cores ({meta['threads']} fastloss "
             f"threads), {meta['machine']} with {', '.join(meta['cpu_flags']) or 'no listed SIMD'}"
             f"; fastloss C SIMD path: {meta['isa'] or 'none'}",
             f"- date: {meta['date']}; fastloss {meta['fastloss']}, Python {meta['python']}, "
             f"{versions}; OMP_WAIT_POLICY={meta['omp_wait_policy']}",
             f"- command: `{meta['command']}` (measuring took {meta['seconds'] / 60:.1f} min)",
             f"- read bandwidth: {data['bandwidth_GBps']:.1f} GB/s (`read_bandwidth`: np.max "
             f"over float32 split across the threads, best pass); the charts' dashed line is "
             f"the time a pure read of the inputs takes at it, the memory-bound floor",
             f"- {meta['dtype']}, mean reduction; median seconds per complete call over "
             f"{meta['repeats']} rounds, after an untimed first call (numba compiles there); "
             f"value+grad: fastloss's fused `return_grad=True`, the torch-based baselines' "
             f"forward + `torch.autograd.grad`; speed-up = baseline time / fastloss time, same "
             f"run (timings vary ±20 % from run to run: compare within one report)."]
    if busy:
        lines.append(f"- other processes used up to {max(busy):.0%} of the CPUs during a "
                     f"family's timing" + (" ⚠ — on a busy machine parallel code waits for "
                                           "descheduled threads, so these figures understate it"
                                           if max(busy) > BUSY else ""))
    for family in dict.fromkeys(r["family"] for r in data["times"]):
        fam, png = FAMILIES[family], f"{family}-{tag}.png"
        plot_family(plt, data, family, out / png)
        charts.append(png)
        lines += ["", f"## {fam.title}", "", fam.note, "", f"![{fam.title}: time and speed-up "
                  f"vs size]({png})", "", *time_table(data, family)]
    if data["memory"]:
        png = f"memory-{tag}.png"
        plot_memory(plt, data, out / png)
        charts.append(png)
        lines += ["", "## Peak extra memory (value+grad)", "",
                  "One call in a fresh process (`peak_extra_bytes`), after a warm-up call at "
                  "n = 1000: the resident-memory high-water mark above the level before the "
                  "call, minus the gradients returned; every allocator counts (the chart "
                  f"draws 0 at {fmt_bytes(PAGE)}, one page). Only at the "
                  f"{MEMORY_SIZES} largest sizes, and not for numba (each fresh process would "
                  "compile first).", "", f"![peak extra memory vs size]({png})"]
        for family in dict.fromkeys(r["family"] for r in data["memory"]):
            lines += ["", *memory_table(data, family)]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return charts
