"""The compiled fused lerp (reference: torch.lerp row by row) and its fallback."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from trajlab.averaging import EMA, SWA, AveragedWeights, StorageOptions, cpu_kernel
from trajlab.config import resolve_config


@pytest.fixture
def lib():
    got = cpu_kernel.load()
    if got is None:
        pytest.skip("no C compiler here: the torch fallback is what runs (tested below)")
    return got


def _reference(stacks, live, weights):
    out = [s.clone() for s in stacks]
    for s, t in zip(out, live):
        for j, w in enumerate(weights):
            s[j].lerp_(t, w)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_equals_torch_lerp_bitwise(lib, dtype, threads, monkeypatch):
    # Weights on both sides of 0.5 (torch switches formula there), exactly 1 (SWA's first step) and 0.
    weights = [0.01, 0.3, 0.5, 0.9, 1.0, 0.0]
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 5, 7), (), (1,), (600_000,), (0,), (17, 33)]  # a large one spans several chunks
    live = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    stacks = [cpu_kernel.stack_like(torch.randn(s, generator=g, dtype=dtype), len(weights)) for s in shapes]
    expected = _reference(stacks, live, weights)
    monkeypatch.setattr(cpu_kernel, "_THREADED_MIN", 1)  # force the threaded path even for small sizes
    torch.set_num_threads(threads)
    try:
        assert cpu_kernel.supported(stacks, live)
        cpu_kernel.lerp_rows_(lib, stacks, live, weights)
    finally:
        torch.set_num_threads(1)
    for got, want in zip(stacks, expected):
        assert torch.equal(got, want)
    assert torch.equal(stacks[3][4], live[3])  # weight 1 gives the live tensor exactly


def test_channels_last_rows_follow_the_live_layout(lib):
    live = [torch.randn(8, 3, 5, 5).to(memory_format=torch.channels_last)]
    stacks = [cpu_kernel.stack_like(live[0] * 2, 3)]
    assert stacks[0][1].is_contiguous(memory_format=torch.channels_last)
    assert cpu_kernel.supported(stacks, live)
    expected = _reference(stacks, live, [0.1, 0.2, 0.7])
    cpu_kernel.lerp_rows_(lib, stacks, live, [0.1, 0.2, 0.7])
    assert torch.equal(stacks[0], expected[0])


def test_unsupported_layouts_are_refused():
    t = torch.randn(4, 6)
    assert not cpu_kernel.supported([cpu_kernel.stack_like(t, 2)], [t.t()])  # transposed: other order
    assert not cpu_kernel.supported([cpu_kernel.stack_like(t.half(), 2)], [t.half()])  # fp16: not compiled
    assert not cpu_kernel.supported([cpu_kernel.stack_like(t, 2).double()], [t])  # dtype mismatch


def _model(channels_last: bool) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.LazyLinear(4))
    m(torch.randn(2, 3, 8, 8))
    return m.to(memory_format=torch.channels_last) if channels_last else m


def _run(model: nn.Module, steps: int = 7, **storage) -> AveragedWeights:
    rules = [EMA(0.9), EMA(half_life_steps=3), SWA(start_step=2)]
    avg = AveragedWeights(model, rules, storage=StorageOptions(**storage))
    g = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        avg.update(step)
    return avg


@pytest.mark.parametrize("channels_last", [False, True])
def test_online_container_same_with_and_without_the_kernel(channels_last, monkeypatch):
    with_kernel = _run(_model(channels_last))
    switched_off = _run(_model(channels_last), cpu_kernel=False)
    monkeypatch.setattr(cpu_kernel, "load", lambda build=None: None)  # as without a compiler
    no_compiler = _run(_model(channels_last))
    for without in (switched_off, no_compiler):
        for name in with_kernel.names:
            a, b = with_kernel.average(name), without.average(name)
            for key in a:
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_disabled_by_environment_through_the_cli(monkeypatch):
    # The library reads no environment: the CLI maps TRAJLAB_CPU_KERNEL=0 onto the host settings, and the
    # runner onto StorageOptions(cpu_kernel=False).
    from trajlab.cli import host_from_environment
    from trajlab.runs.plugins import storage_options

    host = host_from_environment({"TRAJLAB_CPU_KERNEL": "0", "TRAJLAB_CACHE": "/c", "CC": "/bin/cc9"})
    storage = storage_options(resolve_config("mnist-cnn"), host)
    assert storage.cpu_kernel is False
    assert storage.kernel_build == cpu_kernel.KernelBuild(cache_root="/c", compiler="/bin/cc9")
    assert host_from_environment({}).cpu_kernel is True
    monkeypatch.setenv("TRAJLAB_CPU_KERNEL", "0")
    assert StorageOptions().cpu_kernel is True  # the environment does not reach the library


def test_no_compiler_falls_back_with_a_log_line(tmp_path, caplog):
    build = cpu_kernel.KernelBuild(cache_root=str(tmp_path), compiler=str(tmp_path / "no-such-compiler"))
    try:
        with caplog.at_level(logging.INFO, logger="trajlab.averaging.cpu_kernel"):
            assert cpu_kernel.load(build) is None
        assert "using torch ops" in caplog.text
        assert not list(tmp_path.rglob("*.so"))
    finally:
        cpu_kernel.load.cache_clear()


def test_compiles_into_the_cache_atomically(tmp_path):
    if cpu_kernel.load() is None:
        pytest.skip("no C compiler here")
    try:
        assert cpu_kernel.load(cpu_kernel.KernelBuild(cache_root=str(tmp_path))) is not None
        built = list(tmp_path.rglob("*"))
        assert [p.suffix for p in built if p.is_file()] == [".so"]  # no temporary files left behind
    finally:
        cpu_kernel.load.cache_clear()
