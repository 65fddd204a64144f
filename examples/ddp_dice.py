"""The Dice loss of a whole batch split over processes, with torch.distributed.

Each rank holds a shard of the batch (here 3 and 2 samples on two ranks).
The Dice loss is not a sum of per-shard losses, but it is a function of sums
that are: each rank computes the sums (I, P, T) of its shard
(``dice_stats``), the ranks combine them, and every rank computes the loss of
the whole batch from the combined sums (``dice_from_stats``) and the gradient
of that global loss with respect to its own logits (``dice_grad``):

- ``batch=True`` (one score per class over the batch): each rank sums its
  rows, ``dist.all_reduce`` adds the (1, C, 3) arrays.
- ``batch=False`` (one score per sample and class): the rows are gathered
  (``dist.all_gather_object``; uneven shards are fine), and each rank keeps
  the coefficients of its own rows for the gradient.

``DistributedDice`` wraps that in a ``torch.autograd.Function``, so
``loss.backward()`` works through a model.  Under DistributedDataParallel,
which averages the parameter gradients over the ranks, multiply the loss by
``dist.get_world_size()`` before ``backward()`` to get the gradient of the
global loss (each rank's backward gives its share; their sum is the gradient).

Run it (two processes on this machine, gloo backend, checked against the
loss of the whole batch in one process):

    python examples/ddp_dice.py
"""
from __future__ import annotations

import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastloss as fl
from fastloss.losses.overlap import dice_from_stats, dice_grad, dice_stats

STATS_OPTIONS = ("activation", "squared_pred", "ignore_index")


class DistributedDice(torch.autograd.Function):
    """The overlap loss of the batch over every rank of the default process
    group, from this rank's shard: ``DistributedDice.apply(logits, labels,
    options)`` with ``options`` the keyword arguments of ``dice_from_stats``
    (``loss``, ``batch``, ``reduction``, ...) and of ``dice_stats``
    (``activation``, ``squared_pred``, ``ignore_index``)."""

    @staticmethod
    def forward(ctx, logits, labels, options):
        stats_kw = {k: v for k, v in options.items() if k in STATS_OPTIONS}
        value_kw = {k: v for k, v in options.items() if k not in STATS_OPTIONS}
        x, y = logits.detach().numpy(), labels.numpy()
        stats = dice_stats(x, y, **stats_kw)                        # (n_local, C, 3)
        if value_kw.get("batch", False):
            total = torch.from_numpy(stats.sum(axis=0, keepdims=True))
            dist.all_reduce(total)                                 # sums over the ranks
            global_stats, rows = total.numpy(), slice(None)
        else:
            shards = [None] * dist.get_world_size()
            dist.all_gather_object(shards, stats)                  # every rank's rows
            start = sum(len(s) for s in shards[:dist.get_rank()])
            global_stats, rows = np.concatenate(shards), slice(start, start + len(stats))
        value, coef = dice_from_stats(global_stats, return_coef=True, **value_kw)
        ctx.saved = (x, y, coef[rows], stats_kw)
        return torch.tensor(value, dtype=logits.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        x, y, coef, stats_kw = ctx.saved
        grad = torch.from_numpy(dice_grad(x, y, coef, **stats_kw))
        return grad * grad_output, None, None


def make_batch(n=5, classes=3, size=(6, 5), seed=0):
    """The whole batch (every rank makes the same one and takes its shard)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes) + size)
    labels = rng.integers(0, classes, size=(n,) + size)
    return logits, labels


CASES = [dict(loss="dice", activation="softmax", batch=True),
         dict(loss="dice", activation="softmax", batch=False, include_background=False),
         dict(loss="tversky", activation="softmax", batch=False, alpha=0.3, beta=0.7)]
SHARDS = [slice(0, 3), slice(3, 5)]            # uneven on purpose


def worker(rank, world, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    logits, labels = make_batch()
    shard = SHARDS[rank]
    results = {}
    for i, options in enumerate(CASES):
        x = torch.from_numpy(logits[shard]).requires_grad_()
        loss = DistributedDice.apply(x, torch.from_numpy(labels[shard]), options)
        loss.backward()
        results[f"value{i}"], results[f"grad{i}"] = loss.item(), x.grad.numpy()
    np.savez(Path(out_dir) / f"rank{rank}.npz", **results)
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    world = len(SHARDS)
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(worker, args=(world, free_port(), out_dir), nprocs=world, join=True)
        ranks = [dict(np.load(Path(out_dir) / f"rank{r}.npz")) for r in range(world)]
    logits, labels = make_batch()
    ok = True
    for i, options in enumerate(CASES):
        kw = dict(options)
        name = kw.pop("loss") + "_loss"
        value, grad = getattr(fl, name)(logits, labels, return_grad=True, **kw)
        got_grad = np.concatenate([r[f"grad{i}"] for r in ranks])
        same = (all(np.isclose(r[f"value{i}"], value, rtol=1e-12, atol=0) for r in ranks)
                and np.allclose(got_grad, grad, rtol=1e-10, atol=1e-14))
        ok &= bool(same)
        print(f"{'ok  ' if same else 'FAIL'} {options}: global {name} = {float(value):.12f} "
              f"on {world} ranks, max |grad difference| = {np.abs(got_grad - grad).max():.1e}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
