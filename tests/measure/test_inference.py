"""One decoder pass gives exactly SAM's single-mask and multimask outputs."""

from __future__ import annotations

import numpy as np
import torch

from supersam.data import DataConfig, prepare_split
from supersam.measure.inference import decode_all, decode_masks, embed_prompts, encode_images
from supersam.model.sam import build_sam


def test_decode_all_equals_both_sam_outputs(shared_data):
    sam = build_sam("tiny").model
    cfg = DataConfig(root=str(shared_data / "isbi2012_em"), patch=256, max_objects=3, prompt="point")
    inp = prepare_split(cfg, "val", 128, n_images=1)[0]
    with torch.inference_mode():
        emb = encode_images(sam, [inp])
        prompts = embed_prompts(sam, inp)
        both, iou = decode_all(sam, emb, prompts, inp)
        _, single_iou = decode_masks(sam, emb, prompts, inp, multimask=False)
        single, _ = decode_masks(sam, emb, prompts, inp, multimask=False)
        multi, multi_iou = decode_masks(sam, emb, prompts, inp, multimask=True)
    assert both.shape == (3, 4, 256, 256)
    np.testing.assert_allclose(both[:, :1], single, atol=1e-6)
    np.testing.assert_allclose(both[:, 1:], multi, atol=1e-6)
    np.testing.assert_allclose(iou[:, :1], single_iou, atol=1e-6)
    np.testing.assert_allclose(iou[:, 1:], multi_iou, atol=1e-6)
