"""Temporal ids and RoPE positions against docs/method.md 1.1: the worked example, the closed form, invariants."""

from __future__ import annotations

import random

import pytest
import torch

from tcllava.attention import block_ids, rope_positions, temporal_ids, token_positions

from conftest import pad_rows, random_layout, video_layout

WORKED = video_layout(5, 3, 4, 2)  # 5 text tokens, 3 frames of 4 tokens, 2 text tokens


def test_worked_example_paper_reading():
    ids = torch.tensor([WORKED])
    expected_it = [0, 1, 2, 3, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7, 7, 8]
    expected_nhat = [0, 2, 4, 6, 8, 10, 11, 12, 13, 15, 16, 17, 18, 20, 21, 22, 23, 24, 26]
    assert temporal_ids(ids).tolist() == [expected_it]
    assert rope_positions(ids, gamma=1.0).tolist() == [[float(x) for x in expected_nhat]]


def test_worked_example_next_reading_steps_after_video():
    it = temporal_ids(torch.tensor([WORKED]), text_after_video="next")[0].tolist()
    assert it[:17] == [0, 1, 2, 3, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7]
    assert it[17:] == [8, 9]


def closed_form(n: int, v_s: int, v_e: int, m: int) -> int:
    """The paper's piecewise formula for one video (docs/method.md 1.1)."""
    if n < v_s:
        return n
    if n <= v_e:
        return v_s + (n - v_s) // m
    return n - (v_e - v_s + 1 - (v_e - v_s) // m)


@pytest.mark.parametrize("seed", range(20))
def test_closed_form_single_video(seed):
    rng = random.Random(seed)
    before, frames, m, after = rng.randint(0, 9), rng.randint(1, 6), rng.randint(1, 7), rng.randint(1, 9)
    row = video_layout(before, frames, m, after)
    v_s, v_e = before, before + frames * m - 1
    expected = [closed_form(n, v_s, v_e, m) for n in range(len(row))]
    assert temporal_ids(torch.tensor([row]))[0].tolist() == expected


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("reading", ["paper", "next"])
def test_invariants_on_random_multi_video_layouts_with_padding(side, reading):
    rng = random.Random(1)
    rows = [random_layout(rng, rng.randint(10, 60)) for _ in range(8)]
    ids, mask = pad_rows(rows, side)
    it = temporal_ids(ids, mask, reading)
    for b, row in enumerate(rows):
        real = it[b][mask[b].bool()].tolist()
        # Padding never changes the ids of real tokens.
        assert real == temporal_ids(torch.tensor([row]), text_after_video=reading)[0].tolist()
        assert real[0] == 0
        for i in range(1, len(row)):
            prev, cur, step = row[i - 1], row[i], real[i] - real[i - 1]
            if cur >= 0 and prev == cur:
                assert step == 0, "tokens of one frame share an id"
            elif cur >= 0:
                assert step == 1, "a new frame (after text or another frame) steps by one"
            elif prev >= 0:
                assert step == (0 if reading == "paper" else 1)
            else:
                assert step == 1, "text steps by one"
        assert (it[b][~mask[b].bool()] == 0).all()


def test_positions_count_real_tokens_only():
    ids, mask = pad_rows([video_layout(2, 2, 3, 2), video_layout(4, 2, 3, 3)], "left")
    n = token_positions(mask)
    assert n[0][mask[0].bool()].tolist() == list(range(int(mask[0].sum())))
    assert n[1].tolist() == list(range(ids.shape[1]))


@pytest.mark.parametrize("side", ["left", "right"])
def test_gamma_zero_is_plain_positions(side):
    rng = random.Random(2)
    ids, mask = pad_rows([random_layout(rng, 40), random_layout(rng, 25)], side)
    assert torch.equal(rope_positions(ids, 0.0, mask), token_positions(mask).float())


def test_fractional_gamma_is_linear():
    ids = torch.tensor([WORKED])
    n = token_positions(torch.ones_like(ids)).float()
    it = temporal_ids(ids).float()
    for gamma in (0.25, 0.5, 2.0):
        assert torch.allclose(rope_positions(ids, gamma), n + gamma * it)


def test_block_ids_one_per_frame_and_per_text_token():
    assert block_ids(torch.tensor([WORKED]))[0].tolist() == [
        0,
        1,
        2,
        3,
        4,
        5,
        5,
        5,
        5,
        6,
        6,
        6,
        6,
        7,
        7,
        7,
        7,
        8,
        9,
    ]
    ids, mask = pad_rows([[-1, 0, 0, -1], [-1, 0]], "left")
    assert block_ids(ids, mask).tolist() == [[0, 1, 1, 2], [-1, -1, 0, 1]]


def test_adjacent_videos_split_on_frame_number_change():
    # Two images back to back with different numbers are two frames; the same number continues a frame.
    assert temporal_ids(torch.tensor([[-1, 0, 0, 1, 1, -1]]))[0].tolist() == [0, 1, 1, 2, 2, 2]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="text_after_video"):
        temporal_ids(torch.tensor([WORKED]), text_after_video="later")
    with pytest.raises(ValueError, match="shape"):
        temporal_ids(torch.tensor([WORKED]), torch.ones(1, 3))
