"""Inputs for the int8/fp8 columns: deterministic, synthetic, but shaped like real data.

Calibration sets each activation's range from what it sees, so pure noise would give
ranges (and accuracy figures) that no real input produces. These samples are closer:
- images: a smooth, mostly grey colour field (a 7x7 grid, bicubic-upsampled), one
  oriented sine grating, a few filled rectangles and discs of random colours and a little
  pixel noise; clipped to [0, 1], then normalised with the ImageNet mean and std as a
  torchvision pipeline would;
- tokens: English sentences (kiln.models.minilm.SAMPLE_SENTENCES and ones built from the
  templates below) packed 1-8 to a row, run through all-MiniLM-L6-v2's WordPiece tokenizer
  (bert-base-uncased's vocabulary, so it serves BERT-base too), padded to the model's
  sequence length with attention_mask 0. A model whose vocabulary is smaller than the
  tokenizer's, or a machine without the tokenizer, gets random ids with padded rows instead
  (`describe` says which).
Calibration and evaluation never share a sample: they draw from different seeds, and the
sentences of the two splits are disjoint (even / odd positions of one list).
"""
from __future__ import annotations

import functools
import itertools

import numpy as np
import torch

from benchmarks.models import BenchModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = {"calibration": 0, "evaluation": 1}  # split -> parity of its sentences; also offsets the seed
TOKENIZER_VOCAB = 30522  # all-MiniLM-L6-v2's (= bert-base-uncased's) vocabulary size

_SUBJECTS = ("The committee", "My neighbour", "A small startup", "The old lighthouse keeper", "Our team",
             "The city council", "A curious student", "The orchestra")
_VERBS = ("approved", "quietly repaired", "wrote about", "argued against", "photographed", "rebuilt",
          "carefully measured", "forgot")
_OBJECTS = ("the new bridge", "a forty-page report on rainfall", "the broken heating system",
            "three proposals for the museum", "an unusual migration of birds", "the budget for next year",
            "the failing water pump", "a map of the northern coast")
_ENDINGS = ("before the storm arrived", "after a long debate", "during the summer festival",
            "without telling anyone", "in less than a week", "for the third time this month",
            "while the trains were delayed", "despite the rising costs")


@functools.lru_cache(maxsize=1)
def sentence_pool() -> tuple[str, ...]:
    """Every template sentence (8^4) and the model's sample sentences, in a fixed order."""
    made = tuple(f"{s} {v} {o} {e}." for s, v, o, e in itertools.product(_SUBJECTS, _VERBS, _OBJECTS, _ENDINGS))
    from kiln.models import minilm
    return minilm.SAMPLE_SENTENCES + made


