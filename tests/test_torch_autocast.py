"""fastloss.torch with float16 / bfloat16: tensors given directly are computed in
float32 with the value and gradients in their own dtype; under torch.autocast the
losses run in float32 and return float32, as PyTorch's own losses do there, in eager
mode and compiled."""
import pytest

torch = pytest.importorskip("torch")

import fastloss as _fl  # noqa: E402
import fastloss.torch as flt  # noqa: E402
import fastloss.torch.functional as F  # noqa: E402
from fastloss.torch import _ops  # noqa: E402

from test_torch_adapter import GRADCHECK  # noqa: E402

TF = torch.nn.functional
HALF = [torch.float16, torch.bfloat16]


def _cast(args, dtype):
    return [a.detach().to(dtype).requires_grad_(a.requires_grad)
            if a.is_floating_point() else a for a in args]


def _run(fn, args, kwargs):
    value = fn(*args, **kwargs)
    wanted = [a for a in args if a.requires_grad]
    grads = torch.autograd.grad(value.sum(), wanted)
    return value, grads


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("label,fn,args,kwargs", GRADCHECK, ids=[c[0] for c in GRADCHECK])
def test_half_tensors_are_computed_in_float32(label, fn, args, kwargs, dtype):
    half = _cast(args, dtype)
    value, grads = _run(fn, half, kwargs)
    # the same numbers, widened exactly, in float32: then rounded to the dtype
    wide_value, wide_grads = _run(fn, _cast(half, torch.float32), kwargs)
    assert value.dtype == dtype and value.shape == wide_value.shape
    torch.testing.assert_close(value, wide_value.to(dtype), rtol=0, atol=0)
    for got, want, tensor in zip(grads, wide_grads, [a for a in half if a.requires_grad]):
        assert got.dtype == tensor.dtype == dtype
        torch.testing.assert_close(got, want.to(dtype), rtol=0, atol=0)


#: fastloss.torch functions and the PyTorch losses they stand in for, under autocast
PEERS = [
    ("cross_entropy", lambda z, c: (z, c.argmax(1)), dict(label_smoothing=0.1)),
    ("nll_loss", lambda z, c: (torch.log_softmax(z.float(), 1).to(z.dtype), c.argmax(1)), {}),
    ("mse_loss", lambda z, c: (z, c), {}),
    ("l1_loss", lambda z, c: (z, c), {}),
    ("huber_loss", lambda z, c: (z, c), dict(delta=0.5)),
    ("smooth_l1_loss", lambda z, c: (z, c), {}),
    ("binary_cross_entropy_with_logits", lambda z, c: (z, c.sigmoid()), {}),
]


@pytest.mark.parametrize("name,make,kwargs", PEERS, ids=[p[0] for p in PEERS])
def test_autocast_cpu_matches_torch(name, make, kwargs):
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 5)
    x, c = torch.randn(8, 6), torch.randn(8, 5)
    results = []
    for fn in (getattr(F, name), getattr(TF, name)):
        linear.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = linear(x)
            assert z.dtype == torch.bfloat16
            value = fn(*make(z, c), **kwargs)
        value.backward()
        results.append((value, linear.weight.grad.clone()))
    (ours, our_grad), (theirs, their_grad) = results
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-5, atol=1e-6)


def test_autocast_casts_the_inputs_before_the_kernel(monkeypatch):
    """The core sees float32 arrays under autocast, and with half tensors given
    directly: no half array ever reaches a kernel."""
    seen = []
    core = _fl.mse_loss

    def record(*arrays, **kwargs):
        seen.append(tuple(str(a.dtype) for a in arrays))
        return core(*arrays, **kwargs)

    monkeypatch.setattr(_fl, "mse_loss", record)
    a, b = torch.randn(4, 3, dtype=torch.bfloat16), torch.randn(4, 3, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = F.mse_loss(a, b)
    assert value.dtype == torch.float32 and seen == [("float32", "float32")]
    torch.testing.assert_close(value, F.mse_loss(a.float(), b.float()), rtol=0, atol=0)
    assert F.mse_loss(a, b).dtype == torch.bfloat16 and seen[-1] == ("float32", "float32")


def test_compiled_under_autocast_matches_eager():
    torch.manual_seed(1)
    model = torch.nn.Linear(6, 4)
    criterion = flt.CrossEntropyLoss()
    x, target = torch.randn(10, 6), torch.randint(0, 4, (10,))

    def step(forward):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = forward(x, target)
        value.backward()
        return value.detach(), model.weight.grad.clone()

    def forward(x, target):
        return criterion(model(x), target)

    eager = step(forward)
    torch._dynamo.reset()
    compiled = step(torch.compile(forward, fullgraph=True, backend="aot_eager"))
    assert eager[0].dtype == compiled[0].dtype == torch.float32
    torch.testing.assert_close(compiled[0], eager[0], rtol=0, atol=0)
    torch.testing.assert_close(compiled[1], eager[1], rtol=0, atol=0)


def test_opcheck_with_bfloat16_tensors(monkeypatch):
    a = torch.randn(5, 4, dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(5, 4, dtype=torch.bfloat16)
    calls = []
    original = _ops.invoke
    monkeypatch.setattr(_ops, "invoke", lambda loss, t, text: calls.append((loss, t, text))
                        or original(loss, t, text))
    F.huber_loss(a, b, reduction="none")
    (loss, tensors, text), = calls
    torch.library.opcheck(getattr(torch.ops.fastloss, loss).default, (tensors, text))
