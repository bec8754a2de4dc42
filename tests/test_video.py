"""Video: the tracker on synthetic moving boxes, the per-track smoothers, the video pipeline end to end on
a short clip made from a real photo (scikit-image's astronaut), and bad input (missing, truncated,
zero-length, no faces, a stream that stops mid-way)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from emolens.preprocess import CLASSES
from emolens.video import (
    CSV_COLUMNS,
    EmaSmoother,
    Tracker,
    iou_matrix,
    process_video,
    synthetic_face_video,
)

# ---------------------------------------------------------------------------------------------- tracker


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10], [100, 100, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [50, 50, 1, 1]])
    m = iou_matrix(a, b)
    assert m.shape == (2, 3)
    np.testing.assert_allclose(m[0], [1.0, 50 / 150, 0.0])
    assert (m[1] == 0).all()


def test_track_survives_a_three_frame_miss():
    tr = Tracker(max_misses=5)
    ids = []
    for f in range(30):
        box = (20 + 6 * f, 50 + 2 * f, 60, 60)  # moving right and down, 6 px per frame
        seen = tr.step([] if 10 <= f < 13 else [box])  # the detector runs but misses frames 10-12
        if f < 10 or f >= 13:
            assert len(seen) == 1
            ids.append(seen[0].id)
            # the motion model carries the box: after the gap it is still on the face
            assert iou_matrix(seen[0].box, box)[0, 0] > 0.8
        else:
            assert seen == []  # not detected: not shown, but alive
            assert len(tr.tracks) == 1
    assert set(ids) == {1}


def test_track_survives_detector_misses_counted_in_rounds():
    tr = Tracker(max_misses=5)
    tr.step([(0, 0, 40, 40)])
    for _ in range(5):  # five rounds with no detection at all
        tr.step([])
    assert len(tr.tracks) == 1
    tr.step([])
    assert tr.tracks == [] and [t.id for t in tr.lost] == [1]  # ended; kept aside a while for its return


def test_two_crossing_tracks_keep_their_ids():
    """Two faces walk past each other; at the crossing the one behind is hidden for 2 frames."""
    tr = Tracker(max_misses=5)
    first: dict[str, int] = {}
    for f in range(40):
        a = (10 + 12 * f, 100, 50, 50)  # left -> right
        b = (478 - 12 * f, 120, 50, 50)  # right -> left, slightly lower
        boxes = [a] if 19 <= f <= 20 else [a, b]
        tr.step(boxes)
        ids = tr.last_ids
        first.setdefault("a", ids[0])
        assert ids[0] == first["a"], f"frame {f}: face A changed id"
        if len(boxes) == 2:
            first.setdefault("b", ids[1])
            assert ids[1] == first["b"], f"frame {f}: face B changed id"
    assert first["a"] != first["b"]
    assert tr.next_id == 3  # no track was ever started twice


def test_new_face_gets_a_new_id_and_far_jump_is_not_matched():
    tr = Tracker(max_misses=1)
    tr.step([(0, 0, 40, 40)])
    tr.step([(0, 0, 40, 40), (300, 300, 40, 40)])
    assert tr.last_ids == [1, 2]
    tr.step([(600, 0, 40, 40)])  # nowhere near either: a third face
    assert tr.last_ids == [3]


def test_ema_smoother_per_track():
    ema = EmaSmoother(0.25)
    a = np.eye(7)[3]
    b = np.eye(7)[5]
    ema.update(1, a, None)
    ema.update(2, b, None)
    q = ema.update(1, b, None)
    np.testing.assert_allclose(q, 0.75 * a + 0.25 * b)
    with pytest.raises(ValueError):
        EmaSmoother(0)


def test_smoother_new_is_fresh_with_the_same_settings():
    """One smoother per stream: ``new()`` keeps the settings (and shares a temporal head), not the tracks."""
    from emolens.video import Smoother, TemporalSmoother

    ema = EmaSmoother(0.4)
    ema.update(1, np.eye(7)[3], None)
    fresh = ema.new()
    assert type(fresh) is EmaSmoother and fresh.alpha == 0.4 and fresh.state == {} and ema.state
    assert type(Smoother().new()) is Smoother
    head = object()
    tmp = TemporalSmoother(head).new()
    assert type(tmp) is TemporalSmoother and tmp.head is head and tmp.state == {}


def test_tracks_move_between_detection_rounds():
    tr = Tracker()
    tr.step([(0, 0, 40, 40)])
    tr.step([(5, 0, 40, 40)])
    seen = tr.step(None)  # the detector skipped this frame: the track moves on by its velocity
    assert len(seen) == 1 and not seen[0].detected
    np.testing.assert_allclose(seen[0].box[:2], [10, 0], atol=1e-6)


def test_tentative_track_from_a_false_positive_never_shows():
    tr = Tracker(min_hits=2)
    assert len(tr.step([(0, 0, 40, 40)])) == 1  # found on the first round: shown at once
    seen = tr.step([(0, 0, 40, 40), (300, 300, 40, 40)])  # a new, tentative detection
    assert [t.id for t in seen] == [1]
    tr.step([(0, 0, 40, 40)])  # the tentative one is not seen again: it ends, never shown
    assert [t.id for t in tr.tracks] == [1] and tr.ended == [2]
    tr.step([(0, 0, 40, 40), (300, 300, 40, 40)])
    seen = tr.step([(0, 0, 40, 40), (302, 300, 40, 40)])  # twice in a row: confirmed
    assert [t.id for t in seen] == [1, 3]


# ---------------------------------------------------------------------------------------------- video files


def _count_frames(path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    """A small random-weight cnn_lstm checkpoint: the pipeline is under test, not the model's accuracy."""
    import torch

    from emolens.checkpoint import make_checkpoint, save_checkpoint
    from emolens.models import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "image.pt"
    save_checkpoint(make_checkpoint(create_model("cnn_lstm", widths=(8, 16, 32, 64)).eval()), path)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """40 frames, 640x480, 30 fps: scikit-image's astronaut photo panned and zoomed (one face)."""
    skdata = pytest.importorskip("skimage.data")
    photo = np.ascontiguousarray(skdata.astronaut()[:, :, ::-1])  # RGB -> BGR
    return synthetic_face_video(tmp_path_factory.mktemp("clip") / "astronaut.avi", photo, frames=40)


