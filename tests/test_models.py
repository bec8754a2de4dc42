"""Model registry tests, parametrised over every registered model so models added later are covered:
shapes and no NaN, a gradient for every parameter, overfitting 16 samples, checkpoint round trips,
the reference design's parameter count, FLOPs; plus the on-device preprocessing and augmentation."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from emolens.checkpoint import load_model, make_checkpoint, read_checkpoint, save_checkpoint
from emolens.models import (
    count_flops,
    count_parameters,
    create_model,
    keras_parameter_count,
    list_models,
)
from emolens.preprocess import CLASSES, normalize
from emolens.train import TrainConfig, augment_batch, mix_batch, to_input

ALL_MODELS = list_models()


def _is_image_model(model: nn.Module) -> bool:
    return getattr(model, "input_kind", "image") == "image"


#: frames per clip for sequence models in these tests (short: the point is wiring, not the window)
FRAMES = 3


def _input(model: nn.Module, batch_size: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Random normalised input: (B, 1, 48, 48) faces, or (B, FRAMES, 1, 48, 48) clips for a sequence model."""
    shape = (batch_size, 1, 48, 48) if _is_image_model(model) else (batch_size, FRAMES, 1, 48, 48)
    return torch.randn(shape, generator=gen)


def _logits_shape(model: nn.Module, batch_size: int) -> tuple[int, ...]:
    """(B, 7) for image models; a sequence model labels every frame: (B, T, 7)."""
    return (batch_size, len(CLASSES)) if _is_image_model(model) else (batch_size, FRAMES, len(CLASSES))


def _small(name: str) -> dict:
    """Arguments that shrink a sequence model's frame encoder for the overfit test: the encoders' own
    capacity is tested as image models; here only the temporal head's wiring is in question."""
    params = inspect.signature(create_model(name).__class__.__init__).parameters
    return {"encoder_kwargs": {"widths": (16, 32, 64, 128)}} if "encoder_kwargs" in params else {}


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.ndim == 3:  # every frame of a clip carries the clip's label
        y = y[:, None].expand(logits.shape[:2])
    return nn.functional.cross_entropy(logits.flatten(0, -2), y.flatten())


