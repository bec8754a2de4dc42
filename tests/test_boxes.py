"""Bring your own boxes: faces found by the user's own detector, through the Python API, the CLI (--boxes
CSV/JSON) and the HTTP API (``boxes`` in JSON or as a form field); bad boxes are clear errors (4xx)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from emolens.predict import BoxError, EmotionRecognizer, check_boxes, load_boxes_file
from emolens.preprocess import CLASSES

skdata = pytest.importorskip("skimage.data")

FACE = [176, 76, 99, 99]  # the astronaut's face
BAD = {  # box -> words the error must contain
    (-5, 10, 40, 40): "negative",
    (10, 10, 0, 40): "empty",
    (500, 500, 40, 40): "outside",
    (10, 10, 40): "4 numbers",
    (10, "a", 40, 40): "numbers",
}


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(skdata.astronaut()[:, :, ::-1])


@pytest.fixture(scope="module")
def rec() -> EmotionRecognizer:
    return EmotionRecognizer(tta="none")


def test_check_boxes():
    assert check_boxes([(1.0, 2, 3.4, 4)], 10, 10) == [(1, 2, 3, 4)]
    assert check_boxes(np.array([[0, 0, 10, 10]]), 10, 10) == [(0, 0, 10, 10)]
    for box, words in BAD.items():
        with pytest.raises(BoxError, match=words):
            check_boxes([box], 512, 512)
    with pytest.raises(BoxError, match="list of"):
        check_boxes("0,0,10,10", 512, 512)
    with pytest.raises(BoxError, match="finite"):
        check_boxes([(0, 0, float("inf"), 10)], 512, 512)
    with pytest.raises(BoxError, match="finite"):  # an int too large for a float: OverflowError, a 500 once
        check_boxes([(0, 0, 10**400, 10)], 512, 512)


def test_api_classifies_the_boxes_given_in_their_order(rec, astronaut):
    detected = rec.predict(astronaut)
    given = rec.predict(astronaut, boxes=[(0, 0, 60, 60), FACE])
    assert [f.box for f in given] == [(0, 0, 60, 60), tuple(FACE)]  # as given, no detection
    assert given[1].emotion == detected[0].emotion
    assert sum(given[0].probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert rec.predict(astronaut, boxes=[]) == []
    with pytest.raises(BoxError, match="outside the 512x512 image"):
        rec.predict(astronaut, boxes=[(480, 0, 64, 64)])


def _cli(*argv) -> int:
    from emolens.cli import main

    return main([str(a) for a in argv])


def test_cli_boxes_json_and_csv(tmp_path: Path, astronaut, capsys):
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), astronaut)
    as_json = tmp_path / "boxes.json"
    as_json.write_text(json.dumps({"a.png": [FACE, [0, 0, 50, 50]]}))
    assert _cli("predict", img, "--boxes", as_json, "--json", "--tta", "none") == 0
    faces = json.loads(capsys.readouterr().out)["faces"]
    assert [f["box"] for f in faces] == [FACE, [0, 0, 50, 50]]
    as_csv = tmp_path / "boxes.csv"
    as_csv.write_text("path,x,y,w,h\n" + f"{img},{','.join(map(str, FACE))}\n")
    assert _cli("predict", img, "--boxes", as_csv, "--json", "--tta", "none") == 0
    assert [f["box"] for f in json.loads(capsys.readouterr().out)["faces"]] == [FACE]
    assert load_boxes_file(as_csv) == {str(img): [[float(v) for v in FACE]]}


def test_cli_bad_boxes_are_clear_errors(tmp_path: Path, astronaut, capsys):
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), astronaut)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([[500, 500, 40, 40]]))
    assert _cli("predict", img, "--boxes", bad) == 1  # a per-image error, as an unreadable image
    err = capsys.readouterr().err
    assert "outside the 512x512 image" in err and "Traceback" not in err
    for content, name, words in (("{", "x.json", "not valid JSON"), ("a,b\n1,2\n", "x.csv", "columns x, y, w, h"),
                                 ("[]", "x.txt", ".json or .csv")):
        (tmp_path / name).write_text(content)
        assert _cli("predict", img, "--boxes", tmp_path / name) == 2
        assert words in capsys.readouterr().err
    assert _cli("predict", img, "--boxes", tmp_path / "missing.json") == 2
    assert "cannot read the boxes file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def server():
    from emolens.serve import create_app
    from test_serve import LiveServer

    with LiveServer(create_app(EmotionRecognizer(tta="none"))) as s:
        yield s


def test_http_boxes_json_and_multipart(server, astronaut):
    data = cv2.imencode(".png", astronaut)[1].tobytes()
    r = httpx.post(f"{server.url}/v1/predict", json={"image": base64.b64encode(data).decode(), "boxes": [FACE]},
                   timeout=60)
    assert r.status_code == 200, r.text
    (face,) = r.json()["faces"]
    assert face["box"] == FACE and face["emotion"] in CLASSES
    r = httpx.post(f"{server.url}/v1/predict", files={"file": ("a.png", data, "image/png")},
                   data={"boxes": json.dumps([[0, 0, 40, 40], FACE])}, timeout=60)
    assert r.status_code == 200, r.text
    assert [f["box"] for f in r.json()["faces"]] == [[0, 0, 40, 40], FACE]


@pytest.mark.parametrize("boxes", [[[-1, 0, 10, 10]], [[0, 0, 0, 10]], [[500, 500, 40, 40]], [[1, 2, 3]], "x",
                                   [["a", 1, 1, 1]], [[0, 0, 10**400, 10]]])
def test_http_bad_boxes_are_422(server, astronaut, boxes):
    data = cv2.imencode(".png", astronaut)[1].tobytes()
    r = httpx.post(f"{server.url}/v1/predict", json={"image": base64.b64encode(data).decode(), "boxes": boxes},
                   timeout=60)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "bad_boxes"
    r = httpx.post(f"{server.url}/v1/predict", files={"file": ("a.png", data, "image/png")},
                   data={"boxes": "[[1, 2"}, timeout=60)
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_boxes"
