"""Turn a pytest-benchmark JSON of the bench/ suites into a report.

    pytest bench --benchmark-json=bench/results/raw.json
    python bench/report.py bench/results/raw.json [MORE.json ...] [--name NAME] [--primary c]

Writes ``<out-dir>/<name>.md`` (default: ``bench/results/<json stem>.md``): the
targets with PASS/MISS, then one table per mode (loss, backend, n, median time,
GB/s of input read, % of the read bandwidth measured in the same run, speed-up
vs PyTorch and vs NumPy of the same run), and ``<name>.png``: GB/s per loss and
backend at the largest n, with the bandwidth as a horizontal line.  The
targets are also printed.  Every comparison is within the one run.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

MODES = ("forward", "value+grad")
BACKEND_ORDER = ("c", "numba", "numpy", "torch")
BUSY = 0.25                   # flag timings taken while others used more of the CPUs

# The targets (see bench/README.md); evaluated on --primary (c) unless stated.
FAST_TRANSCENDENTAL = ("log_cosh_loss", "binary_cross_entropy_with_logits", "sigmoid_focal_loss")
BANDWIDTH_BOUND = ("mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "quantile_loss")
FORWARD_VS_TORCH = 5.0        # x PyTorch forward, transcendental losses
GRAD_VS_TORCH = 10.0          # x PyTorch forward + backward, every loss
BANDWIDTH_SHARE = 0.75        # of the measured read bandwidth, cheap losses forward
NUMBA_VS_C = 3.0              # numba no slower than this many times c
SMALL_N, SMALL_CALL_S = 1_000, 5e-6   # a complete call at n = 1e3


# The other families' suites (bench/test_bench_<family>.py): the baseline
# backend their speed-ups are against, and the targets as (case, value+grad
# speed-up, peak extra bytes: per row for multiclass, per call otherwise) and
# (case, forward share of the read bandwidth).
FAMILIES = {
    "multiclass": dict(   # issue 3
        title="Multi-class losses", baseline="torch",
        note="float32, mean reduction; value+grad in torch = forward + `torch.autograd.grad`.",
        targets=(("cross_entropy[llm]", 3.0, 1000.0),   # < 1 MB per 1000 rows
                 ("cross_entropy[seg]", 5.0, None),
                 ("softmax_focal_loss[seg]", 5.0, None))),
    "overlap": dict(      # issue 4
        title="Overlap (Dice-family) losses", baseline="monai",
        note="float32 logits, uint8 labels, softmax inside the loss, mean reduction; monai = "
             "MONAI's loss module (`softmax=True, to_onehot_y=True`) on PyTorch CPU, "
             "value+grad = forward + `torch.autograd.grad`.",
        targets=(("dice_loss[3d]", 10.0, 1e6),),
        bandwidth=(("dice_loss[3d]", 0.60),)),
    "boxes": dict(        # issue 4
        title="Box IoU losses", baseline="torch",
        note="1e6 float32 boxes, mean reduction; torch = torchvision's formulas written in "
             "torch ops, value+grad = forward + `torch.autograd.grad`.",
        targets=tuple((loss, 5.0, None) for loss in (
            "generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss"))),
    "pairwise": dict(     # issue 5
        title="Pairwise (representation-learning) losses", baseline="torch",
        note="float32, D = 128; value+grad = the value and the gradients of every embedding "
             "input. torch = the usual PyTorch implementation, all-pairs matrices (NT-Xent: "
             "the (2N, 2N) similarity masked with -inf + `F.cross_entropy`; InfoNCE: "
             "info-nce-pytorch's `info_nce`; contrastive, batch-hard: `torch.cdist` of the "
             "normalized rows + label masks; `F.triplet_margin_loss`); pml = "
             "pytorch-metric-learning (NTXentLoss, ContrastiveLoss, BatchHardMiner + "
             "TripletMarginLoss); their value+grad = forward + `torch.autograd.grad`.",
        peak_note="Peak extra = one value+grad call in a fresh process (after a warm-up call "
                  "at N = 64 and with the inputs built): the resident-memory high-water mark "
                  "above the level before the call, minus the gradients returned (the size "
                  "of the embedding inputs); every allocator counts, so it includes "
                  "normalized copies, float64 temporaries and per-thread workspaces.",
        targets=(("nt_xent_loss", 2.0, 32e6), ("info_nce_loss[unpaired]", 2.0, 32e6),
                 ("contrastive_loss", 2.0, None), ("batch_hard_triplet_loss", 2.0, None)),
        # O(N D) targets: no fixed limit, peak shown as a multiple of the embeddings' bytes
        memory_scale=("contrastive_loss", "batch_hard_triplet_loss")),
}


@dataclass
class Run:
    times: dict            # (loss, backend, n, mode) -> median seconds per call
    busy: dict             # (loss, backend, n, mode) -> share of CPUs others used meanwhile
    nbytes: dict           # (loss, n) -> bytes read (input + target)
    bandwidth: float       # GB/s
    bandwidth_how: str
    meta: dict
    families: dict = None     # family -> {(case, backend, mode): extra_info + "median"}

    def gbps(self, loss, backend, n, mode):
        t = self.times.get((loss, backend, n, mode))
        return self.nbytes[loss, n] / t / 1e9 if t else None

    def ratio(self, loss, backend, n, mode, base):
        t, tb = self.times.get((loss, backend, n, mode)), self.times.get((loss, base, n, mode))
        return tb / t if t and tb else None


def load(paths: list[Path]) -> Run:
    """One run from one JSON, or from several (e.g. one process per backend:
    ``-k "-numba-"``); a benchmark in a later file replaces the same one earlier."""
    runs = [json.loads(p.read_text()) for p in paths]
    data = runs[0]
    times, busy, nbytes, bw, how, meta = {}, {}, {}, 0.0, "not measured in this run", {}
    families = {}
    for b in (b for d in runs for b in d["benchmarks"]):
        info, stats = b.get("extra_info", {}), b["stats"]
        if info.get("family") in FAMILIES:
            for k in ("fastloss_version", "isa", "threads", "torch_threads", "omp_wait_policy"):
                if k in info:               # a run without the bandwidth benchmark
                    meta.setdefault(k, info[k])
            families.setdefault(info["family"], {})[info["case"], info["backend"],
                                                    info["mode"]] = {
                **info, "median": stats["median"]}
        elif info.get("mode") == "bandwidth":
            # the fastest pass is the machine's ceiling: take the best of the
            # benchmark's rounds and of read_bandwidth()'s own best-of-5
            bw = max(bw, info["bytes_read"] / stats["min"] / 1e9, info.get("best_of_5_GBps", 0))
            how = info.get("method", "")
            meta.update({k: info[k] for k in ("fastloss_version", "isa", "threads",
                                              "torch_threads", "omp_wait_policy") if k in info})
        elif info.get("mode") in MODES:
            key = (info["loss"], info["backend"], int(info["n"]), info["mode"])
            times[key] = stats["median"]
            if info.get("others_cpu") is not None:
                busy[key] = info["others_cpu"]
            nbytes[info["loss"], int(info["n"])] = info["bytes_read"]
    meta["datetime"] = data.get("datetime", "")
    commit = data.get("commit_info") or {}
    meta["commit"] = (commit.get("id") or "")[:10] + (" (dirty)" if commit.get("dirty") else "")
    mi = data.get("machine_info") or {}
    meta["cpu"] = (mi.get("cpu") or {}).get("brand_raw", mi.get("processor", ""))
    meta["python"] = mi.get("python_version", "")
    return Run(times, busy, nbytes, bw, how, meta, families)


# --------------------------------------------------------------------------- formatting

def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.2f} µs"
    if s < 1:
        return f"{s * 1e3:.3f} ms"
    return f"{s:.3f} s"


def fmt_x(r) -> str:
    if r is None:
        return "–"
    return f"{r:.0f}×" if r >= 100 else f"{r:.1f}×" if r >= 1 else f"{r:.2f}×"


def fmt_n(n: int) -> str:
    e = len(str(n)) - 1
    return f"1e{e}" if n == 10 ** e else f"{n:,}"


def ordered(names, order=BACKEND_ORDER):
    return sorted(names, key=lambda b: (order.index(b) if b in order else len(order), b))


# --------------------------------------------------------------------------- targets

TARGET_COLUMNS = (
    f"fwd vs torch ≥{FORWARD_VS_TORCH:g}×",
    f"grad vs torch ≥{GRAD_VS_TORCH:g}×",
    f"fwd ≥{BANDWIDTH_SHARE:.0%} of BW",
    f"numba/c fwd ≤{NUMBA_VS_C:g}",
    f"numba/c grad ≤{NUMBA_VS_C:g}",
    f"fwd at 1e3 ≤{SMALL_CALL_S * 1e6:g} µs",
    f"grad at 1e3 ≤{SMALL_CALL_S * 1e6:g} µs",
)


def targets(run: Run, primary: str) -> tuple[int, list[tuple[str, list[str]]]]:
    """The largest n, and per loss one cell per TARGET_COLUMNS: "<value> PASS|MISS",
    "n/a" where a figure is missing, "" where the target doesn't apply.
    Ratios vs torch and bandwidth shares are judged at the run's largest n."""
    big = max(n for (_, _, n, _) in run.times)

    def cell(text, value, ok):
        return "n/a" if value is None else f"{text} {'PASS' if ok else 'MISS'}"

    table = []
    for loss in sorted({k[0] for k in run.times}, key=list_order(run)):
        cells = []
        r = run.ratio(loss, primary, big, "forward", "torch")
        cells.append(cell(fmt_x(r), r, r is not None and r >= FORWARD_VS_TORCH)
                     if loss in FAST_TRANSCENDENTAL else "")
        r = run.ratio(loss, primary, big, "value+grad", "torch")
        cells.append(cell(fmt_x(r), r, r is not None and r >= GRAD_VS_TORCH))
        g = run.gbps(loss, primary, big, "forward")
        share = g / run.bandwidth if g and run.bandwidth else None
        cells.append(cell(f"{share:.0%}" if share else "", share,
                          share is not None and share >= BANDWIDTH_SHARE)
                     if loss in BANDWIDTH_BOUND else "")
        for mode in MODES:
            r = run.ratio(loss, primary, big, mode, "numba")      # t_numba / t_primary
            cells.append(cell(f"{r:.2f}" if r else "", r, r is not None and r <= NUMBA_VS_C))
        for mode in MODES:
            s = run.times.get((loss, primary, SMALL_N, mode))
            cells.append(cell(fmt_time(s) if s else "", s, s is not None and s <= SMALL_CALL_S))
        table.append((loss, cells))
    return big, table