def _run(*argv) -> int:
    from emolens.cli import main

    return main([str(a) for a in argv])


def test_video_end_to_end(clip, image_model, tmp_path, capsys):
    out, table, plot = tmp_path / "out.mp4", tmp_path / "t.csv", tmp_path / "t.png"
    rc = _run("video", clip, "-o", out, "--csv", table, "--plot", plot, "--model", image_model, "--smooth", "ema",
              "--no-progress")
    assert rc == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert "40 frames, 1 track(s), 40 rows" in stdout and "real time" in stdout
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS
    assert [int(r["frame"]) for r in rows] == list(range(40))  # one row per frame: one face, always tracked
    assert {r["track_id"] for r in rows} == {"1"}
    assert float(rows[30]["time_s"]) == pytest.approx(1.0)
    for r in rows:
        assert sum(float(r[f"p_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=2e-3)
        assert r["emotion"] in CLASSES and int(r["w"]) > 60
    # detection ran every 3rd frame, the tracker carried the box in between
    assert [r["detected"] for r in rows[:6]] == ["1", "0", "0", "1", "0", "0"]
    assert _count_frames(out) == 40
    assert plot.stat().st_size > 10_000
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_video_with_temporal_model(clip, image_model, tmp_path):
    """--smooth temporal with a (untrained) temporal head built on the image model: the LSTM runs per track,
    through its ONNX export, on embeddings from the torch image model."""
    import torch

    from emolens.checkpoint import load_model
    from emolens.models import create_model
    from emolens.temporal import save_temporal_model
    from emolens.video import VideoProcessor

    img, ckpt = load_model(image_model)
    torch.manual_seed(0)
    tm = create_model("temporal_lstm", encoder="cnn_lstm", encoder_kwargs=ckpt["model"]["kwargs"], num_frames=8)
    tm.encoder.load_state_dict(img.state_dict())
    pt, onnx_path = save_temporal_model(tm, image_model, tmp_path / "temporal.pt")
    from emolens.export import export_onnx

    image_onnx = export_onnx(image_model, tmp_path / "image.onnx")["path"]  # with its 'embedding' output
    results = []
    for img_file, runtime, head in ((image_model, "torch", pt), (image_model, "torch", onnx_path),
                                    (image_onnx, "onnx", onnx_path)):
        proc = VideoProcessor.create(model=str(img_file), runtime=runtime, smooth="temporal",
                                      temporal_model=str(head))
        res = process_video(str(clip), None, tmp_path / "t.csv", processor=proc, max_frames=12, progress=False)
        assert res.smoothing == "temporal" and res.rows == 12
        assert len(proc.smoother.state[1]) == 8  # the window: the last 8 embeddings of track 1
        with open(tmp_path / "t.csv", newline="") as f:
            results.append(np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in csv.DictReader(f)]))
    # torch and ONNX, image model and head, give the same labels (fp16-rounded head, 4-decimal CSV)
    np.testing.assert_allclose(results[0], results[1], atol=2e-3)
    np.testing.assert_allclose(results[0], results[2], atol=2e-3)


def test_video_no_faces(tmp_path, image_model, capsys):
    import cv2

    from emolens.video.io import _AtomicVideoWriter

    src = tmp_path / "empty_room.avi"
    w = _AtomicVideoWriter(src, 25.0, (320, 240))
    yy, xx = np.mgrid[0:240, 0:320]
    for i in range(15):
        w.write(cv2.cvtColor(((xx + 4 * i) % 256).astype(np.uint8), cv2.COLOR_GRAY2BGR))
    w.close()
    out, table = tmp_path / "out.avi", tmp_path / "t.csv"
    assert _run("video", src, "-o", out, "--csv", table, "--model", image_model, "--no-progress") == 0
    captured = capsys.readouterr()
    assert "no faces found in 15 frames" in captured.err
    assert "15 frames, 0 track(s), 0 rows" in captured.out
    assert table.read_text().strip() == ",".join(CSV_COLUMNS)
    assert _count_frames(out) == 15


def test_truncated_avi_keeps_what_was_read(clip, image_model, tmp_path, capsys):
    """A stream that stops half-way (an MJPG .avi cut in half): the run ends cleanly, says so, and the
    output holds every frame that was read and plays."""
    cut = tmp_path / "cut.avi"
    data = Path(clip).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out, table = tmp_path / "out.mp4", tmp_path / "t.csv"
    assert _run("video", cut, "-o", out, "--csv", table, "--model", image_model, "--no-progress") == 0
    err = capsys.readouterr().err
    assert "ended after" in err and "of 40 frames" in err
    n = len(table.read_text().strip().splitlines()) - 1
    assert 5 < n < 40
    assert _count_frames(out) == n


def test_truncated_mp4_is_a_clear_error(clip, image_model, tmp_path, capsys):
    """An .mp4 cut short loses its index (written last): it cannot be opened at all."""
    mp4 = synthetic_face_video(tmp_path / "v.mp4", frames=10)
    data = mp4.read_bytes()
    mp4.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.mp4"
    assert _run("video", mp4, "-o", out, "--model", image_model, "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "cannot open as a video" in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("kind", ["zero_bytes", "no_frames", "missing", "not_a_video", "folder"])
def test_bad_video_inputs(kind, tmp_path, image_model, capsys):
    import cv2

    path = tmp_path / "in.avi"
    if kind == "zero_bytes":
        path.write_bytes(b"")
        expect = "empty file"
    elif kind == "no_frames":  # a valid container with zero frames
        cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 48)).release()
        expect = "no frames could be read"
    elif kind == "missing":
        expect = "no such file"
    elif kind == "not_a_video":
        path.write_text("hello, not a video\n" * 100)
        expect = "cannot open as a video"
    else:
        path.mkdir()
        expect = "is a folder"
    out = tmp_path / "out.mp4"
    assert _run("video", path, "-o", out, "--csv", tmp_path / "t.csv", "--model", image_model) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expect in err and len(err.splitlines()) == 1
    assert not out.exists() and not (tmp_path / "t.csv").exists()