def structured_images(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """`n` images [n, C, H, W], float32, ImageNet-normalised (module docstring)."""
    c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    # colour channels of real photos move together: mostly a shared brightness, a little colour
    field = 0.7 * torch.rand((n, 1, 7, 7), generator=g) + 0.3 * torch.rand((n, c, 7, 7), generator=g)
    x = torch.nn.functional.interpolate(field, size=(h, w), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")  # [H, W]
    # a grating of 2-14 cycles across the image, at any angle and phase, in a random tint
    scale = torch.tensor([torch.pi, 12.0, 2 * torch.pi]).reshape(3, 1, 1, 1)
    angle, cycles, phase = torch.rand((3, n, 1, 1), generator=g) * scale  # [n, 1, 1] each
    grating = torch.sin(2 * torch.pi * (cycles + 2) * (xx * angle.cos() + yy * angle.sin()) + phase)  # [n, H, W]
    x = x + 0.25 * grating[:, None] * torch.rand((n, c, 1, 1), generator=g)
    for _ in range(3):  # shapes: a rectangle and a disc per round, each in one random colour
        x0, y0, x1, y1, cx, cy, r = torch.rand((7, n, 1, 1), generator=g)  # [n, 1, 1] each
        rect = ((xx >= torch.minimum(x0, x1)) & (xx <= torch.maximum(x0, x1))
                & (yy >= torch.minimum(y0, y1)) & (yy <= torch.maximum(y0, y1)))
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= (0.25 * r) ** 2
        for mask in (rect, disc):  # [n, H, W]
            colour = torch.rand((n, c, 1, 1), generator=g)
            x = torch.where(mask[:, None], colour, x)
    x = (x + 0.03 * torch.randn((n, c, h, w), generator=g)).clamp(0, 1)
    mean = torch.tensor(IMAGENET_MEAN[:c] if c == 3 else (0.5,) * c)[:, None, None]
    std = torch.tensor(IMAGENET_STD[:c] if c == 3 else (0.25,) * c)[:, None, None]
    return ((x - mean) / std).float()


def _tokenizer_usable(model: BenchModel) -> bool:
    if model.vocab < TOKENIZER_VOCAB:
        return False
    try:
        from kiln.models import minilm
        minilm.tokenize(["probe"], max_length=8)
    except Exception:  # noqa: BLE001 - the weights package (with the tokenizer) is not installed here
        return False
    return True


def token_rows(model: BenchModel, n: int, seed: int, split: str) -> dict[str, torch.Tensor]:
    """`n` rows of token ids, mask and types [n, S] int64 for a token model (module docstring)."""
    seq = model.item_shape[0]
    g = torch.Generator().manual_seed(seed)
    if not _tokenizer_usable(model):
        ids = torch.randint(1000, model.vocab, (n, seq), generator=g)
        lengths = torch.randint(max(seq // 8, 1), seq + 1, (n,), generator=g)
        mask = (torch.arange(seq)[None, :] < lengths[:, None]).to(torch.int64)
        return dict(zip(model.input_names, (ids * mask, mask, torch.zeros_like(ids))))
    from kiln.models import minilm
    pool = sentence_pool()[SPLITS[split]::2]
    picks = torch.randint(0, len(pool), (n, 8), generator=g).tolist()
    counts = torch.randint(1, 9, (n,), generator=g).tolist()
    texts = [" ".join(pool[i] for i in row[:k]) for row, k in zip(picks, counts)]
    encoded = minilm.tokenize(texts, max_length=seq)  # [n, longest row] each
    out = {}
    for name in model.input_names:
        t = torch.zeros((n, seq), dtype=torch.int64)
        a = torch.from_numpy(encoded[name])
        t[:, : a.shape[1]] = a
        out[name] = t
    return out


def make(model: BenchModel, n: int, seed: int, split: str) -> dict[str, torch.Tensor]:
    """`n` samples of `split` ("calibration" | "evaluation") for `model`, on the CPU, by input name."""
    seed = seed * 1000 + 17 * SPLITS[split] + 1  # the two splits never share a generator stream
    if model.kind == "image":
        return {model.input_names[0]: structured_images(n, model.item_shape, seed)}
    return token_rows(model, n, seed, split)


def calibration_feeds(model: BenchModel, samples: int, batch: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Calibration batches for kiln.build(calibration=...): `samples` rounded up to whole batches."""
    n = -(-samples // batch) * batch
    data = make(model, n, seed, "calibration")
    return [{k: v[i:i + batch].numpy() for k, v in data.items()} for i in range(0, n, batch)]


def describe(model: BenchModel) -> str:
    """What the samples of `model` are, for the report."""
    if model.kind == "image":
        return ("synthetic structured images (smooth colour fields, a sine grating, rectangles and discs, "
                "light noise; ImageNet-normalised)")
    if _tokenizer_usable(model):
        return (f"English sentences (templates + kiln's samples) packed 1-8 a row, all-MiniLM-L6-v2 WordPiece "
                f"tokenizer, padded to {model.item_shape[0]} tokens")
    return f"random token ids below {model.vocab}, rows padded to random lengths (no tokenizer for this vocabulary)"