def family_targets(run: Run, family: str, primary: str) -> list[tuple[str, str, str]]:
    """(target, speed-up cell, memory cell) per target of a family (FAMILIES)."""
    spec = FAMILIES[family]
    entries = run.families.get(family, {})
    out = []
    for case, speedup, per_row in spec["targets"]:
        mine = entries.get((case, primary, "value+grad"))
        base = entries.get((case, spec["baseline"], "value+grad"))
        if not mine:
            continue
        r = base["median"] / mine["median"] if base else None
        speed = "n/a" if r is None else f"{fmt_x(r)} {'PASS' if r >= speedup else 'MISS'}"
        memory = ""
        theirs = f"; {spec['baseline']}: {fmt_bytes(base.get('peak_extra_bytes'))}" \
            if base else ""
        if case in spec.get("memory_scale", ()) and mine.get("peak_extra_bytes") is not None:
            scale = mine["peak_extra_bytes"] / mine["embedding_bytes"]
            memory = (f"{fmt_bytes(mine['peak_extra_bytes'])} = {scale:.1f}× the embeddings "
                      f"(O(N D), no fixed limit{theirs})")
        if per_row is not None and mine.get("peak_extra_bytes") is not None:
            rows = mine["shape"][0] * math.prod(mine["shape"][2:]) if family == "multiclass" \
                else 1
            limit = per_row * rows
            memory = (f"{fmt_bytes(mine['peak_extra_bytes'])} (limit {fmt_bytes(limit)}"
                      f"{theirs}) {'PASS' if mine['peak_extra_bytes'] < limit else 'MISS'}")
        out.append((f"{case} value+grad ≥{speedup:g}× {spec['baseline']}", speed, memory))
    for case, share in spec.get("bandwidth", ()):
        mine = entries.get((case, primary, "forward"))
        if not mine or not run.bandwidth:
            continue
        got = mine["bytes_read"] / mine["median"] / 1e9
        out.append((f"{case} forward ≥{share:.0%} of the read bandwidth",
                    f"{got:.1f} GB/s = {got / run.bandwidth:.0%} of {run.bandwidth:.1f} "
                    f"{'PASS' if got >= share * run.bandwidth else 'MISS'}", ""))
    return out


