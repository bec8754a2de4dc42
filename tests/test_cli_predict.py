"""`emolens predict` end to end on a folder of real and broken files (predictions.csv rows, annotated images,
exit codes, one-line errors), JSON lines, globs, and `emolens bench predict`, with a random-weight model made
here (and the shipped model when it exists)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
skdata = pytest.importorskip("skimage.data")
pytest.importorskip("torch")

from emolens.cli import main  # noqa: E402
from emolens.preprocess import CLASSES  # noqa: E402
from emolens.runtime import default_model_path  # noqa: E402
from test_predict import make_model_files  # noqa: E402


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    return make_model_files(tmp_path_factory.mktemp("model"))[1]


@pytest.fixture
def photo_folder(tmp_path) -> Path:
    """Two good photos (one in a sub-folder), a photo with no face, a text file named .jpg, a truncated JPEG."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    astro = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(root / "astronaut.png"), astro)
    cv2.imwrite(str(root / "sub" / "astronaut_small.jpg"), cv2.resize(astro, (384, 384)))
    cv2.imwrite(str(root / "wall.png"), np.full((240, 320, 3), 127, np.uint8))
    (root / "notes.jpg").write_text("this is not an image")
    ok, enc = cv2.imencode(".jpg", astro)
    (root / "truncated.jpg").write_bytes(enc.tobytes()[:3000])
    (root / "readme.txt").write_text("ignored: not an image suffix")
    return root


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_folder_run(onnx_model, photo_folder, tmp_path, capsys):
    save = tmp_path / "out"
    code, out, err = _run(["predict", str(photo_folder), "--model", str(onnx_model), "--detector", "haar",
                           "--save-dir", str(save)], capsys)
    assert code == 1  # two files failed, the others were still processed
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert any("notes.jpg" in e and "not an image" in e for e in errors)
    assert any("truncated.jpg" in e and "truncated" in e for e in errors)
    assert "wall.png" in out and "no face found" in out
    assert "astronaut.png" in out and "emotion" in out  # the table header
    assert "3 image(s), 2 face(s), 2 failed" in err
    with open(save / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2  # one row per face
    assert {Path(r["path"]).name for r in rows} == {"astronaut.png", "astronaut_small.jpg"}
    for r in rows:
        probs = [float(r[f"p_{c}"]) for c in CLASSES]
        assert sum(probs) == pytest.approx(1, abs=1e-4) and r["emotion"] in CLASSES
        assert float(r["confidence"]) == pytest.approx(max(probs), abs=1e-6)
        assert int(r["w"]) > 40
    assert sorted(p.name for p in save.iterdir()) == ["astronaut.png", "predictions.csv", "sub__astronaut_small.jpg",
                                                      "wall.png"]
    annotated = cv2.imread(str(save / "astronaut.png"))
    assert annotated.shape == (512, 512, 3)
    assert (annotated != cv2.imread(str(photo_folder / "astronaut.png"))).any()


def test_all_good_and_no_face_exit_0(onnx_model, photo_folder, tmp_path, capsys):
    code, out, err = _run(["predict", str(photo_folder / "wall.png"), "--model", str(onnx_model)], capsys)
    assert code == 0 and "no face found" in out
    code, out, err = _run(["predict", str(photo_folder / "*.png"), "--model", str(onnx_model), "--detector", "haar",
                           "--save-dir", str(tmp_path / "g")], capsys)
    assert code == 0 and "2 image(s), 1 face(s), 0 failed" in err
    assert len(list(csv.DictReader(open(tmp_path / "g" / "predictions.csv")))) == 1


def test_json_lines(onnx_model, photo_folder, capsys):
    code, out, err = _run(["predict", str(photo_folder / "astronaut.png"), str(photo_folder / "missing.png"),
                           "--json", "--model", str(onnx_model), "--detector", "haar", "--tta", "none",
                           "--save-dir", str(photo_folder / "o")], capsys)
    assert code == 1
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2
    assert lines[0]["width"] == 512 and len(lines[0]["faces"]) == 1
    face = lines[0]["faces"][0]
    assert set(face) >= {"box", "emotion", "confidence", "probabilities"}
    assert lines[1]["error"].endswith("no such file") and lines[1]["faces"] == []


def test_no_detect_and_huge_image(onnx_model, tmp_path, capsys):
    from PIL import Image

    crop = tmp_path / "crop.png"
    cv2.imwrite(str(crop), np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8))
    code, out, err = _run(["predict", str(crop), "--no-detect", "--json", "--model", str(onnx_model)], capsys)
    assert code == 0 and json.loads(out)["faces"][0]["box"] == [0, 0, 100, 100]
    huge = tmp_path / "huge.png"
    Image.new("L", (8000, 7000)).save(huge)
    code, out, err = _run(["predict", str(huge), str(crop), "--no-detect", "--model", str(onnx_model)], capsys)
    assert code == 1 and "too large" in err and "56.0 megapixels" in err and "1 image(s), 1 face(s)" in err


