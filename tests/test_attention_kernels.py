"""The four masks against a brute-force construction; every kernel against the dense references."""

from __future__ import annotations

import random

import pytest
import torch

import tcllava.attention.kernels as kernels_module
import tcllava.attention.layout as layout_module
from tcllava.attention import MASK_KINDS, FrameLayout, attend, choose_kernel, dense_mask

from conftest import pad_rows, random_layout, video_layout


def brute_force_mask(row: list[int], real: list[int], kind: str) -> list[list[bool]]:
    """docs/method.md 1.2 written out with loops; frames numbered by walking the real tokens."""
    frame_of: dict[int, int] = {}
    frame, previous = -1, None
    for i, (f, r) in enumerate(zip(row, real, strict=True)):
        if not r:
            continue
        if f >= 0:
            if previous is None or previous != f:
                frame += 1
            frame_of[i] = frame
        previous = f if f >= 0 else None
    n = len(row)
    out = [[False] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            vis_i, vis_j = i in frame_of, j in frame_of
            same = vis_i and vis_j and frame_of[i] == frame_of[j]
            if kind == "causal":
                ok = j <= i
            elif kind == "full_visual":
                ok = j <= i or (vis_i and vis_j)
            elif kind == "frame_block":
                ok = ((not vis_j) and j < i) or same if vis_i else j <= i
            else:
                ok = j <= i or same
            out[i][j] = ok and bool(real[j])
    return out


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_dense_mask_equals_brute_force(kind, side):
    rng = random.Random(3)
    rows = [random_layout(rng, rng.randint(8, 30)) for _ in range(4)] + [[0, 0, 1, 1, -1, 0, 0]]
    ids, mask = pad_rows(rows, side)
    got = dense_mask(ids, kind, mask)
    for b in range(len(rows)):
        expected = brute_force_mask(ids[b].tolist(), mask[b].tolist(), kind)
        assert got[b].tolist() == expected


def test_frame_block_causal_matches_figure_semantics():
    ids = torch.tensor([video_layout(1, 2, 2, 1)])  # t v0 v0 v1 v1 t
    m = dense_mask(ids, "frame_block_causal")[0].int().tolist()
    assert m == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],  # sees its own frame's later token
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0],  # never a later frame
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1],  # text stays causal
    ]


def _qkv(batch, length, heads=4, kv_heads=2, dim=32, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, dim, generator=g, dtype=dtype, requires_grad=True)
    k = torch.randn(batch, kv_heads, length, dim, generator=g, dtype=dtype, requires_grad=True)
    v = torch.randn(batch, kv_heads, length, dim, generator=g, dtype=dtype, requires_grad=True)
    return q, k, v


def _run(kernel, q, k, v, layout, grad):
    for t in (q, k, v):
        t.grad = None
    out = attend(q, k, v, layout, kernel=kernel)
    real_q = layout.real[:, layout.query_start :][:, None, :, None]
    (out * grad * real_q).sum().backward()
    return [(out * real_q).detach(), q.grad.clone(), k.grad.clone(), v.grad.clone()]


LAYOUT_CASES = {
    "video_left_pad": ([video_layout(3, 4, 6, 5), video_layout(6, 4, 6, 2)], "left"),
    "video_right_pad": ([video_layout(3, 4, 6, 5), video_layout(1, 3, 5, 1)], "right"),
    "multi_video_random": ([random_layout(random.Random(s), 70) for s in range(3)], "left"),
    "starts_with_frame": ([video_layout(0, 3, 5, 4)], "left"),
    "text_only": ([[-1] * 37, [-1] * 20], "left"),
}