def test_webcam_without_display_points_to_serve(clip, image_model, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert _run("webcam", "--source", clip, "--model", image_model) == 2
    err = capsys.readouterr().err
    assert "emolens serve" in err and len(err.strip().splitlines()) == 1
    # with --record it runs headless and stores only what it was asked to
    rec = tmp_path / "rec.mp4"
    assert _run("webcam", "--source", clip, "--record", rec, "--max-frames", 10, "--model", image_model) == 0
    assert _count_frames(rec) == 10


def test_bench_video_reports_the_ratio(image_model, capsys):
    """`emolens bench video` on its own synthetic clip (the bundled photo), with and without the output video."""
    assert _run("bench", "video", "--frames", 15, "--repeats", 1, "--model", image_model, "--smooth", "ema") == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("| written") or ln.startswith("| none")]
    assert len(lines) == 2 and "15 frames at 30 fps, 1 track(s)" in out
    for ln in lines:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        fps, ratio = float(cells[1]), float(cells[2])
        assert fps > 0 and ratio == pytest.approx(fps / 30, abs=0.01)


# ---------------------------------------------------------------------------------------------- re-identification


def test_face_back_within_a_second_takes_its_track_back():
    tr = Tracker(max_misses=2, reid_frames=30)
    for f in range(10):
        tr.step([(100 + 2 * f, 100, 60, 60)])
    for _ in range(20):  # out of the picture for 20 frames (0.67 s at 30 fps): the track ends, kept aside
        tr.step([])
    assert tr.tracks == [] and tr.ended == [] and [t.id for t in tr.lost] == [1]
    seen = tr.step([(150, 110, 64, 64)])  # back, a little further on
    assert [t.id for t in seen] == [1] and tr.next_id == 2
    # a face of another size far away is someone else
    tr.step([(150, 110, 64, 64), (500, 400, 20, 20)])
    assert tr.last_ids == [1, 2]


