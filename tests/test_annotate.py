"""Annotated images stay readable with many faces: probability panels never cover a face, a label or another
panel and stay inside the image, labels are never clipped, images without a face carry a mark; `predict`
has --no-bars, tables fit 80 columns, run folders never collide; the Python API's top_emotion and
to_dataframe."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
skdata = pytest.importorskip("skimage.data")

from emolens.cli import main  # noqa: E402
from emolens.predict import (  # noqa: E402
    EmotionRecognizer,
    Face,
    annotation_layout,
    draw_faces,
    new_run_folder,
    to_dataframe,
)
from emolens.preprocess import CLASSES  # noqa: E402


def _face(box, emotion="neutral", conf=0.5) -> Face:
    probs = dict.fromkeys(CLASSES, (1 - conf) / (len(CLASSES) - 1))
    probs[emotion] = conf
    return Face(tuple(box), emotion, conf, probs)


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _grid(rows: int, cols: int, tile: tuple[int, int], face: int, offset=(60, 40)) -> list[Face]:
    """One face of side ``face`` per ``tile`` (w, h) of a rows x cols grid, like crops of one photo tiled."""
    return [_face((c * tile[0] + offset[0], r * tile[1] + offset[1], face, face), CLASSES[(r * cols + c) % 7],
                  0.3 + 0.07 * c)
            for r in range(rows) for c in range(cols)]


def _random_faces(seed: int, shape=(600, 800), n=12) -> list[Face]:
    """Non-overlapping random boxes of 40-140 px: a crowd."""
    rng = np.random.default_rng(seed)
    boxes: list[tuple[int, int, int, int]] = []
    while len(boxes) < n:
        s = int(rng.integers(40, 140))
        x, y = int(rng.integers(0, shape[1] - s)), int(rng.integers(0, shape[0] - s))
        if not any(_overlap((x, y, x + s, y + s), (bx, by, bx + bs, by + bs)) for bx, by, bs, _ in boxes):
            boxes.append((x, y, s, s))
    return [_face(b, CLASSES[i % 7], 0.9) for i, b in enumerate(boxes)]


LAYOUTS = {
    "3x3 grid of 240x260 tiles": ((780, 720), _grid(3, 3, (240, 260), 105)),
    "3x3 grid, tight": ((480, 480), _grid(3, 3, (160, 160), 100, (30, 30))),
    "faces on the edges": ((300, 400), [_face((0, 0, 90, 90)), _face((310, 0, 90, 90)), _face((0, 210, 90, 90)),
                                        _face((310, 210, 90, 90), "happy", 1.0)]),
    **{f"crowd {s}": ((600, 800), _random_faces(s)) for s in range(4)},
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_panels_never_cover_a_face_a_label_or_each_other(name):
    shape, faces = LAYOUTS[name]
    height, width = shape
    layout = annotation_layout(faces, CLASSES, shape)
    boxes = [(x, y, x + w, y + h) for x, y, w, h in (f.box for f in faces)]
    panels = [lay.panel for lay in layout if lay.panel is not None]
    for lay in layout:  # labels: whole, inside the image
        x0, y0, x1, y1 = lay.label
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, lay.label
    for i, lay in enumerate(layout):
        if lay.panel is None:
            continue
        p = lay.panel
        assert 0 <= p[0] < p[2] <= width and 0 <= p[1] < p[3] <= height, p
        assert not any(_overlap(p, b) for b in boxes), f"panel {i} covers a face"
        assert not any(_overlap(p, other.label) for other in layout), f"panel {i} covers a label"
        assert sum(_overlap(p, q) for q in panels) == 1, f"panel {i} covers another panel"  # itself only
    if name.startswith("3x3 grid of"):  # room beside every face there: every face keeps its panel
        assert len(panels) == 9
    assert annotation_layout(faces, CLASSES, shape, bars=False)[0].panel is None


def test_labels_of_neighbours_do_not_cover_faces():
    shape, faces = LAYOUTS["3x3 grid of 240x260 tiles"]
    layout = annotation_layout(faces, CLASSES, shape)
    boxes = [(x, y, x + w, y + h) for x, y, w, h in (f.box for f in faces)]
    for i, lay in enumerate(layout):
        assert not any(_overlap(lay.label, b) for j, b in enumerate(boxes) if j != i)
        assert not any(_overlap(lay.label, other.label) for j, other in enumerate(layout) if j != i)


def test_tiny_image_label_is_shrunk_not_clipped():
    (lay,) = annotation_layout([_face((2, 2, 40, 40), "surprise", 1.0)], CLASSES, (48, 60))
    assert 0 <= lay.label[0] and lay.label[2] <= 60 and lay.panel is None  # no room for a panel at all


def test_draw_bars_only_inside_the_layout():
    shape, faces = LAYOUTS["3x3 grid of 240x260 tiles"]
    img = np.full((*shape, 3), 255, np.uint8)
    with_bars = draw_faces(img.copy(), faces, CLASSES, bars=True)
    without = draw_faces(img.copy(), faces, CLASSES, bars=False)
    changed = (with_bars != without).any(axis=2)
    mask = np.zeros(shape, bool)
    for lay in annotation_layout(faces, CLASSES, shape):
        x0, y0, x1, y1 = lay.panel
        mask[y0:y1, x0:x1] = True
    assert changed.any() and not changed[~mask].any()  # the panels are all that --no-bars leaves out


@pytest.fixture(scope="module")
def rec():
    return EmotionRecognizer()


def test_no_face_mark_and_top_emotion(rec):
    wall = np.full((240, 320, 3), 127, np.uint8)
    assert rec.predict(wall) == [] and rec.top_emotion(wall) == (None, None)
    marked = rec.draw(wall, [])
    assert (marked[:20, :60] != 127).any() and (marked[100:, :] == 127).all()  # a banner at the top left only
    assert (rec.draw(wall, [], mark_empty=False) == wall).all()
    astro = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    emotion, conf = rec.top_emotion(astro)
    assert emotion in CLASSES and 0 < conf <= 1


def test_to_dataframe_rows_and_columns(rec):
    pd = pytest.importorskip("pandas")
    astro = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    wall = np.full((240, 320, 3), 127, np.uint8)
    results = rec.predict_batch([astro, wall])
    df = to_dataframe(zip(["astro.png", "wall.png"], results, strict=True))
    assert isinstance(df, pd.DataFrame) and len(df) == len(results[0]) >= 1
    assert list(df.columns[:8]) == ["path", "face", "x", "y", "w", "h", "emotion", "confidence"]
    assert [c for c in df.columns if c.startswith("p_")] == [f"p_{c}" for c in CLASSES]
    assert set(df["path"]) == {"astro.png"}
    np.testing.assert_allclose(df[[f"p_{c}" for c in CLASSES]].sum(axis=1), 1.0, atol=1e-4)
    assert list(to_dataframe(results)["path"]) == [0] * len(results[0])  # plain lists: the image's index
    assert len(to_dataframe([])) == 0


def test_to_dataframe_without_pandas_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        to_dataframe([])


def test_table_fits_80_columns():
    from rich.console import Console

    from emolens.cli.photos import _print_faces

    faces = [_face((1024, 2048, 1536, 1536), "neutral", 1.0), _face((12, 3000, 999, 999), "surprise", 0.394)]
    console = Console(width=80, record=True, force_terminal=False)
    _print_faces(console, "big.jpg", faces, CLASSES, (4000, 5000))
    text = console.export_text()
    assert "…" not in text and all(len(line) <= 80 for line in text.splitlines())
    rows = [line.split() for line in text.splitlines() if line.split()[:1] in (["0"], ["1"])]
    assert rows[0][:4] == ["0", "1024,2048,1536,1536", "neutral", "100%"] and len(rows[0]) == 4 + len(CLASSES)
    assert rows[1][:4] == ["1", "12,3000,999,999", "surprise", "39%"] and rows[1][-1] == "39"  # no value cut
    assert text.split("\n")[2].split()[-1] == "sur"  # the last column's head is whole too
    wide = Console(width=120, record=True)
    _print_faces(wide, "big.jpg", faces, CLASSES, (4000, 5000))
    text = wide.export_text()
    assert "100.0%" in text and "39.4" in text  # one decimal where it fits


def test_run_folders_never_collide(tmp_path):
    base = tmp_path / "runs" / "predict" / "20260101-000000"
    made = [new_run_folder(base) for _ in range(3)]
    assert [p.name for p in made] == ["20260101-000000", "20260101-000000-2", "20260101-000000-3"]
    assert all(p.is_dir() for p in made)


def test_two_predict_runs_in_the_same_second(tmp_path, monkeypatch, capsys):
    import time

    astro = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), astro)
    cv2.imwrite(str(photos / "b.png"), np.full((100, 100, 3), 127, np.uint8))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda *a: "20260101-000000")  # both runs in the same second
    assert main(["predict", str(photos)]) == 0
    assert main(["predict", str(photos / "a.png"), str(photos / "b.png")]) == 0
    err = capsys.readouterr().err
    runs = sorted(p.name for p in (tmp_path / "runs" / "predict").iterdir())
    assert runs == ["20260101-000000", "20260101-000000-2"]
    for r in runs:
        assert (tmp_path / "runs" / "predict" / r / "predictions.csv").read_text().count("\n") >= 2
        assert f"runs/predict/{r}/predictions.csv" in err


def test_cli_no_bars_and_no_face_mark(tmp_path, capsys):
    astro = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "astro.png"), astro)
    cv2.imwrite(str(photos / "wall.png"), np.full((240, 320, 3), 127, np.uint8))
    assert main(["predict", str(photos), "--save-dir", str(tmp_path / "bars")]) == 0
    assert main(["predict", str(photos), "--save-dir", str(tmp_path / "plain"), "--no-bars"]) == 0
    bars, plain = (cv2.imread(str(tmp_path / d / "astro.png")) for d in ("bars", "plain"))
    changed = (bars != plain).any(axis=2).sum()
    assert changed > 2000  # the panel
    wall = cv2.imread(str(tmp_path / "plain" / "wall.png"))
    assert (wall[:20, :60] != 127).any() and (wall[100:] == 127).all()  # "no face found" banner


def test_help_says_each_default_once_and_names_values():
    env = {**os.environ, "COLUMNS": "80"}
    for verb in ("predict", "train", "video", "webcam", "evaluate", "serve", "export"):
        text = subprocess.run([sys.executable, "-m", "emolens", verb, "--help"], capture_output=True, text=True,
                              env=env, timeout=60).stdout
        flat = " ".join(text.split())
        assert "(default: None)" not in flat and "(default: )" not in flat, verb
        if verb != "train":  # a config flag's "(default: False)" says what a true/false setting starts as
            assert "(default: False)" not in flat, verb
        assert "VALUE" not in text, verb
        for option in flat.split(" --")[1:]:
            assert option.count("(default:") <= 1, (verb, option)
    text = subprocess.run([sys.executable, "-m", "emolens", "train", "--help"], capture_output=True, text=True,
                          env=env, timeout=60).stdout
    assert "--epochs INT" in text and "--lr FLOAT" in text and "--optimizer {sgd,adamw}" in text
    assert "--amp {true,false}" in text and "--data DATA" in text
    predict_help = subprocess.run([sys.executable, "-m", "emolens", "predict", "--help"], capture_output=True,
                                  text=True, env=env, timeout=60).stdout
    assert "--no-bars" in predict_help and "onnx, torch (default: auto)" in " ".join(predict_help.split())


def test_every_option_with_a_default_shows_it():
    """`serve --help` hid the server's one-view TTA: its help said "default ..." in words, which the formatter
    takes as the default already stated. Each option whose default is a value must show that value."""
    import argparse

    from emolens.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")
            elif action.option_strings and action.default not in (None, False, True, argparse.SUPPRESS, [], ""):
                yield path, parser, action

    missing = []
    for path, parser, action in walk(build_parser(), "emolens"):
        text = " ".join(parser.formatter_class("x")._get_help_string(action).split())
        value = action.default if isinstance(action.default, str) else repr(action.default)
        if "%(default)" not in text and str(action.default) not in text and value not in text:
            missing.append(f"{path} {action.option_strings[0]} (default {action.default!r}): {text}")
    assert not missing, "\n".join(missing)


def test_predict_runtime_default_is_auto():
    from emolens.cli import build_parser

    args = build_parser().parse_args(["predict"])
    assert args.runtime == "auto" and args.no_bars is False
