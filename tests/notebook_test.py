"""notebooks/colab_quickstart.ipynb runs top to bottom offline (nbclient), shrunk through its
environment variables: a tiny BLT-D checkpoint instead of training, 8 new bytes, 1 example."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bltjax import weights

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

NB = Path(__file__).resolve().parents[1] / "notebooks" / "colab_quickstart.ipynb"


def test_quickstart_notebook_runs_offline(tmp_path, monkeypatch):
  from tests.model_fixtures import bltd_setup

  cfg, params = bltd_setup()
  weights.save_checkpoint(tmp_path / "bltd", params, cfg)
  env = {"BLTJAX_NB_SKIP_INSTALL": "1", "BLTJAX_NB_CHECKPOINT": str(tmp_path / "bltd"),
         "BLTJAX_NB_WORKDIR": str(tmp_path / "work"), "BLTJAX_NB_MAX_NEW": "8",
         "BLTJAX_NB_EVAL_LIMIT": "1", "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(NB.parents[1]),
                                                    os.environ.get("PYTHONPATH", "")]))
  nb = nbformat.read(NB, as_version=4)
  assert any("LOAD_HUB = False" in c.source for c in nb.cells)
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": str(NB.parent)}}).execute()
  text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
  for method in ("ar", "blts", "bltd", "bltdv"):
    assert f"--- {method}" in text
  assert "Translation" in text and (tmp_path / "work" / "report" / "report.md").is_file()