def fmt_bytes(b) -> str:
    if b is None:
        return "–"
    return f"{b / 1e9:.2f} GB" if b >= 1e9 else f"{b / 1e6:.1f} MB" if b >= 1e5 else \
        f"{b / 1e3:.0f} kB"


def family_lines(run: Run, family: str, primary: str) -> list[str]:
    spec = FAMILIES[family]
    entries = run.families.get(family)
    if not entries:
        return []
    baseline = spec["baseline"]
    lines = ["", f"## {spec['title']}", "", spec["note"] + " " + spec.get(
             "peak_note", "Peak extra = resident-memory high-water mark of one call above its "
             "level before, minus the gradient output (every allocator counts)."), ""]
    checks = family_targets(run, family, primary)
    if checks:
        lines += ["| target | result | peak extra memory |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in checks]
        lines.append("")
    lines += [f"| case | shape | mode | backend | median | vs {baseline} | peak extra memory |",
              "|---|---|---|---|---:|---:|---:|"]
    for case in dict.fromkeys(k[0] for k in entries):
        for mode in MODES:
            base = entries.get((case, baseline, mode))
            for b in ordered({k[1] for k in entries if k[0] == case and k[2] == mode}):
                e = entries[case, b, mode]
                r = base["median"] / e["median"] if base else None
                warn = " ⚠" if (e.get("others_cpu") or 0) > BUSY else ""
                shape = e.get("size") or (tuple(e["shape"]) if "shape" in e else (e["n"], 4))
                lines.append(f"| {case} | {shape} | {mode} | {b} | "
                             f"{fmt_time(e['median'])}{warn} | {fmt_x(r)} | "
                             f"{fmt_bytes(e.get('peak_extra_bytes'))} |")
    skipped = [(k[0], e["pml_skipped"]) for k, e in entries.items() if e.get("pml_skipped")]
    if skipped:
        lines.append("")
        lines += [f"- {case}: {reason}" for case, reason in dict(skipped).items()]
    return lines


def tally(table) -> tuple[int, int]:
    cells = [c for _, row in table for c in row]
    return sum(c.endswith("PASS") for c in cells), sum(c.endswith(("PASS", "MISS"))
                                                       for c in cells)


def list_order(run: Run):
    """Losses in the order the suite ran them (the CASES table's order)."""
    seen = list(dict.fromkeys(loss for (loss, _, _, _) in run.times))
    return seen.index


def target_lines(table) -> list[str]:
    """The targets table as aligned plain text."""
    head = ["loss", *TARGET_COLUMNS]
    rows = [[loss, *cells] for loss, cells in table]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]