def _no_dropout(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
    return model


def _randomise_norm_buffers(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN running statistics, so a round trip that dropped buffers would show."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_registry_lists_the_three_designs():
    assert {"cnn_lstm", "cnn", "reference"} <= set(ALL_MODELS)
    with pytest.raises(ValueError, match="unknown model 'nope'; available: .*cnn_lstm"):
        create_model("nope")


@pytest.mark.parametrize("name", ALL_MODELS)
def test_output_shape_and_finite(name):
    model = create_model(name).eval()
    assert model.model_name == name
    with torch.no_grad():
        logits = model(_input(model, 3))
    assert logits.shape == _logits_shape(model, 3)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_parameter_gets_a_gradient(name):
    model = create_model(name).train()
    loss = _loss(model(_input(model, 4)), torch.tensor([0, 3, 5, 6]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    for n, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), n
    # a conv bias right before BN gets an exactly-zero gradient (BN removes the mean); everything else moves
    moving = sum(p.numel() for p in model.parameters() if p.grad.abs().sum() > 0)
    assert moving / count_parameters(model) > 0.99


@pytest.mark.parametrize("name", ALL_MODELS)
def test_overfits_16_samples(name):
    """Capacity and wiring: 16 random inputs with fixed labels are memorised in a few dozen Adam steps
    (train mode, dropout off; chance loss is ln 7 = 1.95)."""
    model = _no_dropout(create_model(name, **_small(name))).train()
    g = torch.Generator().manual_seed(1)
    x = _input(model, 16, g)
    y = torch.arange(16) % len(CLASSES)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _step in range(40):
        logits = model(x)
        loss = _loss(logits, y)
        first = loss.item() if first is None else first
        right = (logits.argmax(-1) == (y if logits.ndim == 2 else y[:, None])).float().mean().item()
        if loss.item() < 0.05 and right == 1.0:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 1.0
    assert right == 1.0, f"{name}: train accuracy {right:.2f} after {_step} steps"
    assert loss.item() < 0.05, f"{name}: loss {loss.item():.3f} after {_step} steps"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_checkpoint_round_trip_reproduces_logits(name, tmp_path):
    model = create_model(name).eval()
    _randomise_norm_buffers(model)
    x = _input(model, 4)
    with torch.no_grad():
        want = model(x)
    path = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint(model, config={"seed": 1}, metrics={"public_acc": 0.5}), path)
    loaded, ckpt = load_model(path)
    assert not loaded.training
    assert "state_dict" not in ckpt and ckpt["classes"] == list(CLASSES)
    assert ckpt["model"]["name"] == name and ckpt["metrics"]["public_acc"] == 0.5
    with torch.no_grad():
        assert torch.equal(loaded(x), want)

    half = tmp_path / "half.pt"
    save_checkpoint(make_checkpoint(model, half=True), half)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    assert all(v.dtype in (torch.float16, torch.int64) for v in read_checkpoint(half)["state_dict"].values())
    loaded16, _ = load_model(half)
    assert all(p.dtype == torch.float32 for p in loaded16.parameters())
    with torch.no_grad():
        got = loaded16(x)
    # fp16 weights carry ~3 significant digits; the logits move by far less than their spread
    assert (got - want).abs().max() < 0.02 * want.abs().max() + 1e-3
    assert torch.equal(got.argmax(1), want.argmax(1))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_features_and_head(name):
    model = create_model(name).eval()
    if not _is_image_model(model):
        pytest.skip(f"{name} is not a frame model")
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        f = model.forward_features(x)
        assert f.ndim == 4 and f.shape[0] == 2 and f.shape[2:] == (3, 3)
        emb = model.forward_head(f, pre_logits=True)
        assert emb.shape == (2, model.embed_dim)
        assert torch.equal(model.forward_head(f), model(x))
        assert model.forward_head(f).shape == (2, len(CLASSES))


def test_reference_parameter_count_matches_keras():
    model = create_model("reference")
    assert keras_parameter_count(model) == 3_385_415
    assert count_parameters(model) == 3_381_767
    # Keras counts BN moving mean/variance as parameters (PyTorch: buffers) and has one RNN/LSTM bias
    # where PyTorch has two (bias_ih + bias_hh): +2 * 1984 BN channels, -(64 + 4 * 64) extra biases.
    bn_channels = 64 + 128 + 512 + 512 + 256 + 512
    assert 3_381_767 + 2 * bn_channels - (64 + 4 * 64) == 3_385_415


def test_count_flops_includes_the_lstm():
    """FlopCounterMode does not see the fused LSTM kernels; count_flops adds them from the layer sizes."""
    from torch.utils.flop_counter import FlopCounterMode

    lstm_model = create_model("cnn_lstm")
    cnn_model = create_model("cnn")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        lstm_model.eval()(torch.zeros(1, 1, 48, 48))
    seen = counter.get_total_flops()
    # BiLSTM over 9 positions of 256 channels, hidden 96: 2 dirs * 9 steps * 4 gates * 96 * (256 + 96) MACs
    lstm = 2 * (2 * 9 * 4 * 96 * (256 + 96))
    assert count_flops(lstm_model) == seen + lstm
    # the same backbone: the two differ only in their heads
    backbone = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(k))
    assert count_flops(cnn_model) > backbone
    # the reference's SimpleRNN is counted by FlopCounterMode itself and must not be counted twice
    ref = create_model("reference")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        ref.eval()(torch.zeros(1, 1, 48, 48))
    assert count_flops(ref) == counter.get_total_flops() + 2 * (9 * 4 * 64 * (64 + 64))
    ref.train()
    count_flops(ref)
    assert ref.training  # count_flops evaluates in eval mode and restores the mode it found


@pytest.mark.parametrize("name", ALL_MODELS)
def test_count_flops_every_model(name):
    model = create_model(name)
    flops = count_flops(model)
    assert isinstance(flops, int) and flops > count_parameters(model)  # every weight is used at least once


def test_to_input_is_the_one_preprocessing():
    faces = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    got = to_input(torch.from_numpy(faces))
    assert got.shape == (5, 1, 48, 48) and got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), normalize(faces))


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**kw)


def test_augment_keeps_shape_dtype_and_is_seeded():
    x = to_input(torch.randint(0, 256, (6, 48, 48), dtype=torch.uint8))
    cfg = _cfg()
    a = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    c = augment_batch(x, cfg, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)


