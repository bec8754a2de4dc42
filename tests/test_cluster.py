"""The Ray engine (emolens.cluster) on a real local cluster: 2 CPUs, no dashboard, started once for the module.

Every result is compared with the local engine's on the same files: the bundled photo, synthetic frames made
from it, a face-free picture, a 48x48 face crop, a broken file; and synthetic clips for ``video``."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from emolens.cli import main
from emolens.predict import EmotionRecognizer

ASTRONAUT = Path(__file__).resolve().parents[1] / "src" / "emolens" / "assets" / "astronaut.jpg"


def test_without_ray_the_engine_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert main(["predict", str(ASTRONAUT), "--engine", "ray"]) == 2
    assert 'pip install "emolens[ray]"' in capsys.readouterr().err
    assert main(["video", "a.mp4", "b.mp4", "--engine", "ray"]) == 2
    assert 'pip install "emolens[ray]"' in capsys.readouterr().err


def test_local_path_never_imports_ray():
    code = ("import sys, emolens, emolens.cli, emolens.predict, emolens.video, emolens.bench; "
            "emolens.cli.build_parser(); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_engine_options_need_the_ray_engine(capsys):
    assert main(["predict", str(ASTRONAUT), "--workers", "2"]) == 2
    assert "--engine ray" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- the cluster


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from emolens.cluster import connect

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)  # a private cluster, never one that happens to run here
        if ray.is_initialized():
            ray.shutdown()
        assert connect(num_cpus=2)
        try:
            yield ray
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def recognizer() -> EmotionRecognizer:
    return EmotionRecognizer()


def _frame(shift: int = 0, two: bool = False) -> np.ndarray:
    import cv2

    from emolens.bench import sample_frame

    frame = np.roll(sample_frame(), shift, axis=1)
    if two:  # a second, mirrored face beside the first
        small = cv2.resize(sample_frame(), (320, 240))
        frame = np.concatenate([small, small[:, ::-1]], axis=1)
    return frame


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder: the bundled photo, 3 synthetic frames (one with two faces), a face-free image, a 48x48 face
    crop and a broken file."""
    import cv2

    d = tmp_path_factory.mktemp("photos")
    (d / "astronaut.jpg").write_bytes(ASTRONAUT.read_bytes())
    for i, (shift, two) in enumerate([(0, False), (-90, False), (0, True)]):
        cv2.imwrite(str(d / f"frame{i}.png"), _frame(shift, two))
    cv2.imwrite(str(d / "noface.png"), np.full((120, 160, 3), 90, np.uint8))
    crop = cv2.cvtColor(cv2.resize(cv2.imread(str(ASTRONAUT))[40:200, 150:310], (48, 48)), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(d / "crop48.png"), crop)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return d


def _assert_same_faces(ray_faces, local_faces, where: str) -> None:
    assert len(ray_faces) == len(local_faces), where
    for a, b in zip(ray_faces, local_faces, strict=True):
        assert tuple(a.box) == tuple(b.box), where
        assert a.emotion == b.emotion, where
        for c, p in b.probabilities.items():
            assert a.probabilities[c] == pytest.approx(p, abs=1e-5), where


def test_predict_dataset_matches_local(ray_cluster, photos, recognizer):
    from emolens.cluster import predict_dataset

    paths = sorted(str(p) for p in photos.iterdir() if p.name != "broken.jpg")
    ds = ray_cluster.data.read_binary_files(paths, include_paths=True)
    rows = predict_dataset(ds, workers=2, batch_size=2).take_all()
    assert {"source", "face", "x", "y", "w", "h", "emotion", "confidence", "p_happy", "error"} <= set(rows[0])
    assert all(r["face"] >= 0 and r["error"] == "" for r in rows)  # one row per face: no rows for noface.png
    expected = 0
    for p in paths:
        local = recognizer.predict(p)
        expected += len(local)
        mine = sorted((r for r in rows if Path(r["source"]).name == Path(p).name), key=lambda r: r["face"])
        assert len(mine) == len(local), p
        for r, f in zip(mine, local, strict=True):
            assert (r["x"], r["y"], r["w"], r["h"]) == tuple(f.box) and r["emotion"] == f.emotion
            assert r["confidence"] == pytest.approx(f.confidence, abs=1e-5)
            assert [r[f"p_{c}"] for c in recognizer.classes] == pytest.approx(
                [f.probabilities[c] for c in recognizer.classes], abs=1e-5)
    assert len(rows) == expected >= 5  # the astronaut, 2 one-face frames, the two-face frame, the crop


