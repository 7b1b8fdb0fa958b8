"""`python -m bltjax.convert --from hf OWNER/NAME DST`: hub ids resolved through a local hub cache.

No network: HF_HUB_OFFLINE=1 and HF_HUB_CACHE point at a cache laid out as huggingface_hub writes
it (models--owner--name/refs/main + snapshots/<commit>/), holding a tiny HF BLT.
"""

from __future__ import annotations

import hf_fixtures as fx
import numpy as np
import pytest

from bltjax import weights
from bltjax.convert import hf
from bltjax.convert.__main__ import main as cli

pytestmark = pytest.mark.oracle
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
  """A hub cache with `fake-org/blt-tiny` at COMMIT; offline mode on."""
  cache = tmp_path / "hub"
  repo = cache / "models--fake-org--blt-tiny"
  snap = repo / "snapshots" / COMMIT
  _, model = fx.save_tiny(snap, k=2)
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text(COMMIT)
  monkeypatch.setenv("HF_HUB_CACHE", str(cache))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  # huggingface_hub reads both variables when it is imported; patch its constants too.
  import huggingface_hub.constants as c

  monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
  monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
  return snap


def test_hub_id_resolves_from_the_cache(hub_cache, tmp_path, capsys):
  out = tmp_path / "out"
  assert cli(["--from", "hf", "fake-org/blt-tiny", str(out), "-q"]) == 0
  cfg, params = weights.load_checkpoint(out)
  ref_cfg, ref = hf.load_hf(hub_cache)
  assert cfg == ref_cfg
  a, b = hf.flat_leaves(params), hf.flat_leaves(ref)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=str(k))


def test_unknown_hub_id_offline_is_one_line(hub_cache, tmp_path, capsys):
  rc = cli(["--from", "hf", "facebook/blt-1b", str(tmp_path / "out"), "-q"])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1 and "facebook/blt-1b" in err, err
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,needle", [
  (["--from", "hf", "/nonexistent/dir"], "/nonexistent/dir"),
  (["--from", "meta", "/nonexistent/dir"], "/nonexistent/dir"),
  (["--to", "hf", "/nonexistent/dir"], "/nonexistent/dir"),
])
def test_missing_source_is_one_line(args, needle, tmp_path, capsys):
  assert cli([*args, str(tmp_path / "out"), "-q"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and needle in err, err


def test_not_a_checkpoint_is_one_line(tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  (tmp_path / "file").write_text("x")
  for args in (["--from", "hf", str(empty)], ["--to", "hf", str(empty)],
               ["--from", "hf", str(tmp_path / "file")]):
    assert cli([*args, str(tmp_path / "out"), "-q"]) == 2, args
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(args[2]) in err, err
