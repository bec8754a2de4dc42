"""The temporal model: FER sequence synthesis, the measurement (accuracy, flips, delay), training from a
tiny synthetic FER layout (the loss goes down, the files describe themselves), ONNX vs torch, and the
check that a temporal head is only used with the image model it was trained on."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from emolens.checkpoint import make_checkpoint, read_checkpoint, save_checkpoint
from emolens.models import create_model
from emolens.preprocess import CLASSES
from emolens.runtime import ModelError
from emolens.temporal import (
    OnnxTemporalHead,
    SequenceConfig,
    TorchTemporalHead,
    assemble_sequences,
    ema_probs,
    jitter_run,
    load_pair,
    load_temporal_model,
    measure,
    sequence_metrics,
    train_sequence,
)

SMALL = {"widths": (8, 16, 32, 64)}


def _faces(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 48, 48) uint8 synthetic 'faces' whose class decides a pattern (so a model can tell them apart)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    yy, xx = np.mgrid[0:48, 0:48] / 48.0
    out = []
    for y in labels:
        img = 128 + 80 * np.sin(2 * np.pi * (y + 1) * xx) * np.cos(np.pi * (y % 3 + 1) * yy)
        out.append(np.clip(img + rng.normal(0, 20, (48, 48)), 0, 255).astype(np.uint8))
    return np.stack(out), labels.astype(np.int64)


def _image_checkpoint(path, seed: int = 0, steps: int = 0):
    """A small cnn_lstm saved as a checkpoint; ``steps`` of Adam on the synthetic faces make its embeddings
    tell the classes apart (a random encoder maps every face to about the same point)."""
    torch.manual_seed(seed)
    model = create_model("cnn_lstm", **SMALL)
    if steps:
        from emolens.train import to_input

        faces, labels = _faces(70, seed + 5)
        x, y = to_input(torch.from_numpy(faces)), torch.from_numpy(labels)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    save_checkpoint(make_checkpoint(model, metrics={"public_acc": 0.2}), path)
    return model


def _fer_folder(root, n_train: int = 70, n_public: int = 35):
    """The Kaggle layout: train/<class>/Training_*.png and test/<class>/PublicTest_*.png."""
    for split, prefix, n, seed in (("train", "Training", n_train, 1), ("test", "PublicTest", n_public, 2)):
        imgs, labels = _faces(n, seed)
        for i, (img, y) in enumerate(zip(imgs, labels, strict=True)):
            d = root / split / CLASSES[y]
            d.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(d / f"{prefix}_{i}.png"), img)
    return root


# ---------------------------------------------------------------------------------------------- synthesis


def test_jitter_run_moves_but_keeps_the_face():
    face, _ = _faces(1)
    a = jitter_run(face[0], 20, np.random.default_rng(0))
    b = jitter_run(face[0], 20, np.random.default_rng(0))
    assert a.shape == (20, 48, 48) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)  # seeded
    diffs = np.abs(a[1:].astype(int) - a[:-1].astype(int)).mean(axis=(1, 2))
    assert (diffs > 0).all()  # every frame differs from the previous one
    # but stays the same face: closer to its own frames than to another class's face
    other = jitter_run(_faces(2)[0][1], 1, np.random.default_rng(1))[0]
    same = np.abs(a[0].astype(int) - a[10].astype(int)).mean()
    assert same < np.abs(a[0].astype(int) - other.astype(int)).mean()


def test_assemble_sequences_segments_and_changes():
    rng = np.random.default_rng(0)
    run_labels = np.array([0, 1, 2, 3, 3, 5, 6, 4] * 5)
    ri, fi, lab = assemble_sequences(run_labels, 32, 200, 96, rng, min_segment=8, max_changes=6)
    assert ri.shape == fi.shape == lab.shape == (200, 96)
    np.testing.assert_array_equal(lab, run_labels[ri])
    assert (fi >= 0).all() and (fi < 32).all()
    n_changes = 0
    for s in range(200):
        bounds = np.flatnonzero(ri[s, 1:] != ri[s, :-1]) + 1
        segs = np.diff(np.concatenate([[0], bounds, [96]]))
        assert segs.min() >= 8 and segs.max() <= 32 and len(bounds) <= 6
        for b in bounds:  # each new segment is a new expression, and frames run on inside a segment
            assert lab[s, b] != lab[s, b - 1]
        inside = ri[s, 1:] == ri[s, :-1]
        assert (fi[s, 1:][inside] == fi[s, :-1][inside] + 1).all()
        n_changes += len(bounds)
    assert n_changes >= 2 * 200  # 96 frames in segments of at most 32: at least 2 changes each


def test_sequence_metrics_by_hand():
    labels = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]])
    pred = np.array([[0, 2, 0, 0, 0, 0, 1, 1, 1, 1]])
    m = sequence_metrics(pred, labels, hold=3)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["flips_per_100"] == pytest.approx(100 * 3 / 9)
    assert m["delay_frames"] == 2 and m["missed"] == 0 and m["changes"] == 1
    never = sequence_metrics(np.zeros_like(labels), labels)
    assert never["missed"] == 1.0 and np.isnan(never["delay_frames"])
    truth = sequence_metrics(labels, labels)
    assert truth["accuracy"] == 1 and truth["delay_frames"] == 0


def test_ema_and_measure_rows():
    probs = np.zeros((1, 4, 7))
    probs[0, :2, 1] = 1
    probs[0, 2:, 3] = 1
    q = ema_probs(probs, 0.5)
    np.testing.assert_allclose(q[0, 2, [1, 3]], [0.5, 0.5])
    np.testing.assert_allclose(q[0, 3, [1, 3]], [0.25, 0.75])
    rows = measure(np.log(probs + 1e-6), np.array([[1, 1, 3, 3]]), probs, ema=(0.5,))
    assert [r["method"] for r in rows] == ["ground truth", "per-frame argmax", "EMA of probabilities (alpha 0.5)",
                                           "temporal LSTM"]
    assert rows[1]["accuracy"] == 1.0


# ---------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("proj", [64, 0])  # 0: the LSTM reads the per-frame log-probabilities only
def test_temporal_head_is_small_and_causal(proj):
    m = create_model("temporal_lstm", encoder_kwargs=SMALL, proj=proj).eval()
    head = sum(v.numel() for v in m.head_state_dict().values())
    assert head < 150_000 and not any(k.startswith("encoder.") for k in m.head_state_dict())
    emb = torch.randn(2, 10, m.frame_dim)
    with torch.no_grad():
        full = m.forward_sequence(emb)
        emb2 = emb.clone()
        emb2[:, 6:] = torch.randn(2, 4, m.frame_dim)  # the future must not change the past
        part = m.forward_sequence(emb2)
    assert full.shape == (2, 10, 7)
    torch.testing.assert_close(full[:, :6], part[:, :6])
    assert not torch.allclose(full[:, 6:], part[:, 6:])


def test_temporal_head_refuses_an_empty_input():
    with pytest.raises(ValueError, match="proj"):
        create_model("temporal_lstm", encoder_kwargs=SMALL, proj=0, feed_logits=False)


def test_head_training_on_embeddings_reduces_the_loss():
    """The frozen-encoder training loop of train_sequence (``fit_head``) on a tiny bank of runs whose frame
    embeddings are noisy views of a per-class prototype (one frame alone is often wrong; a run is not)."""
    from emolens.temporal import RunBank, fit_head

    torch.manual_seed(0)
    model = create_model("temporal_lstm", encoder_kwargs=SMALL, num_frames=16)
    rng = np.random.default_rng(0)
    protos = rng.normal(size=(7, model.frame_dim))
    labels = np.arange(28) % 7
    emb = (protos[labels][:, None] + rng.normal(0, 2.0, (28, 16, model.frame_dim))).astype(np.float32)
    bank = RunBank(labels.astype(np.int64), np.zeros((28, 16, 7), np.float32), emb)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    cfg = SequenceConfig(seq_len=16, min_segment=4, epochs=10, steps_per_epoch=8, batch_size=32, lr=1e-2,
                         emb_noise=0.0, smooth_loss=0.0, label_smoothing=0.0)
    history = fit_head(model, bank, cfg, rng, log=lambda m: None)
    losses = [h["train_loss"] for h in history]
    assert len(history) == 10 and losses[-1] < 0.5 * losses[0], losses
    for k, v in model.encoder.state_dict().items():  # the encoder is frozen
        torch.testing.assert_close(v, before[k])


# ---------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``emolens train --task sequence`` at a tiny size: a random-weight image model, synthetic FER layout."""
    tmp = tmp_path_factory.mktemp("seq")
    img_path = tmp / "image.pt"
    _image_checkpoint(img_path, steps=30)
    data = _fer_folder(tmp / "fer")
    cfg = SequenceConfig(data=str(data), image_model=str(img_path), seq_len=12, train_runs=48, min_segment=4,
                         epochs=6, steps_per_epoch=6, batch_size=16, eval_sequences=20, eval_len=24,
                         eval_runs=20, val_fraction=0.2, out=str(tmp / "run"), progress=False, threads=1)
    out = train_sequence(cfg)
    return out, img_path, tmp