def test_predict_dataset_reads_decoded_images(ray_cluster, photos, recognizer):
    from emolens.cluster import predict_dataset

    paths = [str(photos / "frame1.png"), str(photos / "frame2.png")]
    ds = ray_cluster.data.read_images(paths, include_paths=True, mode="RGB")
    rows = predict_dataset(ds, workers=1, batch_size=4, tta="none").take_all()
    for p in paths:
        local = EmotionRecognizer(tta="none").predict(p)
        mine = sorted((r for r in rows if Path(r["source"]).name == Path(p).name), key=lambda r: r["face"])
        assert [(r["x"], r["y"], r["w"], r["h"]) for r in mine] == [tuple(f.box) for f in local]
        assert [r["confidence"] for r in mine] == pytest.approx([f.confidence for f in local], abs=1e-5)


def test_predict_dataset_checks_its_options(ray_cluster, photos):
    from emolens.cluster import predict_dataset
    from emolens.faces import DetectorError
    from emolens.runtime import ModelError

    ds = ray_cluster.data.from_items([{"path": str(photos / "astronaut.jpg")}])
    with pytest.raises(DetectorError, match="unknown face detector"):
        predict_dataset(ds, detector="nope")
    with pytest.raises(ModelError, match="no such model"):
        predict_dataset(ds, model=photos / "missing.onnx")
    with pytest.raises(ValueError, match="batch_size"):
        predict_dataset(ds, batch_size=0)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_csv(a: Path, b: Path, tol: float, key_cols: tuple[str, ...]) -> None:
    ra, rb = _read_csv(a), _read_csv(b)
    assert len(ra) == len(rb) > 0
    assert list(ra[0]) == list(rb[0])
    for x, y in zip(ra, rb, strict=True):
        assert [x[k] for k in key_cols] == [y[k] for k in key_cols]
        for k in x:
            if k == "confidence" or k.startswith("p_"):
                assert float(x[k]) == pytest.approx(float(y[k]), abs=tol), (k, x, y)


def test_cli_predict_ray_writes_the_local_csv(ray_cluster, photos, tmp_path, capsys):
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert main(["predict", str(photos), "--save-dir", str(local)]) == 1  # 1: broken.jpg failed
    out_local = capsys.readouterr()
    assert main(["predict", str(photos), "--save-dir", str(remote), "--engine", "ray", "--workers", "2"]) == 1
    out_ray = capsys.readouterr()
    assert "broken.jpg" in out_ray.err and "1 failed (engine: ray)" in out_ray.err
    # same files, same order (the order the files were found in), same values
    _assert_same_csv(local / "predictions.csv", remote / "predictions.csv", 2e-6,
                     ("path", "face", "x", "y", "w", "h", "emotion"))
    assert sorted(p.name for p in remote.iterdir()) == sorted(p.name for p in local.iterdir())
    # the tables on stdout are the same too, image by image (probabilities printed to 0.1%)
    assert out_ray.out == out_local.out


