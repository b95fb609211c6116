"""Disturbed Taylor importance (SlimSAM Eq. 4): independent autograd and finite-difference recomputations."""

from __future__ import annotations

import pytest
import torch
from conftest import coco_images
from torch.func import functional_call

from supersam.model.sam import build_sam_model
from supersam.model.taylor import TaylorAccumulator, disturbed_taylor_importance
from supersam.runtime.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

SEED, STD = 7, 0.05


@pytest.fixture(scope="module")
def tiny64(shared_data):
    """A tiny SAM in float64 (so the finite differences are exact to ~1e-9) and 2 real images."""
    torch.manual_seed(0)
    sam = build_sam_model("tiny").double().eval()
    images = [im.double() for im in coco_images(shared_data, "val", sam.image_encoder.img_size, 2)]
    return sam, images


def noises(sam, images):
    """The disturbance, re-drawn here by the documented rule: one generator seeded with the seed,
    one float32 N(0, 1) draw of the embedding's shape per image, in image order, times the std."""
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        shape = sam.image_encoder(images[0][None]).shape
    return [STD * torch.randn(shape, generator=gen, dtype=torch.float32).double() for _ in images]


def loss_with(sam, image, target, overrides):
    """MSE between the encoder's embedding (weights ``overrides`` swapped in) and a fixed target."""
    out = functional_call(sam.image_encoder, overrides, (image[None],))
    return ((out - target) ** 2).mean()


def test_taylor_matches_autograd_functional_recomputation(tiny64):
    sam, images = tiny64
    got = disturbed_taylor_importance(sam, images, noise_std=STD, seed=SEED)
    enc = sam.image_encoder
    names = [n for n, _ in enc.named_parameters() if ".mlp.lin1." in n or ".mlp.lin2.weight" in n]
    base = dict(enc.named_parameters())
    want = [
        {"lin1": torch.zeros(256, dtype=torch.float64), "lin2": torch.zeros(256, dtype=torch.float64)}
        for _ in enc.blocks
    ]
    for image, noise in zip(images, noises(sam, images)):
        with torch.no_grad():
            target = enc(image[None]) + noise  # the undisturbed embedding + noise, a constant
        values = tuple(base[n].detach().clone() for n in names)
        _, grads = torch.autograd.functional.vjp(
            lambda *ws: loss_with(sam, image, target, dict(zip(names, ws))),
            values,
            torch.tensor(1.0, dtype=torch.float64),
        )
        by_name = dict(zip(names, grads))
        for i in range(len(enc.blocks)):
            p = f"blocks.{i}.mlp."
            w1, b1, w2 = base[p + "lin1.weight"], base[p + "lin1.bias"], base[p + "lin2.weight"]
            want[i]["lin1"] += (w1 * by_name[p + "lin1.weight"]).abs().sum(1).detach()
            want[i]["lin1"] += (b1 * by_name[p + "lin1.bias"]).abs().detach()
            want[i]["lin2"] += (w2 * by_name[p + "lin2.weight"]).abs().sum(0).detach()
    assert len(got) == 12
    for block_got, block_want in zip(got, want):
        assert block_got["taylor_lin1"].shape == (256,) and block_got["taylor_lin1"].dtype == torch.float64
        assert bool((block_got["taylor_lin1"] > 0).all()) and bool((block_got["taylor_lin2"] > 0).all())
        torch.testing.assert_close(block_got["taylor_lin1"], block_want["lin1"], rtol=1e-5, atol=0)
        torch.testing.assert_close(block_got["taylor_lin2"], block_want["lin2"], rtol=1e-5, atol=0)


