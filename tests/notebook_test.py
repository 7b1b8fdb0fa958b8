"""notebooks/colab_quickstart.ipynb runs top to bottom offline (nbclient), shrunk through its
environment variables: a tiny BLT-D checkpoint instead of training, 8 new bytes, 1 example, and
the hub cell on a local directory laid out like facebook/blt-1b (Meta's layout with
entropy_model/). The slow test installs bltjax into a fresh venv from a git clone and trains."""

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
  hub = _hub_like_dir(tmp_path / "hub")
  if hub is not None:
    env.update(BLTJAX_NB_LOAD_HUB="1", BLTJAX_NB_HUB_REPO=str(hub))
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
  if hub is not None:
    assert "entropy model: True | patcher: entropy" in text and "--- hub blts:" in text, text


def _hub_like_dir(root: Path) -> Path | None:
  """A tiny BLT in facebook/blt-1b's layout (config.json {"args"}, model.safetensors,
  train_args.json, entropy_model/), or None without the oracle packages that build it."""
  try:
    import hf_fixtures as fx
  except ImportError:  # torch / transformers absent: the hub cell is not run
    return None
  blt, ent = fx.write_meta_hub(root, fx.tiny_hf_model(k=2))
  ent.rename(blt / "entropy_model")
  return blt


@pytest.mark.slow
def test_quickstart_notebook_in_a_fresh_venv(tmp_path):
  """A user's path: a fresh venv (no system packages), bltjax installed by the notebook's own
  install cell from a git clone of the repository's HEAD (so: commit first), the tiny models
  trained on the corpus that ships inside the package, every method decoded. pip reads the
  machine's configured index; the first run downloads JAX & co. (minutes)."""
  import subprocess
  import venv

  root = NB.parents[1]
  clone = tmp_path / "clone"
  subprocess.run(["git", "clone", "-q", f"file://{root}", str(clone)], check=True)
  env_dir = tmp_path / "venv"
  venv.EnvBuilder(with_pip=True).create(env_dir)
  py = env_dir / "bin" / "python"
  # ensurepip's pip (23.x here) rejects "bltjax[eval] @ git+file://..."; Colab's pip is current.
  subprocess.run([str(py), "-m", "pip", "install", "-q", "-U", "pip", "nbclient", "nbformat",
                  "ipykernel"], check=True)
  run_dir = tmp_path / "nb"  # outside the clone: the notebook must install bltjax itself
  run_dir.mkdir()
  script = (
    "import nbformat, nbclient, sys\n"
    f"nb = nbformat.read({str(clone / 'notebooks' / NB.name)!r}, as_version=4)\n"
    f"nbclient.NotebookClient(nb, timeout=3000, kernel_name='python3', "
    f"resources={{'metadata': {{'path': {str(run_dir)!r}}}}}).execute()\n"
    "print('\\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' "
    "for o in c.get('outputs', [])))\n")
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  env.update(BLTJAX_INSTALL_FROM=f"git+file://{clone}", BLTJAX_NB_WORKDIR=str(tmp_path / "work"),
             BLTJAX_NB_STEPS_SCALE="0.05", BLTJAX_NB_MAX_NEW="8", BLTJAX_NB_EVAL_LIMIT="1",
             JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
  out = subprocess.run([str(py), "-c", script], env=env, cwd=run_dir, capture_output=True,
                       text=True, timeout=3600)
  assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
  for method in ("ar", "blts", "bltd", "bltdv"):
    assert f"--- {method}" in out.stdout
  assert "bltjax from bltjax[eval] @ git+file://" in out.stdout
  site = subprocess.run([str(py), "-c", "import bltjax.data.corpus as c; "
                         "print(c.fixture_raw_dir())"], capture_output=True, text=True,
                        cwd=run_dir, env=env, check=True).stdout
  assert "site-packages" in site and "_corpus" in site  # trained on the packaged corpus
  assert (tmp_path / "work" / "report" / "report.md").is_file()