def test_cli_predict_ray_json_lines(ray_cluster, photos, capsys):
    import json

    assert main(["predict", str(photos / "astronaut.jpg"), str(photos / "frame2.png"), "--json", "--engine", "ray",
                 "--workers", "1", "--save-dir", str(photos.parent / "json-out")]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [Path(x["path"]).name for x in lines] == ["astronaut.jpg", "frame2.png"]
    assert [len(x["faces"]) for x in lines] == [1, 2]
    assert (lines[0]["width"], lines[0]["height"]) == (512, 512)


def _descendants(root: int) -> list[int]:
    """Pids of every live process below ``root`` (the cluster this test started runs under it)."""
    parents: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parents[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [], [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        frontier += kids
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_killed_actor_loses_and_doubles_no_rows(ray_cluster, tmp_path, recognizer):
    import cv2

    from emolens.cluster import predict_dataset

    variants = [_frame(0), _frame(-90), _frame(0, two=True), _frame(60)]
    expected_faces = [len(recognizer.predict(v)) for v in variants]
    paths = []
    for i in range(24):
        paths.append(tmp_path / f"f{i:02d}.png")
        cv2.imwrite(str(paths[-1]), variants[i % 4])
    items = [{"index": i, "path": str(p)} for i, p in enumerate(paths)]
    ds = predict_dataset(ray_cluster.data.from_items(items, override_num_blocks=12), workers=2, batch_size=2,
                         keep_empty=True)
    seen: list[tuple[int, int]] = []
    killed = None
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        seen += list(zip(batch["index"].tolist(), batch["face"].tolist(), strict=True))
        if killed is None:
            actors = [p for p in _descendants(os.getpid()) if "FaceLabeller" in _cmdline(p)]
            assert actors, "no actor process found to kill"
            killed = actors[0]
            os.kill(killed, signal.SIGKILL)
            deadline = time.time() + 10
            while Path(f"/proc/{killed}").exists() and "FaceLabeller" in _cmdline(killed) and time.time() < deadline:
                time.sleep(0.05)
    assert killed is not None and "FaceLabeller" not in _cmdline(killed)
    assert "index" in batch  # the input's other columns ride along with each face (here: the order)
    assert len(seen) == len(set(seen))  # nothing doubled
    want = sorted((i, k) for i in range(24) for k in range(expected_faces[i % 4]))
    assert sorted(seen) == want  # nothing lost


# ---------------------------------------------------------------------------------------------- video


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    from emolens.video import synthetic_face_video

    d = tmp_path_factory.mktemp("clips")
    synthetic_face_video(d / "one.avi", frames=12, size=(320, 240))
    synthetic_face_video(d / "two.avi", frames=10, size=(320, 240), fps=15)
    (d / "broken.mp4").write_bytes(os.urandom(2000))
    return d


def test_cli_video_ray_matches_local_and_skips_complete_jobs(ray_cluster, clips, tmp_path, capsys):
    from emolens.video import process_video

    out = tmp_path / "out"
    argv = ["video", str(clips / "one.avi"), str(clips / "two.avi"), str(clips / "broken.mp4"), "--engine", "ray",
            "--workers", "2", "--out-dir", str(out), "--annotate", "--no-progress"]
    assert main(argv) == 1  # broken.mp4 failed, the others went on
    err = capsys.readouterr().err
    assert "broken.mp4" in err and "3 video(s): 2 done, 0 skipped, 1 failed" in err
    for name in ("one", "two"):
        folder = out / name
        assert sorted(p.name for p in folder.iterdir()) == ["annotated.mp4", "job.json", "summary.json",
                                                            "timeline.csv", "timeline.png"]
        local = tmp_path / f"{name}-local.csv"
        process_video(str(clips / f"{name}.avi"), csv_path=local, progress=False, log=lambda m: None)
        _assert_same_csv(local, folder / "timeline.csv", 2e-4, ("frame", "time_s", "track_id", "x", "y", "w", "h"))
    assert not (out / "broken").exists() or not (out / "broken" / "summary.json").exists()

    # a re-run skips what is complete; a job without its summary (a killed run) is done again
    mtime = (out / "one" / "timeline.csv").stat().st_mtime_ns
    (out / "two" / "summary.json").unlink()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "3 video(s): 1 done, 1 skipped, 1 failed" in err and "one.avi: skipped" in err
    assert (out / "one" / "timeline.csv").stat().st_mtime_ns == mtime
    assert (out / "two" / "summary.json").is_file()
    # other options: the outputs no longer match, so the video is done again
    assert main([*argv[:2], "--engine", "ray", "--out-dir", str(out), "--no-progress", "--smooth", "none"]) == 0
    assert "1 video(s): 1 done, 0 skipped, 0 failed" in capsys.readouterr().err


def test_cli_video_several_files_local_engine(clips, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["video", str(clips / "two.avi"), str(clips / "broken.mp4"), "--out-dir", str(out), "--no-progress",
            "--smooth", "ema"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "2 video(s): 1 done, 0 skipped, 1 failed (engine: local)" in err
    broken = str(clips / "broken.mp4")
    assert f"error: {broken}: " in err and f"{broken}: {broken}" not in err  # the name once
    assert (out / "two" / "timeline.csv").is_file() and not (out / "two" / "annotated.mp4").exists()
    assert main(argv) == 1
    assert "1 skipped" in capsys.readouterr().err
    assert main(["video", str(clips / "two.avi"), str(clips / "one.avi"), "--csv", str(tmp_path / "x.csv")]) == 2


def test_cli_video_several_files_leave_other_runs_outputs_alone(clips, tmp_path, capsys):
    """`emolens video two.avi` wrote runs/video/two/; a multi-video run then took that folder for its own unfinished
    job and rewrote its timeline. Now such a folder is left alone for two-2/; the job's own folder is still redone
    in place after a kill (job.json) and skipped once complete."""
    out = tmp_path / "out"
    mine = out / "two"
    mine.mkdir(parents=True)
    for name in ("annotated.webm", "timeline.csv", "timeline.png"):
        (mine / name).write_text(f"my {name}")
    argv = ["video", str(clips / "two.avi"), str(clips / "broken.mp4"), "--out-dir", str(out), "--no-progress",
            "--smooth", "ema"]
    assert main(argv) == 1
    printed = capsys.readouterr()
    assert f"{out / 'two-2'}" in printed.out + printed.err  # the run says where the outputs went
    assert {p.name: p.read_text() for p in mine.iterdir()} == {n: f"my {n}" for n in
                                                                ("annotated.webm", "timeline.csv", "timeline.png")}
    assert (out / "two-2" / "summary.json").is_file() and (out / "two-2" / "job.json").is_file()
    assert main(argv) == 1
    assert "1 skipped" in capsys.readouterr().err  # its own folder, complete: found again, not a two-3
    assert not (out / "two-3").exists()
    (out / "two-2" / "summary.json").unlink()  # a killed job: its own folder is redone in place
    assert main(argv) == 1
    assert (out / "two-2" / "summary.json").is_file() and not (out / "two-3").exists()


def test_video_jobs_folders_never_collide(tmp_path):
    from emolens.cluster import video_jobs

    jobs = video_jobs(["a/clip.mp4", "b/clip.mp4", "c/other.mp4"], tmp_path)
    names = [j.folder.name for j in jobs]
    assert len(set(names)) == 3 and names[2] == "other" and all(n.startswith("clip-") for n in names[:2])
    assert video_jobs(["b/clip.mp4", "a/clip.mp4"], tmp_path)[0].folder == jobs[1].folder


def test_bench_engines_times_local_and_ray_on_the_same_photos(ray_cluster):
    from emolens.bench import EnginesBench, bench_engines, format_engines
    from emolens.runtime import DEFAULT_TTA

    r = bench_engines(images=3, workers=(1,), batch_size=2)
    assert isinstance(r, EnginesBench) and r.images == 3 and r.cluster_cpus == 2
    local, ray_row = r.rows
    assert (local["engine"], ray_row["engine"], ray_row["workers"]) == ("local", "ray", 1)
    assert local["faces"] == ray_row["faces"] == 3 and ray_row["failed"] == 0  # one face in each photo
    assert all(row["images_per_s"] > 0 for row in r.rows) and r.to_dict()["rows"] == r.rows
    assert "| ray | 1 |" in format_engines(r)
    assert f"with TTA {r.tta};" in format_engines(r) and r.tta == DEFAULT_TTA  # what ran (it said flip, ran shift)