def test_taylor_matches_central_finite_differences(tiny64):
    """One unit of one block, every weight of its group (lin1 row + bias, lin2 column), image by image."""
    sam, images = tiny64
    block, unit, h = 4, 17, 1e-6
    enc = sam.image_encoder
    got = disturbed_taylor_importance(sam, images, noise_std=STD, seed=SEED)[block]
    p = f"blocks.{block}.mlp."
    base = {n: t.detach() for n, t in enc.named_parameters()}
    lin1, lin2 = 0.0, 0.0
    for image, noise in zip(images, noises(sam, images)):
        with torch.no_grad():
            target = enc(image[None]) + noise

            def d_loss(name, index):
                """Central difference of the loss in one weight, times that weight."""
                w = base[name]
                plus, minus = w.clone(), w.clone()
                plus[index] += h
                minus[index] -= h
                grad = (loss_with(sam, image, target, {name: plus}) - loss_with(sam, image, target, {name: minus})) / (
                    2 * h
                )
                return abs(float(w[index] * grad))

            lin1 += sum(d_loss(p + "lin1.weight", (unit, j)) for j in range(64)) + d_loss(p + "lin1.bias", (unit,))
            lin2 += sum(d_loss(p + "lin2.weight", (k, unit)) for k in range(64))
    assert float(got["taylor_lin1"][unit]) == pytest.approx(lin1, rel=1e-5)
    assert float(got["taylor_lin2"][unit]) == pytest.approx(lin2, rel=1e-5)


def test_taylor_is_seeded_label_free_and_leaves_the_model_alone(shared_data):
    torch.manual_seed(0)
    sam = build_sam_model("tiny").eval()
    for p in sam.parameters():
        p.requires_grad_(False)  # e.g. a frozen model: the pass must still work and restore this
    images = coco_images(shared_data, "val", sam.image_encoder.img_size, 2)
    state = {k: v.clone() for k, v in sam.state_dict().items()}
    a = disturbed_taylor_importance(sam, images, noise_std=0.01, seed=0)
    b = disturbed_taylor_importance(sam, images, noise_std=0.01, seed=0)
    c = disturbed_taylor_importance(sam, images, noise_std=0.01, seed=1)
    doubled = disturbed_taylor_importance(sam, images, noise_std=0.02, seed=0)
    assert all(torch.equal(x["taylor_lin2"], y["taylor_lin2"]) for x, y in zip(a, b))  # deterministic
    assert not torch.equal(a[5]["taylor_lin2"], c[5]["taylor_lin2"])  # the seed draws the noise
    # the gradient is linear in the noise: doubling the std doubles the importance, the order stays
    torch.testing.assert_close(doubled[5]["taylor_lin1"], 2 * a[5]["taylor_lin1"], rtol=1e-4, atol=0)
    assert all(torch.equal(v, state[k]) for k, v in sam.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in sam.parameters())
    with pytest.raises(ConfigError, match="no calibration images"):
        disturbed_taylor_importance(sam, [])
    with pytest.raises(ConfigError, match="calibrate.noise_std must be > 0, got 0"):
        disturbed_taylor_importance(sam, images, noise_std=0)


def test_accumulator_by_hand():
    from segment_anything.modeling.common import MLPBlock

    mlp = MLPBlock(embedding_dim=2, mlp_dim=3)
    with torch.no_grad():
        mlp.lin1.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 1.0], [-3.0, 0.0]]))
        mlp.lin1.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
        mlp.lin2.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [-1.0, 0.5, -2.0]]))
    acc = TaylorAccumulator(3)
    g1 = torch.tensor([[1.0, 1.0], [-2.0, 0.0], [1.0, 5.0]])
    gb = torch.tensor([10.0, -10.0, 0.0])
    g2 = torch.tensor([[1.0, 1.0, -1.0], [1.0, 2.0, 0.5]])
    acc.add(mlp, g1, gb, g2)
    acc.add(mlp, -g1, gb, g2)  # absolute values per image: the sign of a gradient never cancels
    # lin1 row i: sum_j |W1 g1| + |b1 gb|: (1 + 2) + 1, (1 + 0) + 2, (3 + 0) + 0
    assert acc.lin1.tolist() == pytest.approx([8.0, 6.0, 6.0])
    # lin2 column i: sum_k |W2 g2|: 1 + 1, 0 + 1, 2 + 1
    assert acc.lin2.tolist() == pytest.approx([4.0, 2.0, 6.0]) and acc.n_images == 2
