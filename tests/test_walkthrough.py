"""examples/walkthrough.ipynb runs end to end (photo, batch API, video, evaluation) in a real kernel; its
evaluation cell runs on FER2013 when it is here and says it skipped itself when not."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "walkthrough.ipynb"


def _texts(nb) -> list[str]:
    """Each code cell's printed text and errors, one string per cell."""
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        parts = []
        for o in cell.outputs:
            if o.output_type == "stream":
                parts.append(o.text)
            elif o.output_type == "error":
                parts.append(f"{o.ename}: {o.evalue}")
            else:
                parts.append(o.get("data", {}).get("text/plain", ""))
        out.append("".join(parts))
    return out


def test_walkthrough_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the kernel starts here; the notebook writes only into its own temp folder
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    texts = _texts(nb)
    assert not any(o.output_type == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    photo, drawn, api, video, evaluation = texts
    assert "happy" in photo  # the bundled astronaut smiles
    assert "Image" in drawn
    assert "('happy', 0." in api and ("original" in api or "pip install pandas" in api)
    assert "1 track(s)" in video and "codec VP80" in video and "'track_id': '1'" in video
    assert "accuracy" in evaluation or "evaluation skipped: no FER2013 here" in evaluation