# --------------------------------------------------------------------------- outputs

def markdown(run: Run, name: str, primary: str, judged, chart: str | None) -> str:
    m = run.meta
    lines = [f"# fastloss benchmarks: {name}", "",
             f"- run {m.get('datetime', '')}, commit {m.get('commit') or '?'}; "
             f"fastloss {m.get('fastloss_version', '?')}, C SIMD path {m.get('isa', '?')}, "
             f"{m.get('threads', '?')} threads (torch {m.get('torch_threads', '?')}), "
             f"OMP_WAIT_POLICY={m.get('omp_wait_policy', '?')}; "
             f"{m.get('cpu', '')}, Python {m.get('python', '')}",
             f"- read bandwidth measured in this run: **{run.bandwidth:.1f} GB/s** "
             f"({run.bandwidth_how}; fastest pass)",
             "- float32, mean reduction; time = median per complete call; GB/s = "
             "(input + target bytes) / time; ratios = other's time / this time, same run; "
             "torch value+grad = forward + `torch.autograd.grad`."]
    if run.busy:
        shares = sorted(run.busy.values())
        flagged = sum(s > BUSY for s in shares)
        lines.append(f"- other processes used {shares[len(shares) // 2]:.0%} of the CPUs "
                     f"(median over benchmarks, max {shares[-1]:.0%}); {flagged} of "
                     f"{len(shares)} timings taken while they used more than {BUSY:.0%} "
                     f"are marked ⚠ (on a busy machine parallel code waits for "
                     f"descheduled threads: such figures understate the code)")
    lines.append("")
    big, table = judged
    passed, counted = tally(table)
    if table:
        lines += [f"## Targets: {passed}/{counted} pass", "",
              f"Judged on backend `{primary}`; vs torch and % of the read bandwidth at n = "
              f"{fmt_n(big)}; numba/c = numba's time / {primary}'s at n = {fmt_n(big)}.", "",
              "| " + " | ".join(["loss", *TARGET_COLUMNS]) + " |",
              "|" + "---|" * (len(TARGET_COLUMNS) + 1)]
        lines += ["| " + " | ".join([loss, *cells]) + " |" for loss, cells in table]
    order = list_order(run)
    for mode in MODES:
        keys = [k for k in run.times if k[3] == mode]
        if not keys:
            continue
        lines += ["", f"## {mode}", "",
                  "| loss | backend | n | median | GB/s | % of read BW | vs torch | vs numpy |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for loss in sorted({k[0] for k in keys}, key=order):
            for n in sorted({k[2] for k in keys if k[0] == loss}):
                for b in ordered({k[1] for k in keys if k[0] == loss and k[2] == n}):
                    t, g = run.times[loss, b, n, mode], run.gbps(loss, b, n, mode)
                    pct = f"{g / run.bandwidth:.0%}" if run.bandwidth else "–"
                    warn = " ⚠" if run.busy.get((loss, b, n, mode), 0) > BUSY else ""
                    lines.append(f"| {loss} | {b} | {fmt_n(n)} | {fmt_time(t)}{warn} | {g:.2f} "
                                 f"| {pct} "
                                 f"| {fmt_x(run.ratio(loss, b, n, mode, 'torch'))} "
                                 f"| {fmt_x(run.ratio(loss, b, n, mode, 'numpy'))} |")
    if chart:
        lines += ["", f"![GB/s per loss and backend]({chart})"]
    for family in FAMILIES:
        lines += family_lines(run, family, primary)
    return "\n".join(lines) + "\n"


def plot(run: Run, path: Path) -> bool:
    """Bars of GB/s per loss and backend at the largest n, one panel per mode."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart", file=sys.stderr)
        return False
    big = max(n for (_, _, n, _) in run.times)
    losses = sorted({k[0] for k in run.times}, key=list_order(run))
    backends = ordered({k[1] for k in run.times})
    fig, axes = plt.subplots(len(MODES), 1, figsize=(12, 8), sharex=True)
    width = 0.8 / max(1, len(backends))
    for ax, mode in zip(axes, MODES):
        for j, b in enumerate(backends):
            vals = [run.gbps(loss, b, big, mode) or 0.0 for loss in losses]
            ax.bar([i + (j - (len(backends) - 1) / 2) * width for i in range(len(losses))],
                   vals, width, label=b)
        if run.bandwidth:
            ax.axhline(run.bandwidth, color="k", ls="--", lw=1,
                       label=f"read bandwidth {run.bandwidth:.1f} GB/s")
        ax.set_yscale("log")
        ax.set_ylabel("GB/s of input read")
        ax.set_title(f"{mode}, n = {fmt_n(big)} float32, mean")
        ax.grid(axis="y", which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize="small")
    axes[-1].set_xticks(range(len(losses)))
    axes[-1].set_xticklabels([s.replace("_loss", "").replace("binary_cross_entropy", "bce")
                              for s in losses], rotation=20, ha="right")
    fig.tight_layout(rect=(0, 0, 1, 0.96))          # room for the legend above
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", type=Path, nargs="+",
                    help="pytest-benchmark --benchmark-json output(s)")
    ap.add_argument("--name", help="report name (default: the JSON file's stem)")
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--primary", default="c", help="backend the targets are judged on")
    args = ap.parse_args(argv)

    run = load(args.json)
    if not run.times and not run.families:
        print(f"{' '.join(map(str, args.json))}: no loss benchmarks with timings (was it run with "
              f"--benchmark-disable?)", file=sys.stderr)
        return 2
    name = args.name or args.json[0].stem
    args.out_dir.mkdir(parents=True, exist_ok=True)
    png = args.out_dir / f"{name}.png"
    judged = targets(run, args.primary) if run.times else (0, [])
    chart = png.name if run.times and plot(run, png) else None
    md = args.out_dir / f"{name}.md"
    md.write_text(markdown(run, name, args.primary, judged, chart))

    big, table = judged
    passed, judged = tally(table)
    print(f"read bandwidth (this run): {run.bandwidth:.1f} GB/s; targets judged on "
          f"{args.primary}, ratios and shares at n = {fmt_n(big)}")
    flagged = sum(s > BUSY for s in run.busy.values())
    if flagged:
        print(f"warning: {flagged} of {len(run.busy)} timings were taken while other "
              f"processes used more than {BUSY:.0%} of the CPUs (marked ⚠ in {md.name})")
    if table:
        print("\n".join(target_lines(table)))
    for family in FAMILIES:
        for target, speed, memory in family_targets(run, family, args.primary):
            print(f"{target}: {speed}" + (f"; peak extra memory {memory}" if memory else ""))
    print(f"{passed}/{judged} targets pass; wrote {md}" + (f" and {png}" if chart else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
