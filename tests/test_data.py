"""emolens.data: every loader form on tiny data made in the test, the CSV label order, aliases, every kind of
bad input (raised and skipped), the cache, preprocess() on any image, `emolens data stats` end to end, and the
real FER2013 zip (skipped when absent)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

import emolens.data as data
from conftest import face, make_kaggle_tree
from emolens.cli import main
from emolens.data import (
    CSV_LABELS,
    SPLITS,
    DataError,
    decode_image,
    load_dataset,
    resolve_class,
)
from emolens.datastats import dataset_stats, find_duplicates
from emolens.preprocess import CLASSES, preprocess

_USER_CACHE = os.environ.get("EMOLENS_CACHE")


@pytest.fixture(autouse=True)
def _cache(isolated_cache) -> Path:
    return isolated_cache


def _counts(ds, split: str) -> dict[str, int]:
    return ds.counts().get(split, {})


def _zip_folder(folder: Path, target: Path, top: str = "") -> Path:
    with zipfile.ZipFile(target, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, f"{top}{p.relative_to(folder).as_posix()}")
    return target


def _pixels(img: np.ndarray) -> str:
    return " ".join(str(int(v)) for v in img.ravel())


def _write_csv(path: Path, rows: list[list[str]], header: tuple[str, ...] = ("emotion", "pixels", "Usage")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _error(fn, *args, **kw) -> str:
    with pytest.raises(DataError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------------------------------
# loader forms


def test_kaggle_folder_splits_from_file_name_prefixes(synthetic_kaggle_tree):
    ds = load_dataset(synthetic_kaggle_tree)
    assert len(ds) == 28 and ds.images.shape == (28, 48, 48) and ds.images.dtype == np.uint8
    assert _counts(ds, "train") == dict.fromkeys(CLASSES, 2)
    assert _counts(ds, "public") == dict.fromkeys(CLASSES, 1)
    assert _counts(ds, "private") == dict.fromkeys(CLASSES, 1)
    # test/ holds both PublicTest_ and PrivateTest_ files: the prefix decides, not the folder
    assert {s.split("/")[0] for s in ds.split("public").sources} == {"test"}
    i = ds.sources.index("train/happy/Training_6.png")
    assert CLASSES[ds.labels[i]] == "happy" and SPLITS[ds.splits[i]] == "train"
    np.testing.assert_array_equal(ds.images[i], face(6))


def test_split_accessor_aliases(synthetic_kaggle_tree):
    ds = load_dataset(synthetic_kaggle_tree)
    assert len(ds.split("val")) == len(ds.split("public")) == len(ds.split("PublicTest")) == 7
    assert len(ds.split("test")) == len(ds.split("private")) == 7
    assert len(ds.split("training")) == 14 and len(ds.split("all")) == 28
    assert "unknown split 'dev'" in _error(ds.split, "dev")


def test_kaggle_zip_read_without_extracting_equals_the_folder(synthetic_kaggle_tree, tmp_path):
    zpath = _zip_folder(synthetic_kaggle_tree, tmp_path / "fer2013.zip")
    with zipfile.ZipFile(zpath, "a") as zf:  # what macOS and Finder add: must be ignored
        zf.writestr("__MACOSX/train/happy/._Training_6.png", b"junk")
        zf.writestr("train/.DS_Store", b"junk")
    folder, zipped = load_dataset(synthetic_kaggle_tree), load_dataset(zpath)
    np.testing.assert_array_equal(zipped.images, folder.images)
    np.testing.assert_array_equal(zipped.labels, folder.labels)
    np.testing.assert_array_equal(zipped.splits, folder.splits)
    assert zipped.sources == folder.sources


def test_zip_with_a_top_folder(synthetic_kaggle_tree, tmp_path):
    zpath = _zip_folder(synthetic_kaggle_tree, tmp_path / "archive.zip", top="fer2013/")
    ds = load_dataset(zpath)
    assert len(ds.split("train")) == 14 and len(ds.split("public")) == 7 and len(ds.split("private")) == 7


@pytest.mark.parametrize("val_name", ["val", "validation"])
def test_folder_without_prefixes_takes_the_split_from_its_folders(tmp_path, val_name):
    root = make_kaggle_tree(tmp_path / "d", {"train": 2, "public": 1, "private": 3}, prefixes=False)
    if val_name != "val":
        (root / "val").rename(root / val_name)
    ds = load_dataset(root)
    assert _counts(ds, "train") == dict.fromkeys(CLASSES, 2)
    assert _counts(ds, "public") == dict.fromkeys(CLASSES, 1)
    assert _counts(ds, "private") == dict.fromkeys(CLASSES, 3)


def test_class_folders_of_any_size_and_colour(tmp_path):
    root = tmp_path / "faces"
    for c in ("happy", "sad"):
        (root / c).mkdir(parents=True)
    color = face(1, (120, 90), color=True)
    big_gray = face(2, 200)
    small = face(3, 20)
    rgba = np.dstack([face(4, 60, color=True), np.full((60, 60), 255, np.uint8)])
    deep = (face(5, 64).astype(np.uint16) * 257)  # 16-bit PNG
    cv2.imwrite(str(root / "happy" / "color.png"), color)
    cv2.imwrite(str(root / "happy" / "big.bmp"), big_gray)
    cv2.imwrite(str(root / "sad" / "small.png"), small)
    cv2.imwrite(str(root / "sad" / "rgba.png"), rgba)
    cv2.imwrite(str(root / "sad" / "deep.png"), deep)
    ds = load_dataset(root)
    assert ds.images.shape == (5, 48, 48) and set(ds.splits.tolist()) == {SPLITS.index("train")}
    by_name = dict(zip(ds.sources, ds.images, strict=True))
    np.testing.assert_array_equal(by_name["happy/color.png"], preprocess(color, "bgr"))
    np.testing.assert_array_equal(by_name["happy/big.bmp"], preprocess(big_gray))
    np.testing.assert_array_equal(by_name["sad/small.png"], preprocess(small))
    np.testing.assert_array_equal(by_name["sad/rgba.png"], preprocess(rgba, "bgr"))
    np.testing.assert_array_equal(by_name["sad/deep.png"], preprocess(face(5, 64)))
    assert [CLASSES[i] for i in ds.labels] == ["happy", "happy", "sad", "sad", "sad"]


def test_class_folder_named_like_a_split_gets_that_split(tmp_path):
    root = tmp_path / "val"
    (root / "fear").mkdir(parents=True)
    cv2.imwrite(str(root / "fear" / "a.png"), face(0))
    assert SPLITS[load_dataset(root).splits[0]] == "public"


def test_csv_label_order_maps_explicitly_to_alphabetical_classes(tmp_path):
    # fer2013.csv: 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral
    assert CSV_LABELS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    rows = [[str(e), _pixels(face(e)), "Training"] for e in range(7)]
    ds = load_dataset(_write_csv(tmp_path / "fer2013.csv", rows))
    names = [CLASSES[i] for i in ds.labels]
    assert names == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert names[6] == "neutral" and names[4] == "sad" and names[5] == "surprise"
    assert CLASSES.index("neutral") == 4 and ds.labels[4] == CLASSES.index("sad") == 5
    for e in range(7):
        np.testing.assert_array_equal(ds.images[e], face(e))


def test_csv_usage_gives_the_split(tmp_path):
    rows = [["3", _pixels(face(0)), "Training"], ["0", _pixels(face(1)), "PublicTest"],
            ["6", _pixels(face(2)), "PrivateTest"], ["6", _pixels(face(3)), "PrivateTest"]]
    ds = load_dataset(_write_csv(tmp_path / "fer2013.csv", rows))
    assert [SPLITS[s] for s in ds.splits] == ["train", "public", "private", "private"]
    assert ds.sources == ["line 2", "line 3", "line 4", "line 5"]


def test_csv_without_usage_is_all_train_and_header_spacing_and_bom_are_accepted(tmp_path):
    path = tmp_path / "icml_face_data.csv"
    path.write_text("\ufeffemotion, pixels\n" + f"1,{_pixels(face(0))}\n\n5,{_pixels(face(1))}\n")
    ds = load_dataset(path)
    assert [CLASSES[i] for i in ds.labels] == ["disgust", "surprise"] and set(ds.splits.tolist()) == {0}


def test_csv_inside_a_zip_and_inside_a_folder(tmp_path):
    rows = [["4", _pixels(face(0)), "Training"], ["2", _pixels(face(1)), "PublicTest"]]
    folder = tmp_path / "kaggle"
    folder.mkdir()
    _write_csv(folder / "fer2013.csv", rows)
    (folder / "README.txt").write_text("not data")
    zpath = _zip_folder(folder, tmp_path / "fer2013.zip", top="fer2013/")
    for src in (folder, zpath):
        ds = load_dataset(src)
        assert [CLASSES[i] for i in ds.labels] == ["sad", "fear"]
        assert [SPLITS[s] for s in ds.splits] == ["train", "public"]


def test_several_csv_files_without_fer2013_csv_is_an_error(tmp_path):
    folder = tmp_path / "csvs"
    folder.mkdir()
    for name in ("a.csv", "b.csv"):
        _write_csv(folder / name, [["0", _pixels(face(0)), "Training"]])
    assert "several CSV files" in _error(load_dataset, folder)


# ----------------------------------------------------------------------------------------------------
# class names


@pytest.mark.parametrize("alias,cls", [
    ("anger", "angry"), ("Angry", "angry"), ("disgusted", "disgust"), ("fearful", "fear"), ("scared", "fear"),
    ("happiness", "happy"), ("HAPPY", "happy"), ("sadness", "sad"), ("surprised", "surprise"),
    ("neutral", "neutral"), ("neutrality", "neutral")])
def test_class_aliases(alias, cls):
    assert CLASSES[resolve_class(alias)] == cls


def test_alias_folders_load(tmp_path):
    root = tmp_path / "aliases"
    for i, name in enumerate(("anger", "disgusted", "fearful", "happiness", "neutral", "sadness", "surprised")):
        (root / name).mkdir(parents=True)
        cv2.imwrite(str(root / name / f"{i}.png"), face(i))
    ds = load_dataset(root)
    assert _counts(ds, "train") == dict.fromkeys(CLASSES, 1)


def test_unknown_class_folder_lists_the_expected_names(synthetic_kaggle_tree):
    bad = synthetic_kaggle_tree / "train" / "bored"
    bad.mkdir()
    cv2.imwrite(str(bad / "Training_x.png"), face(99))
    msg = _error(load_dataset, synthetic_kaggle_tree)
    assert "unknown class folder 'bored'" in msg and "train/bored/Training_x.png" in msg
    assert all(c in msg for c in CLASSES)


def test_contempt_folder_explains_it_is_not_a_fer_class(tmp_path):
    (tmp_path / "d" / "contempt").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "d" / "contempt" / "a.png"), face(0))
    assert "contempt is not one of the 7 FER2013 classes" in _error(load_dataset, tmp_path / "d")


def test_images_directly_in_a_split_folder(tmp_path):
    (tmp_path / "d" / "train").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "d" / "train" / "a.png"), face(0))
    msg = _error(load_dataset, tmp_path / "d")
    assert "unknown class folder 'train'" in msg and "train/happy/*.jpg" in msg


def test_image_outside_any_class_folder(tmp_path):
    (tmp_path / "d").mkdir()
    cv2.imwrite(str(tmp_path / "d" / "a.png"), face(0))
    assert "'a.png' is not inside a <class>/ folder" in _error(load_dataset, tmp_path / "d")


# ----------------------------------------------------------------------------------------------------
# bad input


def test_missing_path(tmp_path):
    msg = _error(load_dataset, tmp_path / "nope.zip")
    assert str(tmp_path / "nope.zip") in msg and "no such file or folder" in msg


def test_no_data_given_names_the_option_and_the_variable(tmp_path, monkeypatch, capsys):
    """`emolens evaluate` on a user's machine (no data, no $EMOLENS_FER2013, no development checkout beside it)
    once said only that a development path was missing."""
    import emolens.data
    from emolens.cli import main

    monkeypatch.delenv("EMOLENS_FER2013", raising=False)
    monkeypatch.setattr(emolens.data, "default_data_path", lambda: emolens.data.FALLBACK_DATA)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate"]) != 0
    err = capsys.readouterr().err
    assert "--data" in err and "EMOLENS_FER2013" in err and "Traceback" not in err, err


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "folder is empty" in _error(load_dataset, tmp_path / "empty")


def test_folder_without_images(tmp_path):
    (tmp_path / "docs" / "happy").mkdir(parents=True)
    (tmp_path / "docs" / "happy" / "notes.txt").write_text("hello")
    assert "no images and no .csv" in _error(load_dataset, tmp_path / "docs")


@pytest.mark.parametrize("name", ["data.txt", "fer2013.tar.gz", "photo.jpg"])
def test_unknown_layout(tmp_path, name):
    (tmp_path / name).write_bytes(b"something")
    assert "unknown data layout" in _error(load_dataset, tmp_path / name)


@pytest.mark.parametrize("name", ["fer2013.zip", "fer2013.csv"])
def test_zero_byte_source(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    assert f"{tmp_path / name}: empty file (0 bytes)" == _error(load_dataset, tmp_path / name)


def test_not_a_zip(tmp_path):
    (tmp_path / "fer2013.zip").write_text("this is text, not a zip archive")
    assert "not a valid zip file" in _error(load_dataset, tmp_path / "fer2013.zip")


def test_truncated_zip(synthetic_kaggle_tree, tmp_path):
    zpath = _zip_folder(synthetic_kaggle_tree, tmp_path / "fer2013.zip")
    zpath.write_bytes(zpath.read_bytes()[: zpath.stat().st_size // 2])  # a download cut short
    msg = _error(load_dataset, zpath)
    assert msg.startswith(f"{zpath}: not a valid zip file")


def test_zip_without_data(tmp_path):
    with zipfile.ZipFile(tmp_path / "x.zip", "w") as zf:
        zf.writestr("readme.md", "hi")
    assert "no images in <class>/ folders and no fer2013.csv" in _error(load_dataset, tmp_path / "x.zip")


def test_corrupt_member_inside_a_zip(synthetic_kaggle_tree, tmp_path):
    zpath = tmp_path / "fer.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train/happy/Training_1.png", cv2.imencode(".png", face(1))[1].tobytes())
        zf.writestr("train/sad/Training_2.png", cv2.imencode(".png", face(2))[1].tobytes())
    raw = bytearray(zpath.read_bytes())
    with zipfile.ZipFile(zpath) as zf:
        info = zf.getinfo("train/sad/Training_2.png")
    start = info.header_offset + 30 + len(info.filename)  # local header is 30 bytes + name
    raw[start + 20:start + 40] = bytes(20)  # damage the compressed stream: CRC or inflate fails
    zpath.write_bytes(bytes(raw))
    msg = _error(load_dataset, zpath)
    assert f"{zpath}:train/sad/Training_2.png" in msg
    ds = load_dataset(zpath, skip_bad=True)
    assert len(ds) == 1 and len(ds.skipped) == 1


_GOOD_ROW = ["3", _pixels(face(0)), "Training"]
_BAD_ROWS = {
    "too few fields": (["3", _pixels(face(1))], "expected 3 fields (emotion, pixels, Usage), got 2"),
    "too many fields": (["3", _pixels(face(1)), "Training", "x"], "expected 3 fields"),
    "emotion not an integer": (["happy", _pixels(face(1)), "Training"], "emotion 'happy' is not an integer 0..6"),
    "emotion a float": (["3.0", _pixels(face(1)), "Training"], "emotion '3.0' is not an integer"),
    "emotion too large": (["7", _pixels(face(1)), "Training"], "emotion 7 is out of range 0..6"),
    "emotion negative": (["-1", _pixels(face(1)), "Training"], "emotion -1 is out of range 0..6"),
    "too few pixels": (["3", " ".join(["0"] * 2303), "Training"], "expected 2304 pixels (48x48), got 2303"),
    "too many pixels": (["3", " ".join(["0"] * 2305), "Training"], "expected 2304 pixels (48x48), got 2305"),
    "no pixels": (["3", "", "Training"], "got 0"),
    "pixel too large": (["3", " ".join(["256"] + ["0"] * 2303), "Training"], "pixel value 256 is out of range"),
    "pixel negative": (["3", " ".join(["-2"] + ["0"] * 2303), "Training"], "pixel value -2 is out of range"),
    "pixel not an integer": (["3", " ".join(["1.5"] + ["0"] * 2303), "Training"], "space-separated integers"),
    "pixel a word": (["3", " ".join(["0"] * 2303 + ["x"]), "Training"], "space-separated integers"),
    "pixel overflows": (["3", " ".join(["9" * 30] + ["0"] * 2303), "Training"], "is out of range 0..255"),
    "pixels comma-separated": (["3", ",".join(["0"] * 2304), "Training"], "space-separated integers"),
    "unknown usage": (["3", _pixels(face(1)), "Holdout"], "Usage 'Holdout' is not Training"),
}


@pytest.mark.parametrize("case", list(_BAD_ROWS))
def test_csv_malformed_row(tmp_path, case):
    row, expected = _BAD_ROWS[case]
    path = _write_csv(tmp_path / "fer2013.csv", [_GOOD_ROW, row, _GOOD_ROW])
    msg = _error(load_dataset, path)
    assert msg.startswith(f"{path} line 3: ") and expected in msg
    ds = load_dataset(path, skip_bad=True)
    assert len(ds) == 2 and ds.sources == ["line 2", "line 4"]
    assert len(ds.skipped) == 1 and expected in ds.skipped[0]


def test_csv_header_without_required_columns(tmp_path):
    path = _write_csv(tmp_path / "x.csv", [["3", "1 2 3"]], header=("label", "data"))
    assert "header must have 'emotion' and 'pixels'" in _error(load_dataset, path)


def test_csv_without_a_header_names_its_first_row_briefly(tmp_path):
    """A fer2013.csv without its header: the first row (2304 pixel values) is shown shortened, not as 8 KB."""
    pixels = " ".join(["100"] * 48 * 48)
    path = _write_csv(tmp_path / "x.csv", [["3", pixels, "Training"]], header=("0", pixels, "Training"))
    msg = _error(load_dataset, path)
    assert "header must have 'emotion' and 'pixels'" in msg and "'100 100" in msg and len(msg) < 300


def test_csv_with_only_a_header(tmp_path):
    assert "no valid rows" in _error(load_dataset, _write_csv(tmp_path / "fer2013.csv", []))


def test_csv_all_rows_bad_with_skip_bad(tmp_path):
    path = _write_csv(tmp_path / "fer2013.csv", [["9", "1", "Training"]])
    assert "no valid rows (first: " in _error(load_dataset, path, skip_bad=True)


def test_csv_that_is_not_text(tmp_path):
    path = tmp_path / "fer2013.csv"
    path.write_bytes(b"emotion,pixels\n3,\xff\xfe\x00 broken\n")
    msg = _error(load_dataset, path)
    assert str(path) in msg and "not a readable CSV" in msg


def _bad_image_folder(root: Path) -> dict[str, str]:
    """A <class>/ folder with 2 good images and one of each bad kind; returns {file: expected message part}."""
    (root / "happy").mkdir(parents=True)
    (root / "sad").mkdir()
    cv2.imwrite(str(root / "happy" / "good1.png"), face(1))
    cv2.imwrite(str(root / "sad" / "good2.jpg"), face(2))
    jpg = cv2.imencode(".jpg", face(3))[1].tobytes()
    png = cv2.imencode(".png", face(4))[1].tobytes()
    (root / "happy" / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    (root / "happy" / "no_end.jpg").write_bytes(jpg[:-2])
    (root / "happy" / "cut.png").write_bytes(png[: len(png) // 2])
    (root / "sad" / "text.jpg").write_text("this is not an image")
    (root / "sad" / "empty.png").write_bytes(b"")
    return {"happy/cut.jpg": "truncated", "happy/no_end.jpg": "truncated JPEG", "happy/cut.png": "corrupt PNG",
            "sad/text.jpg": "not an image file", "sad/empty.png": "empty file (0 bytes)"}


def test_every_bad_image_is_named_and_skippable(tmp_path, capfd):
    root = tmp_path / "imgs"
    bad = _bad_image_folder(root)
    for name, expected in bad.items():
        sub = tmp_path / f"one_{name.replace('/', '_')}"
        (sub / name.split("/")[0]).mkdir(parents=True)
        shutil.copy(root / name, sub / name)
        msg = _error(load_dataset, sub)
        assert msg.startswith(f"{sub}/{name}: ") and expected in msg, msg
    ds = load_dataset(root, skip_bad=True)
    assert len(ds) == 2 and sorted(ds.sources) == ["happy/good1.png", "sad/good2.jpg"]
    assert len(ds.skipped) == len(bad)
    for name, expected in bad.items():
        assert any(s.startswith(f"{root}/{name}: ") and expected in s for s in ds.skipped), name
    err = capfd.readouterr().err
    assert "WARN" not in err and "libpng" not in err  # OpenCV's own chatter is silenced


def test_bad_images_inside_a_zip(tmp_path):
    root = tmp_path / "imgs"
    bad = _bad_image_folder(root)
    zpath = _zip_folder(root, tmp_path / "imgs.zip")
    assert f"{zpath}:happy/cut.jpg: truncated" in _error(load_dataset, zpath)
    ds = load_dataset(zpath, skip_bad=True)
    assert len(ds) == 2 and len(ds.skipped) == len(bad)


def test_all_images_bad_with_skip_bad(tmp_path):
    (tmp_path / "d" / "happy").mkdir(parents=True)
    (tmp_path / "d" / "happy" / "a.png").write_bytes(b"")
    assert "none of the 1 images is readable" in _error(load_dataset, tmp_path / "d", skip_bad=True)


def test_decode_image_messages():
    assert _error(decode_image, b"", "x.png") == "x.png: empty file (0 bytes)"
    assert "x.jpg: not an image file (5 bytes starting b'hello'" in _error(decode_image, b"hello", "x.jpg")
    assert decode_image(cv2.imencode(".png", face(0, 96))[1].tobytes(), "ok.png").shape == (48, 48)


# ----------------------------------------------------------------------------------------------------
# cache


def _explode(*args, **kw):
    raise AssertionError("decoded although the cache should have answered")


def test_second_load_comes_from_the_cache_without_decoding(synthetic_kaggle_tree, monkeypatch, isolated_cache):
    first = load_dataset(synthetic_kaggle_tree)
    assert not first.cached and len(list(isolated_cache.glob("dataset-*.npz"))) == 1
    monkeypatch.setattr(data, "decode_image", _explode)
    second = load_dataset(synthetic_kaggle_tree)
    assert second.cached
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    np.testing.assert_array_equal(second.splits, first.splits)
    assert second.sources == first.sources
    assert not list(isolated_cache.glob("*.tmp"))  # the temp file was renamed, not left behind


def test_csv_load_is_cached(tmp_path, monkeypatch):
    path = _write_csv(tmp_path / "fer2013.csv", [_GOOD_ROW])
    load_dataset(path)
    monkeypatch.setattr(data, "_load_csv_stream", _explode)
    assert load_dataset(path).cached


def test_cache_is_keyed_on_content(synthetic_kaggle_tree, monkeypatch):
    load_dataset(synthetic_kaggle_tree)
    target = synthetic_kaggle_tree / "train" / "happy" / "Training_6.png"
    cv2.imwrite(str(target), face(500))
    calls = []
    real = data.decode_image
    monkeypatch.setattr(data, "decode_image", lambda b, n: calls.append(n) or real(b, n))
    ds = load_dataset(synthetic_kaggle_tree)
    assert not ds.cached and len(calls) == 28
    np.testing.assert_array_equal(ds.images[ds.sources.index("train/happy/Training_6.png")], face(500))


def test_changed_zip_or_csv_is_decoded_again(tmp_path):
    path = _write_csv(tmp_path / "fer2013.csv", [_GOOD_ROW])
    assert len(load_dataset(path)) == 1
    _write_csv(path, [_GOOD_ROW, ["6", _pixels(face(9)), "PublicTest"]])
    ds = load_dataset(path)
    assert not ds.cached and len(ds) == 2


def test_skip_bad_has_its_own_cache_entry(tmp_path):
    root = tmp_path / "imgs"
    _bad_image_folder(root)
    assert len(load_dataset(root, skip_bad=True).skipped) == 5
    again = load_dataset(root, skip_bad=True)
    assert again.cached and len(again.skipped) == 5
    assert "truncated" in _error(load_dataset, root)  # the strict load is not answered by the lenient cache


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong arrays"])
def test_corrupt_cache_file_is_rebuilt(synthetic_kaggle_tree, isolated_cache, damage):
    good = load_dataset(synthetic_kaggle_tree)
    (target,) = isolated_cache.glob("dataset-*.npz")
    if damage == "garbage":
        target.write_bytes(b"not a cache file")
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:1000])
    else:
        np.savez(target, images=np.zeros((3, 10, 10), np.uint8), labels=np.zeros(3, np.int64))
    rebuilt = load_dataset(synthetic_kaggle_tree)
    assert not rebuilt.cached
    np.testing.assert_array_equal(rebuilt.images, good.images)
    assert load_dataset(synthetic_kaggle_tree).cached  # and the rebuilt file is good again


def test_failed_cache_write_leaves_nothing_and_still_returns_the_data(synthetic_kaggle_tree, monkeypatch,
                                                                     isolated_cache):
    def disk_full(f, **arrays):
        f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data.np, "savez", disk_full)
    ds = load_dataset(synthetic_kaggle_tree)
    assert len(ds) == 28
    assert list(isolated_cache.iterdir()) == []


def test_no_cache_writes_nothing(synthetic_kaggle_tree, isolated_cache):
    load_dataset(synthetic_kaggle_tree, cache=False)
    assert not isolated_cache.exists() or list(isolated_cache.iterdir()) == []


# ----------------------------------------------------------------------------------------------------
# preprocess: the one path every image takes


def test_preprocess_any_image_to_48x48_gray():
    gray48 = face(0)
    assert preprocess(gray48) is not None and np.array_equal(preprocess(gray48), gray48)  # unchanged
    for img in (face(1, (300, 200), color=True), face(2, 17), face(3, (48, 48)), face(4, 48)[:, :, None],
                np.dstack([face(5, 64, color=True), face(6, 64)])):
        out = preprocess(img)
        assert out.shape == (48, 48) and out.dtype == np.uint8
    red_bgr = np.zeros((10, 10, 3), np.uint8)
    red_bgr[..., 2] = 255
    assert int(preprocess(red_bgr, "bgr")[0, 0]) == 76  # 0.299 * 255
    assert int(preprocess(red_bgr, "rgb")[0, 0]) == 29  # the same array read as blue: 0.114 * 255
    as_float01 = preprocess(face(0).astype(np.float32) / 255.0)
    as_float255 = preprocess(face(0).astype(np.float64))
    assert np.abs(as_float01.astype(int) - face(0)).max() <= 1
    np.testing.assert_array_equal(as_float255, face(0))
    with pytest.raises(ValueError):
        preprocess(np.zeros((0, 5), np.uint8))


# ----------------------------------------------------------------------------------------------------
# duplicates and `emolens data stats`


def test_find_duplicates_groups_identical_images():
    imgs = np.stack([face(0), face(1), face(0), face(2), face(1), face(0)])
    groups = find_duplicates(imgs)
    assert [g.tolist() for g in groups] == [[0, 2, 5], [1, 4]]
    assert find_duplicates(np.stack([face(i) for i in range(5)])) == []


def _tree_with_duplicates(root: Path) -> Path:
    """14 train / 7 public / 7 private, plus: a train image copied into public (cross-split), a train image
    copied into train under another class (within train, labels differ) and two blank images in train."""
    make_kaggle_tree(root)
    shutil.copy(root / "train" / "angry" / "Training_0.png", root / "test" / "angry" / "PublicTest_dup.png")
    shutil.copy(root / "train" / "disgust" / "Training_2.png", root / "train" / "fear" / "Training_dup.png")
    for i in range(2):
        cv2.imwrite(str(root / "train" / "neutral" / f"Training_blank{i}.png"), np.zeros((48, 48), np.uint8))
    return root


def test_cli_data_stats_end_to_end(tmp_path, capsys):
    from PIL import Image

    root = _tree_with_duplicates(tmp_path / "tiny")
    out = tmp_path / "stats"
    assert main(["data", "stats", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "total" in printed and "exact-pixel duplicates: 3 groups" in printed
    assert "across train and public: 1 distinct image in both (" in printed

    s = json.loads((out / "stats.json").read_text())
    assert s["images"] == 32
    assert s["splits"]["train"]["total"] == 17 and s["splits"]["public"]["total"] == 8
    assert s["splits"]["private"]["total"] == 7 and s["splits"]["all"]["total"] == 32
    tr = s["splits"]["train"]["classes"]
    assert tr["neutral"]["count"] == 4 and tr["fear"]["count"] == 3 and tr["happy"]["count"] == 2
    assert tr["neutral"]["percent"] == pytest.approx(100 * 4 / 17, abs=0.01)
    assert s["splits"]["public"]["classes"]["angry"]["count"] == 2
    d = s["duplicates"]
    assert (d["groups"], d["images"], d["extra_copies"]) == (3, 6, 3)
    assert d["within"]["train"] == {"groups": 2, "images": 4, "extra_copies": 2}
    assert d["within"]["public"]["groups"] == 0 and d["within"]["private"]["groups"] == 0
    assert d["across"]["train-public"] == {"groups": 1, "images_train": 1, "images_public": 1}
    assert d["across"]["train-private"]["groups"] == 0
    assert d["label_conflicts"] == {"groups": 1, "images": 2}
    assert d["constant_images"] == {"train": 2, "public": 0, "private": 0}
    assert s["skipped"]["count"] == 0

    with open(out / "stats.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"split": "train", "class": "neutral", "count": "4", "percent": f"{100 * 4 / 17:.2f}"} in rows
    assert {"split": "all", "class": "total", "count": "32", "percent": "100.00"} in rows
    with open(out / "duplicates.csv", newline="") as f:
        dups = list(csv.DictReader(f))
    assert len(dups) == 6 and {r["group"] for r in dups} == {"1", "2", "3"}
    cross = [r for r in dups if r["source"] in ("train/angry/Training_0.png", "test/angry/PublicTest_dup.png")]
    assert len(cross) == 2 and cross[0]["group"] == cross[1]["group"] and cross[0]["hash"] == cross[1]["hash"]

    for name in ("class_distribution.png", "samples.png"):
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.format == "PNG" and round(im.info["dpi"][0]) == 300 and min(im.size) > 600


def test_cli_data_stats_skip_bad_and_default_out(tmp_path, monkeypatch, capsys):
    root = tmp_path / "mine"
    _bad_image_folder(root)
    monkeypatch.chdir(tmp_path)
    assert main(["data", "stats", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert main(["data", "stats", str(root), "--skip-bad", "--no-cache"]) == 0
    assert "skipped 5 unreadable files or rows" in capsys.readouterr().out
    s = json.loads((tmp_path / "runs" / "stats" / "mine" / "stats.json").read_text())
    assert s["skipped"]["count"] == 5 and s["images"] == 2 and not s["from_cache"]


def test_data_stats_defaults_to_the_configured_dataset(tmp_path, monkeypatch, synthetic_kaggle_tree):
    monkeypatch.setenv("EMOLENS_FER2013", str(synthetic_kaggle_tree))
    s = dataset_stats(out=tmp_path / "o", progress=False)
    assert s["images"] == 28 and s["data"] == str(synthetic_kaggle_tree)
    # a typed result: attributes, and to_dict() is stats.json plus the folder
    assert s.images == 28 and s.out == str(tmp_path / "o")
    assert s.to_dict() == {**json.loads((tmp_path / "o" / "stats.json").read_text()), "out": s.out}


@pytest.mark.parametrize("make,expected", [
    (lambda p: p / "missing.zip", "no such file or folder"),
    (lambda p: (p / "e").mkdir() or p / "e", "folder is empty"),
    (lambda p: (p / "x.zip").write_text("no zip") and p / "x.zip", "not a valid zip file"),
    (lambda p: (p / "y.csv").write_text("emotion,pixels\n3,1 2\n") and p / "y.csv", "expected 2304 pixels"),
    (lambda p: (p / "z.tar").write_text("x") and p / "z.tar", "unknown data layout"),
])
def test_cli_bad_data_is_one_line_and_exit_2(tmp_path, capsys, make, expected):
    path = make(tmp_path)
    assert main(["data", "stats", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_without_data_and_without_fer2013_is_friendly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMOLENS_FER2013", str(tmp_path / "absent.zip"))
    assert main(["data", "stats"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no DATA given") and "emolens data stats DATA" in err


# ----------------------------------------------------------------------------------------------------
# the real FER2013 (Kaggle zip), skipped when absent

REAL_TRAIN = {"angry": 3995, "disgust": 436, "fear": 4097, "happy": 7215, "neutral": 4965, "sad": 4830,
              "surprise": 3171}
REAL_PUBLIC = {"angry": 467, "disgust": 56, "fear": 496, "happy": 895, "neutral": 607, "sad": 653, "surprise": 415}


def test_real_fer2013_zip_counts(fer_zip_path, monkeypatch):
    # the user's cache: decoding the zip takes seconds, a warm cache well under one
    if _USER_CACHE is None:
        monkeypatch.delenv("EMOLENS_CACHE", raising=False)
    else:
        monkeypatch.setenv("EMOLENS_CACHE", _USER_CACHE)
    ds = load_dataset(fer_zip_path, progress=False)
    assert len(ds.split("train")) == 28_709 and len(ds.split("public")) == 3_589
    assert sum(REAL_TRAIN.values()) == 28_709 and sum(REAL_PUBLIC.values()) == 3_589
    assert _counts(ds, "train") == REAL_TRAIN
    assert _counts(ds, "public") == REAL_PUBLIC
    assert ds.images.shape == (32_298, 48, 48) and ds.images.dtype == np.uint8
    # exact duplicates: the only image in both splits is the blank (all-black) one
    cross = [g for g in find_duplicates(ds.images) if len(set(ds.splits[g].tolist())) > 1]
    assert len(cross) == 1 and int(ds.images[cross[0]].max()) == 0
