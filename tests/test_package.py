"""Package-level behaviour: lazy imports, the CLI's start-up cost, file modes, damaged checkpoints."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest


def test_cli_parser_does_not_import_torch():
    # every command builds the whole parser; importing torch there cost ~7 s on each `emolens predict`
    code = "import sys; from emolens.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_lazy_exports_resolve_and_do_not_shadow_submodules():
    import emolens

    for name in emolens.__all__:
        assert getattr(emolens, name) is not None
    import emolens.train

    # the submodule stays a module and its function is reachable as documented
    assert callable(emolens.train.train)
    assert emolens.TrainConfig is emolens.train.TrainConfig
    with pytest.raises(AttributeError, match="no attribute"):
        emolens.not_a_thing  # noqa: B018


def test_atomic_writes_get_normal_file_modes(tmp_path: Path):
    from emolens.checkpoint import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "w.bin", b"abc")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "w.bin").stat().st_mode)
    assert mode == 0o644  # readable by others, as open() would make it; mkstemp alone gives 0o600
    assert (tmp_path / "w.bin").read_bytes() == b"abc"
    assert list(tmp_path.iterdir()) == [tmp_path / "w.bin"]  # no temp file left behind


def test_damaged_checkpoint_is_a_checkpoint_error(tmp_path: Path):
    import torch

    from emolens.checkpoint import FORMAT, CheckpointError, load_model, read_checkpoint

    bad = tmp_path / "bad.pt"
    torch.save({"format": FORMAT, "version": 1}, bad)  # the header but no model
    with pytest.raises(CheckpointError, match="damaged emolens checkpoint .*missing model"):
        read_checkpoint(bad)
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(CheckpointError, match="not an emolens checkpoint"):
        load_model(bad)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not an emolens checkpoint") as e:
        read_checkpoint(tmp_path / "text.pt")
    assert str(e.value).endswith("(not a PyTorch file, or a damaged one)")  # was "(101)", the unpickler's KeyError
    (tmp_path / "junk.pt").write_bytes(b"garbage bytes here")
    with pytest.raises(CheckpointError, match="not an emolens checkpoint") as e:
        read_checkpoint(tmp_path / "junk.pt")
    assert "weights_only" not in str(e.value)  # torch's advice to load with weights_only=False runs the file's code
