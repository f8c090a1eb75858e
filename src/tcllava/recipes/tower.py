"""Teaching a vision tower trained from scratch to see, before the LLM is asked to describe what it sees.

A linear probe over the visual tokens the LLM will read (tower -> projector -> pooling) predicts, for
rendered stills, every grid cell's object colour, shape and size, the background colour and the number of
objects. Trained jointly with the tower and projector for a few hundred steps, it makes those tokens
encode the scene linearly; the probe is then thrown away. This replaces most of the slow part of the
image-LLaVA build, where a tiny LLM from scratch and a random tower had to discover vision together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tcllava.data.synthetic.drawing import COLORS, SHAPES
from tcllava.data.synthetic.stills import PLACES, SIZES, ImageSample, image_sample

CELL_COLORS = ("none", *COLORS, "dark")
CELL_SHAPES = ("none", *SHAPES)
CELL_SIZES = ("none", *SIZES)
BACKGROUNDS = ("none", *COLORS)
COUNTS = ("1", "2", "3", "4")
# (name, classes, how many of them per image)
GROUPS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("color", CELL_COLORS, len(PLACES)),
    ("shape", CELL_SHAPES, len(PLACES)),
    ("size", CELL_SIZES, len(PLACES)),
    ("background", BACKGROUNDS, 1),
    ("count", COUNTS, 1),
)


def labels(sample: ImageSample) -> dict[str, list[int]]:
    """Class indices per group: cells in PLACES order (empty cells are "none")."""
    cells = {o["place"]: o for o in sample.objects}
    out = {
        name: [values.index(cells[p][name]) if p in cells else 0 for p in PLACES]
        for name, values, _ in GROUPS[:3]
    }
    out["background"] = [BACKGROUNDS.index(sample.background or "none")]
    out["count"] = [COUNTS.index(str(len(sample.objects)))]
    return out


class Probe(nn.Module):
    """One linear layer from the flattened visual tokens of an image to every group's logits."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({name: nn.Linear(features, n * len(values)) for name, values, n in GROUPS})

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = tokens.flatten(1)
        return {name: self.heads[name](flat).view(len(flat), n, len(values)) for name, values, n in GROUPS}


@dataclass
class Batch:
    pixels: torch.Tensor  # [B, 3, S, S]
    targets: dict[str, torch.Tensor]  # [B, n] per group


def render(rng: np.random.Generator, processor, size: int, count: int) -> Batch:
    samples = [image_sample(rng, size) for _ in range(count)]
    pixels = processor.pixel_values(np.stack([s.image for s in samples]))
    per = [labels(s) for s in samples]
    targets = {name: torch.tensor([p[name] for p in per]) for name, _, _ in GROUPS}
    return Batch(pixels, targets)


def visual_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """[B, tokens, d_llm]: what the LLM receives for each image (one frame each)."""
    return torch.stack(model.encode_media([p[None] for p in pixels]))


def accuracy(model, probe: Probe, batch: Batch) -> dict[str, float]:
    """Share of correct predictions per group; for the cell groups over the cells that hold an object."""
    with torch.no_grad():
        logits = probe(visual_tokens(model, batch.pixels))
    out = {}
    for name, _, n in GROUPS:
        target = batch.targets[name]
        hit = logits[name].argmax(-1) == target
        counted = batch.targets["color"] > 0 if n > 1 else torch.ones_like(hit)
        out[name] = 100 * float(hit[counted].float().mean())
    return out


def pretrain_tower(
    model,
    processor,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    test_images: int = 512,
) -> dict[str, object]:
    """Train ``model``'s vision tower and projector in place through the probe; returns held-out probe
    accuracy per group before and after, and the time taken."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    size = model.config.vision_config.image_size
    test = render(np.random.default_rng([seed, 1, 77]), processor, size, test_images)
    tokens = visual_tokens(model, test.pixels[:1])
    probe = Probe(tokens.shape[1] * tokens.shape[2])
    params = [
        *model.vision_tower.parameters(),
        *model.multi_modal_projector.parameters(),
        *probe.parameters(),
    ]
    trainable = [p.requires_grad for p in model.vision_tower.parameters()]
    model.vision_tower.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    before = accuracy(model, probe, test)
    rng = np.random.default_rng([seed, 0, 77])
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        batch = render(rng, processor, size, batch_size)
        logits = probe(visual_tokens(model, batch.pixels))
        loss = sum(
            loss_fn(logits[name].flatten(0, 1), batch.targets[name].flatten()) for name, _, _ in GROUPS
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    after = accuracy(model, probe, test)
    for p, flag in zip(model.vision_tower.parameters(), trainable, strict=True):
        p.requires_grad_(flag)
    return {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "held_out_probe_accuracy": {"before": before, "after": after},
        "chance_like": {name: 100 / len(values) for name, values, _ in GROUPS},
        "minutes": (time.perf_counter() - started) / 60,
    }
