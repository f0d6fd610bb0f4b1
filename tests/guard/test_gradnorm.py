"""Sampled per-parameter gradient norms of a bucket: exact where promised, close elsewhere."""

from __future__ import annotations

import pytest
import torch

from trainguard.guard.checks.gradnorm import MIN_ROWS, ROW, BucketNormPlan


def _bucket(sizes: list[int], gap: int = 0) -> tuple[torch.Tensor, list[int], list[int]]:
    """A flat buffer holding one heavy-tailed 'gradient' per size (with optional gaps)."""
    gen = torch.Generator().manual_seed(3)
    offsets, pos = [], 0
    for n in sizes:
        offsets.append(pos)
        pos += n + gap
    buf = torch.zeros(pos)
    for off, n in zip(offsets, sizes, strict=True):
        scale = torch.rand(n, generator=gen) ** 3 + 0.01
        buf[off : off + n] = torch.randn(n, generator=gen) * scale
    return buf, offsets, sizes


def _exact(buf: torch.Tensor, offsets: list[int], sizes: list[int]) -> torch.Tensor:
    return torch.stack(
        [buf[o : o + n].double().square().sum() for o, n in zip(offsets, sizes, strict=True)]
    )


def _estimate(plan: BucketNormPlan, buf: torch.Tensor, phase: int, slots: int) -> torch.Tensor:
    out = torch.zeros(slots, dtype=torch.float64)
    plan.accumulate(buf, phase, out)
    return out


SIZES = [256 * 256, 256, 1000, 256 * 1024 + 77, 64 * 64, 3 * 256 * 256, 7]


def test_stride_one_is_the_exact_norm() -> None:
    buf, offs, sizes = _bucket(SIZES, gap=13)
    plan = BucketNormPlan(list(range(len(sizes))), offs, sizes, buf.numel(), 1, buf.device)
    assert not plan.sampled
    torch.testing.assert_close(_estimate(plan, buf, 0, len(sizes)), _exact(buf, offs, sizes))


@pytest.mark.parametrize("stride", [4, 8])
def test_small_tensors_exact_large_ones_close_at_every_phase(stride: int) -> None:
    buf, offs, sizes = _bucket(SIZES, gap=13)
    plan = BucketNormPlan(list(range(len(sizes))), offs, sizes, buf.numel(), stride, buf.device)
    assert plan.sampled
    exact = _exact(buf, offs, sizes)
    for phase in range(stride):
        est = _estimate(plan, buf, phase, len(sizes))
        small = [j for j, n in enumerate(sizes) if n < MIN_ROWS * stride * ROW]
        torch.testing.assert_close(est[small], exact[small])
        ratio = (est / exact).sqrt()
        assert bool(((ratio - 1).abs() < 0.1).all()), ratio
    # Averaged over the phases every row is read once: the exact sum, up to the phases'
    # row counts differing by one and float32 row norms.
    mean = sum(_estimate(plan, buf, r, len(sizes)) for r in range(stride)) / stride
    torch.testing.assert_close(mean, exact, rtol=1e-3, atol=0.0)


def test_corrupted_layer_is_seen_at_every_phase() -> None:
    """Scaling one large layer by 3 moves its estimate by 3 whatever row is drawn."""
    buf, offs, sizes = _bucket(SIZES)
    plan = BucketNormPlan(list(range(len(sizes))), offs, sizes, buf.numel(), 4, buf.device)
    bad = buf.clone()
    j = 3
    bad[offs[j] : offs[j] + sizes[j]] *= 3
    for phase in range(4):
        clean = _estimate(plan, buf, phase, len(sizes))
        hit = _estimate(plan, bad, phase, len(sizes))
        assert abs(float((hit[j] / clean[j]).sqrt()) - 3.0) < 1e-4
        others = [k for k in range(len(sizes)) if k != j]
        torch.testing.assert_close(hit[others], clean[others])


def test_a_corrupted_row_is_seen_when_its_phase_is_drawn() -> None:
    """Values in one row of a large matrix: caught on that row's phase, not the others
    (the documented price of sampling; the phase is drawn per step from the secret)."""
    buf, offs, sizes = _bucket(SIZES)
    plan = BucketNormPlan(list(range(len(sizes))), offs, sizes, buf.numel(), 4, buf.device)
    bad = buf.clone()
    row = 40  # a whole row inside parameter 0
    bad[row * ROW : (row + 1) * ROW] = 50.0
    seen = []
    for phase in range(4):
        clean = _estimate(plan, buf, phase, len(sizes))[0]
        hit = _estimate(plan, bad, phase, len(sizes))[0]
        seen.append(float((hit / clean).sqrt()) > 2)
    assert seen == [r == row % 4 for r in range(4)]


def test_slots_map_to_the_callers_parameter_numbers() -> None:
    buf, offs, sizes = _bucket([256 * 256, 256])
    plan = BucketNormPlan([5, 2], offs, sizes, buf.numel(), 4, buf.device)
    out = _estimate(plan, buf, 1, 6)
    assert float(out[0]) == 0.0 and float(out[5]) > 0 and float(out[2]) > 0
    torch.testing.assert_close(out[2], _exact(buf, offs, sizes)[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_every_floating_dtype_of_a_bucket(dtype: torch.dtype) -> None:
    """Mixed-precision and float64 buckets: same estimate (a float64 one used to raise)."""
    buf, offs, sizes = _bucket(SIZES)
    plan = BucketNormPlan(list(range(len(sizes))), offs, sizes, buf.numel(), 8, buf.device)
    low = buf.to(dtype)
    est = _estimate(plan, low, 5, len(sizes))
    torch.testing.assert_close(
        est, _estimate(plan, low.double(), 5, len(sizes)), rtol=1e-2, atol=0.0
    )
    ratio = (est / _exact(low.double(), offs, sizes)).sqrt()
    assert bool(((ratio - 1).abs() < 0.1).all()), ratio
