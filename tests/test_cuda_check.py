"""The CUDA compile check (fastloss/_cuda_check.py): the launch recorder, the
ptxas report parsing, the coverage list, and one real compile when libNVVM and
ptxas are installed (the cuda-check extra, which .ci/run installs)."""
import json

import numpy as np
import pytest

import fastloss as fl
from fastloss import _cuda_check

from conftest import SIMULATED, available, to_device as gpu

needs_simulator = pytest.mark.skipif(not (SIMULATED and available("cuda")),
                                     reason="the recorder wraps the CUDA simulator's launch")


def _launch_of(rows, key, name):
    return [r for r in rows if r["set"] == key and r["kernel"] == name]


@needs_simulator
def test_a_launch_records_its_kernel_set_and_argument_types():
    _cuda_check._install_recorder()
    x = gpu(np.linspace(-1, 1, 40, dtype=np.float32))
    fl.mse_loss(x, x, reduction="sum", return_grad=True, backend="cuda")
    rows = _launch_of(_cuda_check.recorded(), ["elementwise", "mse"], "kernel")
    f32 = ["array", "float32", 1, "C"]
    want = [f32, f32, f32, f32, ["scalar", "bool"], ["scalar", "bool"], ["scalar", "float64"],
            ["scalar", "float64"], f32, f32, ["scalar", "bool"], ["scalar", "bool"],
            ["scalar", "float64"], ["array", "float64", 1, "C"]]
    assert want in [r["args"] for r in rows]
    assert _launch_of(_cuda_check.recorded(), ["shared"], "finish_sum")
    assert not _cuda_check._unknown


@needs_simulator
def test_every_kernel_set_is_in_the_expected_list():
    from fastloss.kernels import numba_cuda
    expected = _cuda_check.expected_sets()
    assert {k[0] for k in expected} == set(numba_cuda._KERNEL_SETS)
    # every elementwise and row-wise kernel the registry names, both row shapes
    from fastloss._registry import records
    for r in records("elementwise"):
        assert ("elementwise", r.kernel) in expected
    for r in records("multiclass"):
        for k in r.kernels:
            assert ("rowwise", k, False) in expected and ("rowwise", k, True) in expected


def test_ptxas_report_and_float64_count():
    text = """ptxas info    : 24 bytes gmem
ptxas info    : Compiling entry function 'k' for 'sm_90'
ptxas info    : Function properties for k
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 36 registers, used 1 barriers, 2048 bytes smem
"""
    assert _cuda_check._ptxas_info(text) == dict(registers=36, spill_stores=8, spill_loads=4,
                                                 stack=16, smem=2048, lmem=0)
    ptx = "\n".join(["\tadd.f64 \t%fd1, %fd2, %fd3;", "\tfma.rn.f64 \t%fd4, %fd1, %fd2, %fd3;",
                     "\t@%p1 bra $L1;", "\tcvt.f64.f32 \t%fd5, %f1;", "\tmul.rn.f32 \t%f2, %f1, %f1;",
                     "\tld.global.f64 \t%fd6, [%rd1];", "\t@%p2 setp.lt.f64 \t%p3, %fd1, %fd2;"])
    assert len(_cuda_check._F64_OP.findall(ptx)) == 3
    assert len(_cuda_check._F32_OP.findall(ptx)) == 1


@needs_simulator
@pytest.mark.skipif(_cuda_check.toolchain_missing() is not None,
                    reason=str(_cuda_check.toolchain_missing()))
def test_recorded_launches_compile_for_a_real_gpu(tmp_path, capsys):
    _cuda_check._install_recorder()
    x = gpu(np.linspace(-1, 1, 40, dtype=np.float64))
    fl.huber_loss(x, x, return_grad=True, backend="cuda")
    rows = [r for r in _cuda_check.recorded()
            if r["set"] in (["elementwise", "huber"], ["shared"])
            and r["args"][0][1] == "float64"]
    (tmp_path / "launches-1.json").write_text(json.dumps(
        {"launches": rows, "outside_kernel_sets": []}))
    table = tmp_path / "table.md"
    # the coverage rule fails this partial recording; the compiles themselves must pass
    _cuda_check.main([str(tmp_path), "--cc", "90", "--report", str(table),
                      "--json", str(tmp_path / "rows.json")])
    compiled = json.loads((tmp_path / "rows.json").read_text())
    assert compiled and all(r["ok"] for r in compiled), compiled
    huber = [r for r in compiled if r["set"] == ["elementwise", "huber"]]
    assert huber and all(r["registers"] > 0 and r["smem"] >= 8 * 256 for r in huber)
    assert all(r["spill_stores"] == 0 for r in compiled)
    assert "| elementwise huber | kernel | sm_90 |" in table.read_text()