def test_usage_errors_exit_2(onnx_model, tmp_path, capsys):
    code, out, err = _run(["predict", "--model", str(tmp_path / "nope.onnx")], capsys)
    assert code == 2 and err.startswith("error:") and "no such model file" in err
    code, out, err = _run(["predict", "--model", str(onnx_model), "--detector", "bogus"], capsys)
    assert code == 2 and "unknown face detector 'bogus'" in err
    code, out, err = _run(["predict", str(tmp_path / "nothing*.jpg"), "--model", str(onnx_model)], capsys)
    assert code == 1 and "no file matches" in err


def test_default_sample_with_the_shipped_model(capsys):
    if not default_model_path("onnx").is_file():
        pytest.skip("the shipped model is not there yet")
    code, out, err = _run(["predict", "--json"], capsys)
    assert code == 0
    (line,) = [json.loads(x) for x in out.splitlines()]
    assert Path(line["path"]).name == "astronaut.jpg"
    assert [f["emotion"] for f in line["faces"]] == ["happy"]


def test_real_process_prints_no_traceback(onnx_model, photo_folder, tmp_path):
    """The installed entry point as a user runs it: a broken file is one line on stderr and exit code 1."""
    r = subprocess.run([sys.executable, "-m", "emolens", "predict", str(photo_folder / "notes.jpg"),
                        str(photo_folder / "wall.png"), "--model", str(onnx_model), "--save-dir", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "not an image" in r.stderr


def test_bench_predict(onnx_model, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EMOLENS_FER2013", str(tmp_path / "absent"))  # calibrate int8 on the sample face: fast
    pt = onnx_model.with_suffix(".pt")
    code, out, err = _run(["bench", "predict", "--model", str(pt), "--min-time", "0.05", "--batch", "8",
                           "--detector", "haar"], capsys)
    assert code == 0, err
    for row in ("| torch fp32 | flip |", "| torch fp32 | none |", "| onnx fp32 | flip |", "| onnx int8 | none |",
                "| haar |", "CPU cores:"):
        assert row in out


def test_detector_quality_benchmark(tmp_path):
    """The default detector keeps the recall and the zero false alarms on face-free photos recorded in the
    README, at every face size."""
    from emolens.bench import FACE_SIZES, bench_detector_quality, format_detector_quality

    (row,) = bench_detector_quality(["blazeface"], data=tmp_path / "no-fer")
    assert row["synthetic_total"] == 100 and row["synthetic_found"] >= 98 and row["synthetic_false"] <= 2
    assert row["by_size"] == {fw: [6, 6] for fw in FACE_SIZES}  # 24 to 300 px wide
    assert row["negative_images"] == 17 and row["negative_false"] == 0
    assert row["fer_total"] == 0 and row["fer_accuracy"] == {}  # no data given: that part is skipped, not faked
    assert row["ms_per_frame"] > 0 and row["ms_per_hd_frame"] > 0
    table = format_detector_quality([row])
    assert "| blazeface |" in table and "6/6 / 6/6" in table


def test_bench_predict_reports_the_out_of_the_box_speed():
    """The `default (...)` line times exactly what EmotionRecognizer() runs: the shipped model, its runtime, its TTA."""
    from emolens.bench import bench_default, format_predict
    from emolens.bench.predict import PredictBench
    from emolens.predict import EmotionRecognizer

    d = bench_default(batch=8, min_time=0.05)
    rec = EmotionRecognizer(detect=False)
    assert (d.runtime, d.tta) == (rec.classifier.runtime, rec.tta) and d.faces_per_s > 0 and d.batch == 8
    assert d.to_dict()["faces_per_s"] == d["faces_per_s"] == d.faces_per_s
    text = format_predict(PredictBench([], [], {"cpus": 2}, 8, "default", d))
    assert f"default ({d.runtime} {d.precision}, tta {d.tta}): " in text and "faces/s at batch 8" in text
