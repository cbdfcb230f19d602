"""Both notebooks execute top to bottom at CI settings (LSD_NOTEBOOK_SMALL=1) in a kernel of this
interpreter (a kernelspec written to a temporary JUPYTER_PATH, so the venv's python runs them).
explore.ipynb once hung here: the metrics' FFTs deadlocked XLA:CPU's thread pool at 256x256 on
2 cores (metrics.phase_shift says how); it now takes ~1 minute on 2 cores."""

import json
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
  spec = tmp_path / "jupyter" / "kernels" / "python3"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "Python 3 (this interpreter)", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  monkeypatch.setenv("LSD_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("LSD_ROOT", ROOT)
  monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _run(name: str) -> nbformat.NotebookNode:
  nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
  return nb


def _text(nb) -> str:
  return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_explore_notebook_runs(kernel_env):
  nb = _run("explore.ipynb")
  text = _text(nb)
  assert "sepia" in text and "snowfall" in text and "drift ratio" in text and "bigbuckbunny_256.mp4" in text
  assert "(12, 256, 256, 3)" in text  # the small settings: 12 frames of the shipped model's size
  images = [o for c in nb.cells for o in c.get("outputs", []) if {"image/png", "image/jpeg"} & set(o.get("data", {}))]
  assert len(images) >= 2  # the strips and the per-frame curves


def test_ablations_notebook_runs(kernel_env):
  nb = _run("ablations.ipynb")
  assert "protocol" in _text(nb)
  assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
