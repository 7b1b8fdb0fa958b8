"""bltjax checkpoint directory: save/load round trip, dtype casts, sharded restore, error paths."""

from __future__ import annotations

import json

import jax
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bltjax import weights
from bltjax.config import BLTConfig, HashConfig, PatcherConfig, TransformerConfig
from bltjax.convert import hf


def _cfg(k: int = 4) -> BLTConfig:
  enc = TransformerConfig(dim=16, n_layers=1, n_heads=2, ffn_dim=32, name="encoder")
  glb = TransformerConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=64, window=None,
                          name="global_model")
  dec = TransformerConfig(dim=16, n_layers=2, n_heads=4, ffn_dim=32, name="decoder")
  ent = TransformerConfig(dim=16, n_layers=1, n_heads=2, ffn_dim=32, rope_theta=1e4,
                          name="entropy")
  return BLTConfig(encoder=enc, global_=glb, decoder=dec, entropy=ent,
                   hash=HashConfig(group_sizes=(3, 4), vocab=64),
                   patcher=PatcherConfig(threshold=1.25), cross_attn_k=k)


def _params(cfg: BLTConfig, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  tree: dict = {}
  for leaf in hf.layout(cfg):
    node = tree
    for key in leaf.path[:-1]:
      node = node.setdefault(key, {})
    node[leaf.path[-1]] = rng.standard_normal(leaf.shape).astype(np.float32)
  return tree


def _flat(tree):
  return {k: np.asarray(v) for k, v in hf.flat_leaves(tree).items()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  cfg = _cfg()
  params = _params(cfg)
  path = tmp_path_factory.mktemp("w") / "ckpt"
  weights.save_checkpoint(path, params, cfg, {"source": {"format": "test"}, "note": "x"})
  return path, cfg, params


def test_roundtrip_exact(saved):
  path, cfg, params = saved
  cfg2, params2 = weights.load_checkpoint(path)
  assert cfg2 == cfg and weights.load_config(path) == cfg
  a, b = _flat(params), _flat(params2)
  assert a.keys() == b.keys()
  for k in a:
    assert b[k].dtype == np.float32
    np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
  doc = json.loads((path / "config.json").read_text())
  assert doc["format_version"] == weights.FORMAT_VERSION
  assert doc["converter_version"] == weights.CONVERTER_VERSION
  assert doc["source"] == {"format": "test"} and doc["meta"] == {"note": "x"}
  assert {"encoder", "global_model", "decoder", "entropy", "hash", "patcher"} <= doc.keys()
  assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt"]  # no temp dirs left


def test_dtype_cast_and_bf16_storage(saved, tmp_path):
  path, cfg, params = saved
  cfg16, p16 = weights.load_checkpoint(path, dtype="bfloat16")
  assert cfg16 == cfg.replace(param_dtype="bfloat16")
  leaf = p16["local_decoder"]["output"]["kernel"]
  assert leaf.dtype == jax.numpy.bfloat16
  want = params["local_decoder"]["output"]["kernel"].astype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(np.asarray(leaf), want)
  # bf16 numpy trees are stored as bf16 (no silent upcast).
  bf = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16), params)
  weights.save_checkpoint(tmp_path / "bf", bf, cfg.replace(param_dtype="bfloat16"))
  cfg3, p3 = weights.load_checkpoint(tmp_path / "bf")
  assert cfg3.param_dtype == "bfloat16"
  assert p3["local_encoder"]["hash_embeddings"]["embedding"].dtype == jax.numpy.bfloat16


def test_sharded_restore(saved):
  path, _, params = saved
  devices = np.array(jax.devices())
  assert devices.size == 8  # conftest: 8 fake CPU devices
  mesh = Mesh(devices.reshape(2, 4), ("data", "model"))
  repl = NamedSharding(mesh, PartitionSpec())
  _, p_repl = weights.load_checkpoint(path, shardings=repl)
  assert p_repl["local_encoder"]["tok_embeddings"]["embedding"].sharding == repl

  def spec(x):
    if x.ndim >= 2 and x.shape[-1] % 4 == 0:
      return NamedSharding(mesh, PartitionSpec(*([None] * (x.ndim - 1)), "model"))
    return repl

  shardings = jax.tree.map(spec, params)
  _, p_sh = weights.load_checkpoint(path, shardings=shardings)
  hsh = p_sh["local_encoder"]["hash_embeddings"]["embedding"]  # [2, 64, 16]
  assert hsh.sharding.spec == PartitionSpec(None, None, "model")
  assert {s.data.shape for s in hsh.addressable_shards} == {(2, 64, 4)}
  for k, v in _flat(params).items():
    np.testing.assert_array_equal(np.asarray(hf.flat_leaves(p_sh)[k]), v)
  with pytest.raises(ValueError, match="shardings tree"):
    weights.load_checkpoint(path, shardings={"local_encoder": repl})