@pytest.mark.parametrize("case", LAYOUT_CASES)
@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("sizes", [(8, 8), (16, 5), (768, 256)])
def test_kernels_agree_on_outputs_and_gradients(case, kind, sizes, monkeypatch):
    # Small groups and pieces exercise the LSE merge of past, in-group and local parts.
    monkeypatch.setattr(layout_module, "GROUP_SIZE", sizes[0])
    monkeypatch.setattr(layout_module, "PIECE_SIZE", sizes[1])
    rows, side = LAYOUT_CASES[case]
    ids, mask = pad_rows(rows, side)
    layout = FrameLayout(ids, mask, kind)
    q, k, v = _qkv(*ids.shape)
    grad = torch.randn(q.shape, dtype=q.dtype, generator=torch.Generator().manual_seed(1))
    reference = _run("eager", q, k, v, layout, grad)
    kernel_names = ["sdpa", "auto"] + (["prefix"] if kind in ("causal", "frame_block_causal") else [])
    for name in kernel_names:
        for got, want in zip(_run(name, q, k, v, layout, grad), reference, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=f"{name} vs eager")


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("kind", ["causal", "frame_block_causal"])
def test_flex_block_mask_logic_matches_dense_forward(kind):
    # Uncompiled FlexAttention on CPU: forward only, same mask_mod the compiled GPU path uses.
    ids, mask = pad_rows([video_layout(3, 4, 8, 5), video_layout(9, 4, 8, 2)], "left")
    layout = FrameLayout(ids, mask, kind)
    q, k, v = (t.detach().float() for t in _qkv(*ids.shape))
    with torch.no_grad():
        got = attend(q, k, v, layout, kernel="flex")
        want = attend(q, k, v, layout, kernel="eager")
    real = mask[:, None, :, None].bool()
    torch.testing.assert_close(got * real, want * real, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("sizes", [(8, 8), (12, 4), (768, 256)])
def test_chunked_queries_over_a_cache_match_the_full_pass(kind, sizes, monkeypatch):
    monkeypatch.setattr(layout_module, "GROUP_SIZE", sizes[0])
    monkeypatch.setattr(layout_module, "PIECE_SIZE", sizes[1])
    ids, mask = pad_rows([video_layout(3, 4, 6, 9), video_layout(6, 4, 6, 6)], "left")
    q, k, v = (t.detach() for t in _qkv(*ids.shape))
    full = attend(q, k, v, FrameLayout(ids, mask, kind), kernel="eager")
    for start in (ids.shape[1] - 1, ids.shape[1] - 5, 20):  # decode one token, a text chunk, mid-video
        part = FrameLayout(ids, mask, kind, query_length=ids.shape[1] - start)
        got = attend(q[:, :, start:], k, v, part)
        torch.testing.assert_close(got, full[:, :, start:], rtol=1e-9, atol=1e-9)


def test_prefix_kernel_never_builds_a_dense_mask(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("dense L x L mask built")

    monkeypatch.setattr(layout_module, "dense_mask", forbidden)
    ids, mask = pad_rows([video_layout(10, 8, 16, 10)] * 2, "left")
    q, k, v = _qkv(*ids.shape, dtype=torch.float32)
    layout = FrameLayout(ids, mask, "frame_block_causal")
    assert choose_kernel(q, layout) == "prefix"
    attend(q, k, v, layout).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_dispatcher_choices():
    ids = torch.tensor([video_layout(2, 2, 3, 2)])
    q = torch.zeros(1, 2, ids.shape[1], 8)
    assert choose_kernel(q, FrameLayout(ids, torch.ones_like(ids), "frame_block_causal")) == "prefix"
    assert choose_kernel(q, FrameLayout(ids, torch.ones_like(ids), "causal")) == "causal"
    assert choose_kernel(q, FrameLayout(ids, torch.ones_like(ids), "full_visual")) == "sdpa"
    assert (
        choose_kernel(q, FrameLayout(ids, torch.ones_like(ids), "frame_block_causal"), dropout=0.1) == "sdpa"
    )
    decode = FrameLayout(ids, torch.ones_like(ids), "frame_block", query_length=1)
    assert choose_kernel(q[:, :, -1:], decode) == "decode"
    gappy = torch.ones_like(ids)
    gappy[0, 3] = 0  # padding in the middle: the prefix kernel does not apply, the dense one does
    assert choose_kernel(q, FrameLayout(ids, gappy, "frame_block_causal")) == "sdpa"


def test_layout_mismatch_is_a_clear_error():
    ids = torch.tensor([video_layout(2, 2, 3, 2)])
    q, k, v = (t.detach() for t in _qkv(1, ids.shape[1]))
    with pytest.raises(ValueError, match="layout describes"):
        attend(q, k[:, :, :-1], v[:, :, :-1], FrameLayout(ids, torch.ones_like(ids)))
    with pytest.raises(ValueError, match="unknown kernel"):
        attend(q, k, v, FrameLayout(ids, torch.ones_like(ids)), kernel="magic")
    with pytest.raises(ValueError, match="unknown mask kind"):
        FrameLayout(ids, torch.ones_like(ids), "diagonal")


def test_groups_keep_frames_whole(monkeypatch):
    monkeypatch.setattr(layout_module, "GROUP_SIZE", 5)
    ids = torch.tensor([video_layout(3, 3, 7, 4)])
    layout = FrameLayout(ids, torch.ones_like(ids))
    blocks = layout.blocks[0].tolist()
    cuts = [g.q0 for g in layout.groups[1:]]
    assert cuts and all(blocks[c] != blocks[c - 1] for c in cuts)
    assert layout.groups[0].q0 == 0 and layout.groups[-1].q1 == ids.shape[1]


def _prefix_agrees_with_eager(layout, seed=0):
    q, k, v = _qkv(*layout.frame_ids.shape, seed=seed)
    grad = torch.randn(q.shape, dtype=q.dtype, generator=torch.Generator().manual_seed(seed + 1))
    for got, want in zip(
        _run("prefix", q, k, v, layout, grad), _run("eager", q, k, v, layout, grad), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("side", ["left", "right"])
def test_short_sequences_of_a_batch_are_one_call(side):
    # The demo's case: short prompts of one layout but different lengths, padded: one masked call for all.
    rows = [video_layout(3, 4, 6, 5), video_layout(3, 4, 6, 9), video_layout(3, 4, 6, 2), [-1] * 4]
    ids, mask = pad_rows(rows, side)
    for kind in ("causal", "frame_block_causal"):
        layout = FrameLayout(ids, mask, kind)
        assert [g.padded for g in layout.groups] == [True]
        assert len(layout.prefix_plan(torch.float64, torch.device("cpu")).calls) == 1
        _prefix_agrees_with_eager(layout)


def test_samples_with_one_layout_share_their_calls(monkeypatch):
    monkeypatch.setattr(layout_module, "GROUP_SIZE", 16)
    monkeypatch.setattr(layout_module, "PIECE_SIZE", 6)
    same, other = video_layout(3, 4, 6, 5), video_layout(5, 3, 6, 7)
    ids, mask = pad_rows([same, same, same, other, same], "left")
    layout = FrameLayout(ids, mask)
    batches = [(g.batch, g.batches) for g in layout.groups]
    assert set(batches) == {(0, 3), (3, 1), (4, 1)}
    assert any(g.cuts for g in layout.groups) and any(g.q0 > g.key_start for g in layout.groups)
    _prefix_agrees_with_eager(layout)


def test_pieces_keep_frames_whole(monkeypatch):
    monkeypatch.setattr(layout_module, "GROUP_SIZE", 20)
    monkeypatch.setattr(layout_module, "PIECE_SIZE", 4)
    ids = torch.tensor([video_layout(3, 5, 7, 4)])
    layout = FrameLayout(ids, torch.ones_like(ids))
    blocks = layout.blocks[0].tolist()
    pieces = [piece for g in layout.groups for piece in g.pieces]
    assert [a for a, _ in pieces[1:]] == [b for _, b in pieces[:-1]] and pieces[-1][1] == ids.shape[1]
    assert all(blocks[a] != blocks[a - 1] for a, _ in pieces[1:])
    assert any(len(g.pieces) > 1 for g in layout.groups)


@pytest.mark.parametrize("sizes", [(16, 5), (768, 256)])
def test_generic_group_path_matches_eager(sizes, monkeypatch):
    # The path for devices without the CPU fused ops, run here on CPU: same groups, autograd-aware SDPA.
    monkeypatch.setattr(layout_module, "GROUP_SIZE", sizes[0])
    monkeypatch.setattr(layout_module, "PIECE_SIZE", sizes[1])
    ids, mask = pad_rows([video_layout(3, 4, 6, 5), video_layout(1, 3, 5, 1), [-1] * 9], "right")
    layout = FrameLayout(ids, mask)
    q, k, v = _qkv(*ids.shape)
    real_q = mask[:, None, :, None].bool()
    got = kernels_module._groups_generic(
        q, kernels_module._repeat_kv(k, 4), kernels_module._repeat_kv(v, 4), layout, 0.3
    )
    want = attend(q, k, v, layout, scale=0.3, kernel="eager")
    torch.testing.assert_close(got * real_q, want * real_q, rtol=1e-9, atol=1e-9)
    grads = torch.autograd.grad((got * real_q).sum(), (q, k, v))
    for g, w in zip(grads, torch.autograd.grad((want * real_q).sum(), (q, k, v)), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)
