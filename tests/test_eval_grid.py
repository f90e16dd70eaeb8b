"""Labelled reconstruction grids (training and validation images, `vqforge eval`), and validation's cached baselines."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from vqforge import images as grids
from vqforge.eval.metrics import to_uint8

from conftest import tiny_config
from test_eval_evaluator import batches_of, images, tiny_taming


def _pairs(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    return x, (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def test_small_crops_are_enlarged_with_nearest_neighbour_and_placed_in_their_rows():
    x, y = _pairs(10, 32)
    g = grids.labelled_grid(x, y, ncol=8, title="t")
    assert (g.shape[1], g.shape[0]) == grids.labelled_grid_size(10, 32, 32, ncol=8)
    s = grids.enlargement(32, 32)
    assert s == 4 and grids.enlargement(256, 256) == 1 and grids.enlargement(48, 100) == 2
    th = 32 * s
    block_h = 2 * th + grids.LABEL_CAPTION + 2 * grids.LABEL_PAD
    for i in (0, 7, 8, 9):
        r, c = divmod(i, 8)
        x0 = grids.LABEL_MARGIN + c * (th + grids.LABEL_PAD)
        y0 = grids.LABEL_TITLE + r * block_h + grids.LABEL_PAD
        for k, img in enumerate((x, y)):
            tile = g[y0 + k * (th + grids.LABEL_PAD):y0 + k * (th + grids.LABEL_PAD) + th, x0:x0 + th]
            want = to_uint8(img[i]).permute(1, 2, 0).numpy().repeat(s, 0).repeat(s, 1)
            assert np.array_equal(tile, want), (i, k)


def _has_text(region: np.ndarray) -> bool:
    # text is drawn in LABEL_TEXT on LABEL_BACKGROUND
    return bool((np.abs(region.astype(int) - np.array(grids.LABEL_TEXT)).sum(-1) < 60).any())


def test_rows_captions_and_title_are_labelled():
    x, y = _pairs(8, 64)
    g = grids.labelled_grid(x, y, title="validation, step 5")
    th = 64 * grids.enlargement(64, 64)
    top = grids.LABEL_TITLE + grids.LABEL_PAD
    margin = g[:, :grids.LABEL_MARGIN]
    assert _has_text(margin[top:top + th]) and _has_text(margin[top + th:top + 2 * th])  # "original", "reconstruction"
    assert _has_text(g[:grids.LABEL_TITLE])  # the title
    cap_y = top + 2 * th + grids.LABEL_PAD
    for c in range(8):  # a PSNR caption under every reconstruction
        x0 = grids.LABEL_MARGIN + c * (th + grids.LABEL_PAD)
        assert _has_text(g[cap_y:cap_y + grids.LABEL_CAPTION, x0:x0 + th]), c
    untitled = grids.labelled_grid(x, y)
    assert untitled.shape[0] == g.shape[0] - grids.LABEL_TITLE
    with pytest.raises(ValueError, match="shapes differ"):
        grids.labelled_grid(x, y[:, :, :32])


def test_validation_scores_baselines_once_and_repeats_them(monkeypatch):
    from vqforge.eval import evaluator
    from vqforge.train.validation import make_validation_fn

    calls = []
    real = evaluator.apply_baseline
    monkeypatch.setattr(evaluator, "apply_baseline", lambda spec, x: calls.append(spec.name) or real(spec, x))
    cfg = tiny_config()
    fn = make_validation_fn(types.SimpleNamespace(perceptual=None), cfg)
    model = tiny_taming()
    x = images(8, size=32)
    m1, grid1 = fn(model, batches_of(x, 4), step=3)
    n_first = len(calls)
    m2, grid2 = fn(model, batches_of(x, 4), step=6)
    assert n_first == 2 * 3 and len(calls) == n_first  # 2 batches x 3 baselines, then none
    for key in ("bicubic_x2/psnr", "bicubic_x8/psnr", "jpeg/psnr", "jpeg/bpp"):  # f2, K 16: 1 bpp
        assert key in m1 and m2[key] == m1[key]
    assert m1["bicubic_x2/psnr"] > m1["bicubic_x8/psnr"]
    assert (grid1.shape[1], grid1.shape[0]) == grids.labelled_grid_size(8, 32, 32)  # 8 pairs, labelled