def test_overwrite_rules(tmp_path):
  cfg = _cfg(2)
  p1, p2 = _params(cfg, 1), _params(cfg, 2)
  dst = tmp_path / "c"
  weights.save_checkpoint(dst, p1, cfg)
  with pytest.raises(FileExistsError, match="overwrite"):
    weights.save_checkpoint(dst, p2, cfg)
  weights.save_checkpoint(dst, p2, cfg, overwrite=True)
  _, got = weights.load_checkpoint(dst)
  np.testing.assert_array_equal(np.asarray(got["local_decoder"]["norm"]["scale"]),
                                p2["local_decoder"]["norm"]["scale"])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_failed_save_leaves_nothing(tmp_path):
  cfg = _cfg(2)
  bad = {"x": object()}  # orbax cannot serialise it
  with pytest.raises(Exception):  # noqa: B017 - any orbax error type will do
    weights.save_checkpoint(tmp_path / "c", bad, cfg)
  assert list(tmp_path.iterdir()) == []


def test_not_a_checkpoint(tmp_path, saved):
  with pytest.raises(weights.CheckpointError, match="not a directory"):
    weights.load_checkpoint(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(weights.CheckpointError, match=r"empty: no config\.json"):
    weights.load_checkpoint(tmp_path / "empty")
  hf_dir = tmp_path / "hfdir"
  hf_dir.mkdir()
  (hf_dir / "config.json").write_text(json.dumps({"model_type": "blt"}))
  with pytest.raises(weights.CheckpointError, match="--from hf"):
    weights.load_config(hf_dir)
  (hf_dir / "config.json").write_text("{not json")
  with pytest.raises(weights.CheckpointError, match="invalid JSON"):
    weights.load_config(hf_dir)
  path, _, _ = saved
  doc = json.loads((path / "config.json").read_text())
  future = tmp_path / "future"
  future.mkdir()
  (future / "config.json").write_text(json.dumps({**doc, "format_version": 99}))
  with pytest.raises(weights.CheckpointError, match="format_version 99"):
    weights.load_checkpoint(future)
  (future / "config.json").write_text(json.dumps(doc))
  with pytest.raises(weights.CheckpointError, match="params/"):
    weights.load_checkpoint(future)
  (future / "config.json").write_text(json.dumps({**doc, "bogus_key": 1}))
  with pytest.raises(weights.CheckpointError, match="bogus_key"):
    weights.load_config(future)


def test_hf_format_roundtrip_without_torch(tmp_path):
  """bltjax tree -> HF dir -> bltjax tree with numpy only (our safetensors reader and writer)."""
  from safetensors import safe_open

  cfg = _cfg(4)
  params = _params(cfg, 5)
  hf.save_hf(tmp_path / "hf", params, cfg)
  with safe_open(str(tmp_path / "hf" / "model.safetensors"), "numpy") as f:  # the reference lib
    wq = f.get_tensor("model.local_encoder.layers.0.self_attn.q_proj.weight")
    emb = f.get_tensor("model.encoder_hash_tok_embedding.weight")
    assert f.metadata() == {"format": "pt"}
  np.testing.assert_array_equal(
    wq, params["local_encoder"]["layers_0"]["attention"]["wq"]["kernel"].reshape(16, 16).T)
  np.testing.assert_array_equal(
    emb, params["local_encoder"]["hash_embeddings"]["embedding"].reshape(2 * 64, 16))
  cfg2, back = hf.load_hf(tmp_path / "hf")
  assert cfg2 == cfg
  a, b = _flat(params), _flat(back)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
