"""notebooks/colab_quickstart.ipynb, run top to bottom by nbclient as a user would: in a fresh
venv (`python -m venv`), its own install cell installs bltjax from a `git+file://` clone of the
repository's HEAD (so: commit first), not from the working tree, and the kernel imports that copy.

Nothing is downloaded: the fresh venv sees the running interpreter's site-packages through a
.pth file (JAX & co. as installed, the same trick as `--system-site-packages`), and pip runs with
`PIP_NO_INDEX` and without build isolation, so it resolves bltjax's dependencies against those
and fails rather than fetching one. The running environment's own bltjax (an editable install)
stays invisible: a .pth path line does not load its finder, and PYTHONPATH is cleared.

Shrunk through the notebook's environment variables: a tiny BLT-D checkpoint instead of training
(the slow case trains the tiny models on the corpus that ships inside the package), 8 new bytes,
1 example, and the hub cell on a local directory laid out like facebook/blt-1b (Meta's layout with
entropy_model/)."""

from __future__ import annotations

import os
import site
import subprocess
import venv
from pathlib import Path

import pytest

from bltjax import weights

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

NB = Path(__file__).resolve().parents[1] / "notebooks" / "colab_quickstart.ipynb"
# Appended to the notebook: where the kernel's bltjax and Python come from.
PROBE = "import sys, bltjax\nprint('PROBE', bltjax.__file__, sys.executable)"


def _fresh_venv(root: Path) -> Path:
  """`python -m venv` whose site-packages lists the running interpreter's in a .pth file; its
  python, which cannot import bltjax yet."""
  venv.EnvBuilder(with_pip=False).create(root)  # pip too comes through the .pth
  py = root / "bin" / "python"
  purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                            "['purelib'])"], capture_output=True, text=True, check=True)
  Path(purelib.stdout.strip(), "_running_env.pth").write_text(
    "\n".join(site.getsitepackages()) + "\n")
  return py


@pytest.mark.parametrize("train", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["checkpoint", "train"])
def test_quickstart_notebook_from_a_file_clone_in_a_fresh_venv(tmp_path, train):
  root = NB.parents[1]
  clone = tmp_path / "clone"
  subprocess.run(["git", "clone", "-q", f"file://{root}", str(clone)], check=True)
  venv_dir = tmp_path / "venv"
  py = _fresh_venv(venv_dir)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  # One CPU device, as on a Colab CPU runtime; unoptimised XLA code generation as in the whole
  # suite (tests/conftest.py: about a third less compile time).
  env.update(XLA_FLAGS="--xla_backend_optimization_level=0")
  env.update(BLTJAX_INSTALL_FROM=f"git+file://{clone}", BLTJAX_NB_WORKDIR=str(tmp_path / "work"),
             BLTJAX_NB_MAX_NEW="8", BLTJAX_NB_EVAL_LIMIT="1", JAX_PLATFORMS="cpu",
             HF_HUB_OFFLINE="1", PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0",
             PIP_DISABLE_PIP_VERSION_CHECK="1")
  run_dir = tmp_path / "nb"  # outside any clone: the notebook's install cell is the only way in
  run_dir.mkdir()
  gone = subprocess.run([str(py), "-c", "import bltjax"], env=env, cwd=run_dir,
                        capture_output=True, text=True)
  assert gone.returncode != 0 and "No module named 'bltjax'" in gone.stderr, gone
  if train:
    env.update(BLTJAX_NB_STEPS_SCALE="0.05")
  else:
    from tests.model_fixtures import bltd_setup

    cfg, params = bltd_setup()
    weights.save_checkpoint(tmp_path / "bltd", params, cfg)
    env.update(BLTJAX_NB_CHECKPOINT=str(tmp_path / "bltd"))
  hub = None if train else _hub_like_dir(tmp_path / "hub")
  if hub is not None:
    env.update(BLTJAX_NB_LOAD_HUB="1", BLTJAX_NB_HUB_REPO=str(hub))
  nb = nbformat.read(NB, as_version=4)
  assert any("LOAD_HUB = False" in c.source for c in nb.cells)
  script = (
    "import nbformat, nbclient\n"
    f"nb = nbformat.read({str(clone / 'notebooks' / NB.name)!r}, as_version=4)\n"
    f"nb.cells.append(nbformat.v4.new_code_cell({PROBE!r}))\n"
    "nbclient.NotebookClient(nb, timeout=1200, kernel_name='python3', "
    f"resources={{'metadata': {{'path': {str(run_dir)!r}}}}}).execute()\n"
    "print('\\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' "
    "for o in c.get('outputs', [])))\n")
  out = subprocess.run([str(py), "-c", script], env=env, cwd=run_dir, capture_output=True,
                       text=True, timeout=3000)
  assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
  text = out.stdout
  assert f"bltjax from bltjax[eval] @ git+file://{clone}" in text
  # The kernel ran in the fresh venv and imported the copy pip installed there from the clone.
  probe = [x.split() for x in text.splitlines() if x.startswith("PROBE ")]
  assert len(probe) == 1, text[-3000:]
  bltjax_file, kernel_py = probe[0][1:]
  assert Path(bltjax_file).is_relative_to(venv_dir / "lib"), bltjax_file
  assert "site-packages" in bltjax_file and Path(kernel_py).parent == venv_dir / "bin"
  for method in ("ar", "blts", "bltd", "bltdv"):
    assert f"--- {method}" in text
  assert "Translation" in text and (tmp_path / "work" / "report" / "report.md").is_file()
  if hub is not None:
    assert "entropy model: True | patcher: entropy" in text and "--- hub blts:" in text, text
  if train:  # trained on the corpus inside the installed package
    corpus = subprocess.run([str(py), "-c", "import bltjax.data.corpus as c; "
                             "print(c.fixture_raw_dir())"], capture_output=True, text=True,
                            cwd=run_dir, env=env, check=True).stdout
    assert Path(corpus.strip()).is_relative_to(venv_dir / "lib") and "_corpus" in corpus


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