def test_train_sequence_writes_a_self_describing_model(trained):
    out, img_path, _ = trained
    for name in ("temporal.pt", "temporal.onnx", "config.yaml", "metrics.json", "metrics.csv", "measure.md"):
        assert (out / name).is_file(), name
    hist = json.loads((out / "metrics.json").read_text())["history"]
    assert len(hist) == 6
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    ckpt = read_checkpoint(out / "temporal.pt")
    assert not any(k.startswith("encoder.") for k in ckpt["state_dict"])  # only the head is stored
    assert ckpt["encoder"]["file"] == "image.pt" and len(ckpt["encoder"]["sha256"]) == 64
    assert ckpt["sequence"]["window"] == 12
    assert (out / "temporal.pt").stat().st_size < 400_000
    table = (out / "measure.md").read_text()
    for method in ("per-frame argmax", "EMA of probabilities", "temporal LSTM"):
        assert method in table


def test_onnx_head_matches_torch_and_refuses_another_image_model(trained):
    out, img_path, tmp = trained
    model, _ = load_temporal_model(out / "temporal.pt", img_path)
    torch_head = TorchTemporalHead(model)
    onnx_head = OnnxTemporalHead(out / "temporal.onnx")
    assert onnx_head.window == 12 and onnx_head.meta["classes"] == list(CLASSES)
    emb = np.random.default_rng(0).normal(size=(3, 20, model.frame_dim)).astype(np.float32)
    np.testing.assert_allclose(onnx_head.predict_windowed(emb), torch_head.predict_windowed(emb), atol=1e-5)

    enc, head = load_pair(img_path, out / "temporal.pt", runtime="torch")
    assert head.window == 12
    other = tmp / "other.pt"
    _image_checkpoint(other, seed=1)  # same architecture, other weights
    with pytest.raises(ModelError, match="another image model"):
        load_temporal_model(out / "temporal.pt", other)