def test_augment_flip_only_gives_the_image_or_its_mirror():
    x = torch.randn(16, 1, 48, 48)
    cfg = _cfg(rotate=0.0, zoom=0.0, shift=0.0, erase=0.0, hflip=True)
    out = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    same = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-4
    mirrored = (out - x.flip(3)).abs().amax(dim=(1, 2, 3)) < 1e-4
    assert (same | mirrored).all()
    assert same.any() and mirrored.any()  # 16 fair coins
    off = augment_batch(x, _cfg(rotate=0.0, zoom=0.0, shift=0.0, erase=0.0, hflip=False), torch.Generator())
    torch.testing.assert_close(off, x, atol=1e-4, rtol=0)


def test_crop_pad_shifts_whole_pixels_without_blur():
    """crop_pad is the pad-and-crop of the plain recipe: every output is the input moved by whole pixels (edge
    pixels repeated), never a resampled blend."""
    x = torch.randn(32, 1, 48, 48)
    cfg = _cfg(rotate=0.0, zoom=0.0, erase=0.0, hflip=False, crop_pad=4)
    out = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    padded = F.pad(x, (4, 4, 4, 4), mode="replicate")
    found = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(9) for dx in range(9)
                if (out[i] - padded[i, :, dy:dy + 48, dx:dx + 48]).abs().max() < 1e-4]
        assert hits, f"image {i} is not a whole-pixel shift of its input"
        found.add(hits[0])
    assert len(found) > 10  # the shifts vary


def test_crop_size_cuts_whole_pixel_windows_with_flips():
    """crop_size 44 trains on 44x44 windows of the 48x48 face: each output is exactly one of the 25 windows
    (offsets 0-4 either way), mirrored or not, and the windows vary."""
    x = torch.randn(48, 1, 48, 48)
    cfg = _cfg(rotate=0.0, zoom=0.0, erase=0.0, hflip=True, crop_pad=0, shift=0.0, crop_size=44)
    out = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    assert out.shape == (48, 1, 44, 44)
    found = set()
    for i in range(len(x)):
        hits = [(dy, dx, m) for dy in range(5) for dx in range(5) for m in (False, True)
                if (out[i] - (x[i].flip(2) if m else x[i])[:, dy:dy + 44, dx:dx + 44]).abs().max() < 1e-4]
        assert hits, f"image {i} is not a whole-pixel window of its input"
        found.add(hits[0])
    assert len(found) > 15 and {m for *_, m in found} == {False, True}


def test_centre_crop_is_the_middle_window():
    from emolens.train import centre_crop

    x = torch.arange(48 * 48.0).view(1, 1, 48, 48)
    torch.testing.assert_close(centre_crop(x, 44), x[..., 2:46, 2:46])
    assert centre_crop(x, 0) is x and centre_crop(x, 48) is x


@pytest.mark.parametrize("size", [15, 45, 50, -2])
def test_crop_size_must_be_even_and_fit(size):
    from emolens.config import ConfigError

    with pytest.raises(ConfigError, match="crop_size"):
        _cfg(crop_size=size).validate()


def test_random_erasing_rate():
    x = torch.zeros(400, 1, 48, 48)
    cfg = _cfg(rotate=0.0, zoom=0.0, shift=0.0, hflip=False, erase=0.5)
    out = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    erased = (out != 0).flatten(1).any(1).float().mean().item()
    assert 0.4 < erased < 0.6
    area = (out != 0).flatten(1).float().sum(1)
    assert area[area > 0].max() <= 0.25 * 48 * 48 + 2 * 48


def test_mixup_and_cutmix_labels():
    x = torch.randn(8, 1, 48, 48)
    y = torch.arange(8)
    same = mix_batch(x, y, _cfg(mixup=0.0, cutmix=0.0), torch.Generator().manual_seed(0))
    assert same[0] is x and same[3] == 1.0
    xm, ya, yb, lam = mix_batch(x, y, _cfg(mixup=0.4, mix_prob=1.0), torch.Generator().manual_seed(0))
    assert torch.equal(ya, y) and sorted(yb.tolist()) == y.tolist() and 0 <= lam <= 1
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x[yb])  # y is arange, so yb is the permutation
    xc, ya, yb, lam = mix_batch(x, y, _cfg(cutmix=1.0, mix_prob=1.0), torch.Generator().manual_seed(1))
    assert lam < 1
    moved = int(torch.nonzero(yb != y)[0])  # an image paired with another one (not itself)
    pasted = xc[moved] != x[moved]
    assert torch.equal(xc[moved][pasted], x[yb[moved]][pasted])
    assert math.isclose(1 - lam, pasted.float().mean().item(), abs_tol=1e-6)  # lam is the area kept
