"""Issue 13's four small-call targets: fastloss (automatic backend) against the same
torch.nn.functional call on the same arrays, 15 interleaved rounds of 500 calls,
median time and median of the per-round ratio.  Run: python bench/small_call_targets.py
(needs torch; results: bench/results/call-path-fastcall-*.md)."""
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import fastloss as fl

torch.set_num_threads(2)
rng = np.random.default_rng(0)
x = rng.standard_normal(1000).astype(np.float32); y = rng.standard_normal(1000).astype(np.float32)
yb = (rng.random(1000) > .5).astype(np.float32)
l = rng.standard_normal((64, 10)).astype(np.float32); lab = rng.integers(0, 10, 64)
lp = rng.standard_normal((1000, 1000)).astype(np.float32); lab2 = rng.integers(0, 1000, 1000)
tx, ty, tyb, tl, tlab, tlp, tlab2 = map(torch.from_numpy, (x, y, yb, l, lab, lp, lab2))
cases = [
 ("mse 1e3", lambda: fl.mse_loss(x, y), lambda: F.mse_loss(tx, ty), lambda: fl.mse_loss(x, y, return_grad=True)),
 ("bce_logits 1e3", lambda: fl.binary_cross_entropy_with_logits(x, yb), lambda: F.binary_cross_entropy_with_logits(tx, tyb), lambda: fl.binary_cross_entropy_with_logits(x, yb, return_grad=True)),
 ("ce 64x10", lambda: fl.cross_entropy(l, lab), lambda: F.cross_entropy(tl, tlab), lambda: fl.cross_entropy(l, lab, return_grad=True)),
 ("nll 1000x1000", lambda: fl.nll_loss(lp, lab2), lambda: F.nll_loss(tlp, tlab2), lambda: fl.nll_loss(lp, lab2, return_grad=True)),
]
def per(fn, k=500):
    t = time.perf_counter()
    for _ in range(k): fn()
    return (time.perf_counter() - t) / k * 1e6
for name, a, b, g in cases:
    for f in (a, b, g): f()
    ra, rb, rg = [], [], []
    for _ in range(15):
        ra.append(per(a)); rb.append(per(b)); rg.append(per(g))
    ratio = statistics.median([p / q for p, q in zip(ra, rb)])
    print(f"{name:16s} fl {statistics.median(ra):6.2f} us  torch {statistics.median(rb):6.2f} us  ratio {ratio:.2f}  grad/fwd {statistics.median(rg)/statistics.median(ra):.2f}")