def test_the_shipped_pair_fits_together():
    """The shipped temporal head is used with the shipped int8 image model out of the box: `emolens video`
    fell back to EMA for a day because int8 moved the probe embeddings 5.6 % (tolerance 5 %)."""
    from emolens.predict import EmotionRecognizer
    from emolens.temporal.runtime import default_temporal_path
    from emolens.video import TemporalSmoother, frame_encoder_for, make_smoother

    warnings: list[str] = []
    smoother = make_smoother("auto", frame_encoder_for(EmotionRecognizer()), warn=warnings.append)
    assert isinstance(smoother, TemporalSmoother), warnings
    enc, head = load_pair()  # `emolens bench temporal`'s pair
    assert enc.source_sha256 == OnnxTemporalHead(default_temporal_path()).meta["encoder"]["sha256"]


def test_probe_tolerance_is_wider_only_for_an_export_of_the_same_checkpoint():
    """Quantisation noise is allowed for an encoder exported from the head's own image checkpoint; the same
    noise from an encoder of unknown origin is refused (another model differs by ~120 %)."""
    from emolens.temporal.runtime import FrameEncoder, check_probe, probe_faces

    probe = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)

    class Noisy(FrameEncoder):
        dim = 16

        def __init__(self, source):
            self.source_sha256 = source

        def _run(self, x):
            noise = np.random.default_rng(1).normal(size=probe.shape).astype(np.float32)
            emb = probe + 0.1 * np.linalg.norm(probe) / np.linalg.norm(noise) * noise  # 10 % away
            return np.zeros((len(x), len(CLASSES)), np.float32), emb[:len(x)]

    assert len(probe_faces(4)) == 4
    assert check_probe(Noisy("ab" * 32), probe, "head", encoder_sha256="ab" * 32) == pytest.approx(0.1, abs=1e-4)
    for source in (None, "cd" * 32):
        with pytest.raises(ModelError, match="another image model"):
            check_probe(Noisy(source), probe, "head", encoder_sha256="ab" * 32)


def test_train_sequence_cli_rejects_image_only_options(tmp_path):
    from emolens.cli import main

    assert main(["train", "--task", "sequence", "--mixup", "0.2"]) == 2
    assert main(["train", "--task", "sequence", "--seq-len", "0"]) == 2


