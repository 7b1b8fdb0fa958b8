"""`train.init_from_blt` (bltjax/training/warm_start.py): BLT weights into a new BLT-D (or BLT)
run."""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np
import pytest

from bltjax import weights
from bltjax.config import MASK_ID, ConfigError
from bltjax.modeling import model
from bltjax.training import train
from bltjax.training.train_config import resolve

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import tiny_train_config  # noqa: E402


def _config(block_size: int, init_from: str = ""):
  c = tiny_train_config.get_config("blt")
  c.model.diffusion.block_size = block_size
  c.train.init_from_blt = init_from
  return c


def _save(tmp: pathlib.Path, name: str, c, seed: int) -> tuple[str, dict]:
  cfg = resolve(c, 8).model
  params = tiny_train_config.random_params(cfg, model.BLT_KEYS, seed)
  return str(weights.save_checkpoint(tmp / name, params, cfg)), params


def _params(c, tmp: pathlib.Path) -> dict:
  tr = train.Trainer.create(c, tmp)
  return jax.tree.map(np.asarray, jax.device_get(tr.init_state()["params"])), tr


def _flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_blt_weights_start_a_bltd_run_with_a_fresh_mask_row(tmp_path):
  src, want = _save(tmp_path, "blt", _config(0), seed=1)
  fresh, _ = _params(_config(4), tmp_path / "fresh")
  got, tr = _params(_config(4, src), tmp_path / "warm")
  assert tr.warm_start_counts["byte_table_resized"] == 1
  assert tr.warm_start_counts["copied"] == len(jax.tree.leaves(want)) - 1
  table = "['local_encoder']['tok_embeddings']['embedding']"
  g, w, f = _flat(got), _flat(want), _flat(fresh)
  assert set(g) == set(w)
  for k in g:
    if k == table:
      assert g[k].shape == (MASK_ID + 1, w[k].shape[1])
      np.testing.assert_array_equal(g[k][:MASK_ID], w[k])
      np.testing.assert_array_equal(g[k][MASK_ID], f[k][MASK_ID])  # the fresh init's MASK row
    else:
      np.testing.assert_array_equal(g[k], w[k], err_msg=k)
  # The optimiser moments do not depend on where the weights came from.
  assert all(float(np.abs(x).max()) == 0 for x in jax.tree.leaves(
    jax.device_get(tr.init_state()["opt_state"])) if np.ndim(x) and x.dtype.kind == "f")


def test_bltd_weights_into_blt_drop_the_mask_row(tmp_path):
  src, want = _save(tmp_path, "bltd", _config(4), seed=2)
  got, tr = _params(_config(0, src), tmp_path / "warm")
  table = ("local_encoder", "tok_embeddings", "embedding")
  t = got[table[0]][table[1]][table[2]]
  np.testing.assert_array_equal(t, want[table[0]][table[1]][table[2]][:MASK_ID])
  assert tr.warm_start_counts["byte_table_resized"] == 1


def test_architecture_mismatch_names_the_key(tmp_path):
  other = _config(0)
  other.model.decoder.n_layers = 2
  src, _ = _save(tmp_path, "deeper", other, seed=0)
  tr = train.Trainer.create(_config(4, src), tmp_path / "warm")
  with pytest.raises(ConfigError, match=r"^train.init_from_blt: model.decoder of .* is "):
    tr.init_state()
  with pytest.raises(ConfigError, match=r"^train.init_from_blt: .* is not a directory"):
    train.Trainer.create(_config(4, str(tmp_path / "nowhere")), tmp_path / "w2").init_state()
  c = tiny_train_config.get_config("entropy")
  c.train.init_from_blt = src
  with pytest.raises(ConfigError, match=r"^train.init_from_blt: only for train.task 'blt'"):
    resolve(c, 8)
