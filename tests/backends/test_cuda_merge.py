"""merge_attn_states of the CUDA backend against the reference backend and a float64
computation written here, including empty parts (infinite LSE). GPU only."""

from __future__ import annotations

from types import ModuleType

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda is not available)"
    ),
]

TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 8e-3)}


@pytest.fixture(scope="module")
def ops() -> ModuleType:
    import kvpager.ops

    return kvpager.ops


def expected_merge(po: torch.Tensor, pl: torch.Tensor, so: torch.Tensor, sl: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 merge; an infinite LSE is an empty part; both empty -> output 0, LSE -inf."""
    pl = torch.where(torch.isinf(pl), float("-inf"), pl.double())  # [H, T]
    sl = torch.where(torch.isinf(sl), float("-inf"), sl.double())
    m = torch.maximum(pl, sl)
    both_empty = torch.isneginf(m)
    m0 = torch.where(both_empty, 0.0, m)
    wp, ws = torch.exp(pl - m0), torch.exp(sl - m0)
    total = wp + ws
    safe = torch.where(both_empty, 1.0, total)
    wp_t, ws_t = (wp / safe).T[..., None], (ws / safe).T[..., None]  # [T, H, 1]
    # Select instead of multiplying so an empty part's garbage (NaN) cannot leak in.
    out = (torch.where(wp_t > 0, wp_t * po.double(), 0.0)
           + torch.where(ws_t > 0, ws_t * so.double(), 0.0))
    lse = torch.where(both_empty, float("-inf"), m0 + torch.log(safe))
    return out, lse


def make(num_tokens: int, num_heads: int, head_size: int, dtype: torch.dtype, seed: int
         ) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    po = torch.randn(num_tokens, num_heads, head_size, generator=gen, device="cuda").to(dtype)
    so = torch.randn(num_tokens, num_heads, head_size, generator=gen, device="cuda").to(dtype)
    pl = torch.randn(num_heads, num_tokens, generator=gen, device="cuda") * 4
    sl = torch.randn(num_heads, num_tokens, generator=gen, device="cuda") * 4
    return po, pl, so, sl


@pytest.mark.parametrize("with_lse", [True, False], ids=["lse", "no-lse"])
@pytest.mark.parametrize("dtype", list(TOL), ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("head_size", [64, 80, 128, 20])  # 20 fp16 = 40 bytes: scalar path
def test_merge_matches_reference_and_float64(
    ops: ModuleType, head_size: int, dtype: torch.dtype, with_lse: bool
) -> None:
    po, pl, so, sl = make(37, 6, head_size, dtype, seed=head_size)
    out = torch.full_like(po, float("nan"))
    lse = torch.full_like(pl, float("nan")) if with_lse else None
    ops.merge_attn_states(out, po, pl, so, sl, lse, backend="cuda")
    ref = torch.full_like(po, float("nan"))
    ref_lse = torch.full_like(pl, float("nan")) if with_lse else None
    ops.merge_attn_states(ref, po, pl, so, sl, ref_lse, backend="reference")
    exp_out, exp_lse = expected_merge(po, pl, so, sl)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.double(), exp_out, atol=atol, rtol=rtol)
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    if with_lse:
        torch.testing.assert_close(lse.double(), exp_lse, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", list(TOL), ids=lambda d: str(d).removeprefix("torch."))
def test_infinite_lse_marks_an_empty_part(ops: ModuleType, dtype: torch.dtype) -> None:
    po, pl, so, sl = make(8, 4, 64, dtype, seed=1)
    pl[0, 0] = float("inf")    # FlashAttention's convention for an empty prefix
    pl[1, 1] = float("-inf")   # empty prefix written as -inf
    sl[2, 2] = float("inf")    # empty suffix
    sl[3, 3] = float("-inf")
    pl[0, 5] = sl[0, 5] = float("inf")   # both empty
    pl[1, 6] = sl[1, 6] = float("-inf")
    # An empty part's output is garbage, even NaN: it must not reach the result.
    po[0, 0] = float("nan")
    po[1, 1] = float("nan")
    so[2, 2] = float("nan")
    so[3, 3] = float("nan")
    out = torch.full_like(po, 7.0)
    lse = torch.full_like(pl, 7.0)
    ops.merge_attn_states(out, po, pl, so, sl, lse, backend="cuda")
    exp_out, exp_lse = expected_merge(po, pl, so, sl)
    atol, rtol = TOL[dtype]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), exp_out, atol=atol, rtol=rtol)
    torch.testing.assert_close(lse.double(), exp_lse, atol=1e-5, rtol=1e-5)
    # Hand-checked corners: one side empty -> the other side exactly (up to dtype rounding).
    torch.testing.assert_close(out[0, 0], so[0, 0], atol=atol, rtol=rtol)
    torch.testing.assert_close(out[2, 2], po[2, 2], atol=atol, rtol=rtol)
    assert lse[0, 0].item() == pytest.approx(sl[0, 0].item(), abs=1e-5)
    assert torch.count_nonzero(out[5, 0]) == 0 and torch.isneginf(lse[0, 5])
    assert torch.count_nonzero(out[6, 1]) == 0 and torch.isneginf(lse[1, 6])

    # Against the reference where every row has at least one non-empty part and no NaN input.
    po2, pl2, so2, sl2 = make(8, 4, 64, dtype, seed=2)
    pl2[0, 0] = float("inf")
    sl2[2, 2] = float("-inf")
    ours = torch.empty_like(po2)
    ref = torch.empty_like(po2)
    ops.merge_attn_states(ours, po2, pl2, so2, sl2, backend="cuda")
    ops.merge_attn_states(ref, po2, pl2, so2, sl2, backend="reference")
    torch.testing.assert_close(ours, ref, atol=atol, rtol=rtol)