def test_train_on_user_clips(tmp_path):
    """User sequence data: <class>/<clip>/ frame folders and <class>/*.avi clips, one label per clip (frames
    that are face crops already: no face is detected in them, so they are used whole)."""
    from emolens.temporal import load_sequence_folder
    from emolens.video.io import _AtomicVideoWriter

    faces, labels = _faces(14, seed=3)
    root = tmp_path / "clips"
    for k, (face, y) in enumerate(zip(faces, labels, strict=True)):
        frames = jitter_run(face, 10, np.random.default_rng(k))
        if k % 2:
            d = root / CLASSES[y] / f"clip{k}"
            d.mkdir(parents=True)
            for i, f in enumerate(frames):
                cv2.imwrite(str(d / f"{i:03d}.png"), f)
        else:
            w = _AtomicVideoWriter(root / CLASSES[y] / f"clip{k}.avi", 10.0, (48, 48))
            for f in frames:
                w.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
            w.close()
    clips = load_sequence_folder(root, progress=False)
    assert len(clips) == 14 and all(c[1].shape == (10, 48, 48) for c in clips)
    assert sorted(c[2] for c in clips) == sorted(labels.tolist())

    img_path = tmp_path / "image.pt"
    _image_checkpoint(img_path, steps=10)
    cfg = SequenceConfig(data=str(root), image_model=str(img_path), seq_len=8, min_segment=4, epochs=3,
                         steps_per_epoch=3, batch_size=8, val_fraction=0.3, out=str(tmp_path / "run"),
                         progress=False, threads=1)
    out = train_sequence(cfg)
    assert (out / "temporal.onnx").is_file() and "Held-out clips (4)" in (out / "measure.md").read_text()


def test_frame_folder_clip_is_detected_at_full_size(tmp_path):
    """A <class>/<clip>/ frame folder of 320x240 frames (a real face: scikit-image's astronaut) is read at its own
    size, so the detector finds the face and the crops are of the face, as for an .mp4 clip; not the whole frame
    squeezed to 48x48 (where no face is found)."""
    from emolens.faces import create_detector
    from emolens.preprocess import preprocess
    from emolens.temporal import load_sequence_folder, read_frame_folder

    skdata = pytest.importorskip("skimage.data")
    photo = cv2.resize(np.ascontiguousarray(skdata.astronaut()[:, :, ::-1]), (240, 240))
    frame = np.full((240, 320, 3), 60, np.uint8)
    frame[:, 40:280] = photo
    d = tmp_path / "clips" / "happy" / "clip0"
    d.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(d / f"{i:03d}.png"), np.roll(frame, 2 * i, axis=1))
    frames = read_frame_folder(d)
    assert len(frames) == 3 and frames[0].shape == (240, 320, 3)
    det = create_detector("auto")
    assert len(det.detect_faces(frames[0])) == 1  # the face is found at full size

    seen: list[tuple[int, ...]] = []

    def face_crops(fr):
        seen.extend(f.shape for f in fr)
        from emolens.video.crops import clip_face_crops

        return clip_face_crops(fr, detector=det)

    (name, crops, label), = load_sequence_folder(tmp_path / "clips", face_crops=face_crops, progress=False)
    assert seen == [(240, 320, 3)] * 3 and crops.shape == (3, 48, 48) and CLASSES[label] == "happy"
    whole = preprocess(frames[0], "bgr")  # what a crop looks like when no face is found
    assert np.abs(crops[0].astype(int) - whole.astype(int)).mean() > 10


def test_bad_sequence_folder(tmp_path):
    from emolens.data import DataError
    from emolens.temporal import is_sequence_folder, load_sequence_folder

    (tmp_path / "happy" / "clip1").mkdir(parents=True)
    assert is_sequence_folder(tmp_path)
    with pytest.raises(DataError, match="at least 2 frames"):
        load_sequence_folder(tmp_path, progress=False)
    (tmp_path / "grumpy" / "c").mkdir(parents=True)
    with pytest.raises(DataError, match="unknown class folder 'grumpy'"):
        load_sequence_folder(tmp_path, progress=False)


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_bench_temporal_prints_the_table(trained, runtime, capsys):
    """`emolens bench temporal` with the trained pair: torch (.pt files) or ONNX (what the video pipeline runs)."""
    from emolens.cli import main
    from emolens.export import export_onnx

    out, img_path, tmp = trained
    image, head = img_path, out / "temporal.pt"
    if runtime == "onnx":
        image = export_onnx(img_path, tmp / "image.onnx")["path"]
        head = out / "temporal.onnx"
    rc = main(["bench", "temporal", "--data", str(tmp / "fer"), "--model", str(image), "--temporal-model", str(head),
               "--runtime", runtime, "--sequences", "12", "--length", "24", "--runs", "20", "--ema", "0.5"])
    assert rc == 0, capsys.readouterr().err
    table = capsys.readouterr().out
    assert "PublicTest: 12 sequences x 24 frames" in table
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert [r.split("|")[1].strip() for r in rows] == ["ground truth", "per-frame argmax",
                                                        "EMA of probabilities (alpha 0.5)", "temporal LSTM"]
