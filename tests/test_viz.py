"""The pictures are made from the real masks and a real model's attention."""

from __future__ import annotations

import torch

from tcllava.attention import FrameLayout, attend, record_attention
from tcllava.attention.kernels import attention_weights
from tcllava.cli import main as cli_main
from tcllava.viz.plots import _interaction_colours, layout_row


def test_mask_colours_follow_the_papers_legend():
    frame_ids = layout_row(1, 2, 2, 1)  # t v v v v t
    colours = _interaction_colours(frame_ids, torch.ones(6, 6, dtype=torch.bool))
    assert colours[0, 0] == 1 and colours[5, 0] == 1  # text-text
    assert colours[1, 0] == 2 and colours[5, 1] == 2  # visual-text
    assert colours[1, 2] == 3  # visual-visual


def test_cli_writes_pngs(tmp_path):
    for what in ("masks", "positions"):
        out = tmp_path / f"{what}.png"
        assert cli_main(["viz", what, "--out", str(out)]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attention_weights_reproduce_the_kernel_output():
    frame_ids = layout_row(3, 3, 4, 2)
    layout = FrameLayout(frame_ids, torch.ones_like(frame_ids))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, frame_ids.shape[1], 16, generator=g, dtype=torch.float64) for _ in range(3))
    weights = attention_weights(q, k, layout, 0.25)
    torch.testing.assert_close(weights @ v, attend(q, k, v, layout, scale=0.25))
    assert torch.allclose(weights.sum(-1), torch.ones(1, 2, frame_ids.shape[1], dtype=torch.float64))
    # A frame's first token attends to its frame's last token, never to the next frame.
    first = 3
    assert weights[0, :, first, first + 3].min() > 0 and weights[0, :, first, first + 4].max() == 0


def test_record_attention_collects_requested_layers():
    from transformers import LlamaConfig, LlamaForCausalLM

    from tcllava.attention import enable_tc_attention

    config = LlamaConfig(
        vocab_size=50,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
    )
    model = enable_tc_attention(LlamaForCausalLM(config).eval())
    frame_ids = layout_row(2, 2, 3, 2)
    ids = torch.randint(0, 50, frame_ids.shape)
    with torch.no_grad(), record_attention({1}) as maps:
        model(ids, frame_ids=frame_ids)
    assert set(maps) == {1} and maps[1].shape == (1, 2, 10, 10)
    assert maps[1][0, :, 2, 4].min() > 0  # bidirectional inside the frame