def test_face_gone_longer_than_reid_frames_ends():
    tr = Tracker(max_misses=1, reid_frames=10)
    tr.step([(0, 0, 50, 50)])
    ended = []
    for _ in range(15):
        tr.step([])
        ended += tr.ended
    assert ended == [1] and tr.lost == []
    tr.step([(0, 0, 50, 50)])
    assert tr.last_ids == [2]


@pytest.fixture(scope="module")
def pan_zoom_clip(tmp_path_factory):
    """The issue's clip: 3 s (90 frames) of 640x480 panning and zooming over scikit-image's astronaut."""
    skdata = pytest.importorskip("skimage.data")
    photo = np.ascontiguousarray(skdata.astronaut()[:, :, ::-1])
    return synthetic_face_video(tmp_path_factory.mktemp("pan") / "pan.avi", photo, frames=90)


def test_pan_zoom_clip_one_track_labelled_in_95_percent_of_frames(pan_zoom_clip, image_model, tmp_path, capsys):
    table = tmp_path / "t.csv"
    rc = _run("video", pan_zoom_clip, "--csv", table, "--model", image_model, "--smooth", "ema", "--no-progress")
    assert rc == 0, capsys.readouterr().err
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len({r["frame"] for r in rows}) >= 0.95 * 90
    assert {r["track_id"] for r in rows} == {"1"}


def test_face_leaving_the_frame_for_under_a_second_keeps_its_track(image_model):
    """Frames 0-29 show the astronaut, 30-49 (0.67 s) an empty scene, 50-79 the astronaut again."""
    import cv2

    from emolens.video import VideoProcessor

    skdata = pytest.importorskip("skimage.data")
    photo = cv2.resize(np.ascontiguousarray(skdata.astronaut()[:, :, ::-1]), (480, 480))
    frame = np.full((480, 640, 3), 60, np.uint8)
    frame[:, 80:560] = photo
    empty = np.full((480, 640, 3), 60, np.uint8)
    proc = VideoProcessor.create(model=str(image_model), runtime="torch", smooth="ema")
    ids = [[f.track_id for f in proc.process(empty if 30 <= i < 50 else frame)] for i in range(80)]
    assert all(ids[i] == [] for i in range(33, 50))
    assert {tuple(x) for x in ids[:30] + ids[53:]} == {(1,)}


def test_video_processor_takes_its_parts_explicitly(image_model):
    """Classifier, detector and crop settings are the processor's own; from_recognizer (as serve and cluster
    build it) takes the recognizer's parts."""
    from emolens.faces import create_detector
    from emolens.predict import EmotionRecognizer
    from emolens.runtime import load_classifier
    from emolens.video import VideoProcessor

    clf, det = load_classifier(str(image_model), "torch"), create_detector("auto")
    proc = VideoProcessor(clf, det, margin=0.3, align=False, smooth="ema", detect_every=1)
    assert proc.classifier is clf and proc.face_detector is det and proc.margin == 0.3 and not proc.align
    assert VideoProcessor(clf, det, smooth="none").margin == det.margin  # None: the detector's own margin
    rec = EmotionRecognizer(model=str(image_model), runtime="torch", tta="none", margin=0.25)
    p = VideoProcessor.from_recognizer(rec, smooth="ema")
    assert p.classifier is rec.classifier and p.face_detector is rec.detector and p.margin == 0.25 and p.align
    frame = np.full((240, 320, 3), 60, np.uint8)
    assert proc.process(frame) == [] and proc.crops(frame, np.array([[100, 60, 80, 80]])).shape == (1, 48, 48)
    with pytest.raises(TypeError, match="face_detector.*from_recognizer"):
        VideoProcessor(clf, None)


def test_a_video_frame_and_the_same_photo_give_the_same_crop(image_model):
    """One crop function: the video pipeline (detect, then VideoProcessor.crops with the eye angle) cuts the
    astronaut's face from a frame exactly as the photo path (face_crops) cuts it from the same image."""
    from skimage.data import astronaut

    from emolens.faces import create_detector, eye_angle, face_crops
    from emolens.runtime import load_classifier
    from emolens.video import VideoProcessor

    img = np.ascontiguousarray(astronaut()[:, :, ::-1])
    det = create_detector("auto")
    found = sorted(det.detect_faces(img), key=lambda d: -d.box[2] * d.box[3])  # largest first, as video does
    assert found and all(d.landmarks for d in found)
    proc = VideoProcessor(load_classifier(str(image_model), "torch"), det, smooth="none")
    boxes, angles = proc.detect(img)
    np.testing.assert_allclose(angles, [eye_angle(d.landmarks) for d in found])
    video = proc.crops(img, boxes, angles)
    photo = face_crops(img, found, det.margin, align=True)
    assert video.shape == photo.shape == (len(found), 48, 48)
    np.testing.assert_array_equal(video, photo)
