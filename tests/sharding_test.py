"""Mesh, logical-axis rules and sharded-from-birth parameters on 8 forced CPU devices."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import pathlib
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from bltjax.config import ConfigError, num_params
from bltjax.modeling import model, sharding
from bltjax.training.train_config import resolve

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import tiny_train_config  # noqa: E402


def load_config(name: str):
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def model_cfg(name: str):
  c = load_config(name)
  c.train.entropy_checkpoint = "unused"  # resolve() demands one for entropy patching
  return resolve(c, 8).model


def test_resolve_mesh_shape_fills_and_names_key():
  assert sharding.resolve_mesh_shape((1, -1, 1), 8) == (1, 8, 1)
  assert sharding.resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)
  with pytest.raises(ConfigError, match=r"^mesh.shape: product .* is 4, but there are 8"):
    sharding.resolve_mesh_shape((2, 2, 1), 8)
  with pytest.raises(ConfigError, match=r"^mesh.shape: .* cannot fill 8 devices"):
    sharding.resolve_mesh_shape((3, -1, 1), 8)
  with pytest.raises(ConfigError, match=r"^mesh.shape: at most one axis"):
    sharding.resolve_mesh_shape((-1, -1, 1), 8)


def test_parse_mesh_arg_sizes_or_names():
  assert sharding.parse_mesh_arg("1,1,-1") == (1, 1, -1)
  assert sharding.parse_mesh_arg("tensor=4") == (1, 1, 4)
  assert sharding.parse_mesh_arg("fsdp=2, tensor=-1") == (1, 2, -1)
  assert sharding.parse_mesh_arg("tensor=2,data=2") == (2, 1, 2)
  with pytest.raises(ConfigError, match=r"^--mesh: unknown mesh axis 'model'"):
    sharding.parse_mesh_arg("model=4")
  with pytest.raises(ConfigError, match=r"^--mesh: mesh axis 'tensor' given twice"):
    sharding.parse_mesh_arg("tensor=2,tensor=2")
  with pytest.raises(ConfigError, match=r"^--mesh: expected sizes like"):
    sharding.parse_mesh_arg("tensor=2,4")


def test_make_mesh_is_auto_and_named():
  mesh = sharding.make_mesh((2, 2, 2))
  assert mesh.axis_names == sharding.MESH_AXES
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  with sharding.use_mesh(mesh):
    pass


def test_logical_to_physical_rules_and_collision():
  r = sharding.ShardingRules()
  assert r.mesh_axes("batch") == ("data", "fsdp")
  assert sharding.logical_to_physical(P("batch", None), r) == P(("data", "fsdp"), None)
  assert sharding.logical_to_physical(P("embed", "heads", "head_dim"), r) == \
    P("fsdp", "tensor", None)
  assert sharding.logical_to_physical(P("hash_tables", "hash_vocab", None), r) == \
    P(None, ("fsdp", "tensor"), None)
  assert sharding.logical_to_physical(P("embed_local", "heads", "head_dim"), r) == \
    P("fsdp", "tensor", None)
  with pytest.raises(ValueError, match="more than once"):
    sharding.logical_to_physical(P("embed", "hash_vocab"), r)  # fsdp twice
  bad = sharding.ShardingRules.from_dict({"embed": "tensor"})
  with pytest.raises(ValueError, match=r"\['tensor'\]"):
    sharding.logical_to_physical(P("embed", "mlp"), bad)
  with pytest.raises(ConfigError, match=r"^mesh.rules.embedd: unknown logical axis"):
    sharding.ShardingRules.from_dict({"embedd": "fsdp"})
  with pytest.raises(ConfigError, match=r"^mesh.rules.embed: unknown mesh axis 'model'"):
    sharding.ShardingRules.from_dict({"embed": "model"})


def test_uneven_dimension_moves_axis_to_a_dimension_it_divides():
  mesh = sharding.make_mesh((1, 8, 1))
  r = sharding.ShardingRules()
  # 500002 rows do not split 8 ways: fsdp moves to the 1280-wide embedding dimension (the
  # size-1 tensor axis stays where the rule put it).
  spec = sharding.logical_to_physical(P("hash_tables", "hash_vocab", None), r,
                                      (6, 500002, 1280), mesh)
  assert spec == P(None, "tensor", "fsdp")
  mesh2 = sharding.make_mesh((1, 4, 2))
  spec = sharding.logical_to_physical(P("hash_tables", "hash_vocab", None), r,
                                      (6, 500002, 1280), mesh2)
  assert spec == P(None, "tensor", "fsdp")  # 500002 = 2 x 250001: tensor fits, fsdp moves
  # Nothing divisible: replicated rather than an error at jit time.
  assert sharding.logical_to_physical(P("embed"), r, (7,), mesh) == P(None)


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 2, 2), (1, 2, 4)])
def test_7b_geometry_shards_abstractly(mesh_shape):
  cfg = model_cfg("blt_7b")
  mesh = sharding.make_mesh(mesh_shape)
  abstract = model.abstract_sharded_params(cfg, mesh)  # shapes only: nothing allocated
  leaves = jax.tree.leaves(abstract)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  counts = num_params(cfg)
  total = sum(math.prod(x.shape) for x in leaves)
  assert total == counts["total"]
  hash_leaf = abstract["local_encoder"]["hash_embeddings"]["embedding"]
  assert math.prod(hash_leaf.shape) == counts["hash"]
  per_device = sharding.shard_bytes_per_device(abstract)
  assert len(per_device) == 8
  # Every big tensor (global blocks, hash tables) is split over all of fsdp x tensor (the data
  # axis holds replicas); only small local-model / entropy-model tensors may stay replicated.
  split = mesh.shape["fsdp"] * mesh.shape["tensor"]
  big = [x for x in leaves if math.prod(x.shape) >= 2**24]
  for x in big:
    shard = x.sharding.shard_shape(x.shape)
    assert math.prod(shard) * split == math.prod(x.shape), (x.shape, x.sharding.spec)
  small_bytes = 4 * sum(math.prod(x.shape) for x in leaves if math.prod(x.shape) < 2**24)
  big_bytes = 4 * sum(math.prod(x.shape) for x in big)
  assert big_bytes > 0.85 * 4 * total
  assert max(per_device.values()) <= big_bytes / split + small_bytes


def _logical_names(spec_tree) -> set[str]:
  specs = jax.tree.leaves(spec_tree, is_leaf=lambda x: isinstance(x, P))
  # A tuple entry is a merged dimension (the decoding caches' [B·G, C, K] rows).
  return {n for spec in specs for name in spec if name is not None
          for n in (name if isinstance(name, tuple) else (name,))}


def test_every_rule_is_carried_by_some_array():
  """No dead rules: every logical name is on a parameter of blt_1b or blt_tiny, on the
  decoding state, or is `batch` (training rows, `sharding.batch_sharding`)."""
  from bltjax.decoding import engine

  names = {"batch"}
  for name in ("blt_1b", "blt_tiny"):
    names |= _logical_names(model.logical_axes(model_cfg(name)))
  cfg = model_cfg("blt_tiny")
  state = jax.eval_shape(lambda p: engine.empty_state(p, cfg, 2, engine.CacheSpec(16, 32)),
                         model.abstract_params(cfg))
  names |= _logical_names(engine.state_logical_axes(state))
  rules = {f.name for f in dataclasses.fields(sharding.ShardingRules)}
  assert names == rules, (sorted(rules - names), sorted(names - rules))


def test_1b_params_are_all_split_over_fsdp():
  """Local models, entropy model and hash tables included: nothing replicated on (1, 8, 1), so
  params, Adam moments and grads cost 1/8 per device (docs/benchmarks.md, training memory)."""
  mesh = sharding.make_mesh((1, 8, 1))
  abstract = model.abstract_sharded_params(model_cfg("blt_1b"), mesh)
  replicated = {jax.tree_util.keystr(k): math.prod(x.shape) * x.dtype.itemsize
                for k, x in jax.tree_util.tree_leaves_with_path(abstract)
                if math.prod(x.sharding.shard_shape(x.shape)) * 8 != math.prod(x.shape)}
  assert replicated == {}


def test_release_param_counts():
  n1 = num_params(model_cfg("blt_1b"))
  assert abs(n1["encoder"] + n1["global"] + n1["decoder"] - 1.46e9) < 0.01e9
  assert abs(n1["hash"] - 3.07e9) < 0.01e9
  n7 = num_params(model_cfg("blt_7b"))
  assert abs(n7["hash"] - 3.84e9) < 0.01e9
  assert abs(n7["global"] - 6.497e9) < 0.001e9  # includes the 5120 -> 4096 projection
  assert model_cfg("blt_7b").needs_global_projection


def test_init_sharded_from_birth_matches_plain_init():
  cfg = resolve(tiny_train_config.get_config("blt"), 8).model
  mesh = sharding.make_mesh((2, 2, 2))
  rng = jax.random.key(3)
  # The entropy model alone: the same mechanism at a fraction of the init's XLA compile time.
  keys = ("entropy_model",)
  sharded = model.init_sharded(cfg, rng, mesh, keys=keys)
  plain = jax.jit(lambda r: model.init_params(cfg, r)["entropy_model"])(rng)  # one device
  shards = model.param_shardings(cfg, mesh, keys=keys)
  for (path, a), b, s in zip(jax.tree_util.tree_leaves_with_path(sharded), jax.tree.leaves(plain),
                             jax.tree.leaves(shards)):
    assert a.sharding == s, path
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
  wq = sharded["entropy_model"]["layers_0"]["attention"]["wq"]["kernel"]
  assert wq.sharding.spec == P("fsdp", "tensor", None)  # [D, H, K]: like the global model
  full = model.param_shardings(cfg, mesh)
  g_wq = full["global_transformer"]["layers_0"]["attention"]["wq"]["kernel"]
  assert g_wq.spec == P("fsdp", "tensor", None)
  hash_table = full["local_encoder"]["hash_embeddings"]["embedding"]  # [2, 257, 32]
  assert hash_table.spec == P(None, None, ("fsdp", "tensor"))  # 257 rows: moved to D


def test_adam_moments_are_sharded_like_their_params(tmp_path):
  # fsdp must shard all of the state: XLA's own placement of tx.init's zeros replicated mu/nu.
  from bltjax.training import train

  c = load_config("blt_tiny")
  c.model.patcher.mode = "static"
  c.mesh.shape = (1, 8, 1)
  tr = train.Trainer.create(c, tmp_path)
  ks = jax.tree_util.keystr
  want = {ks(k): sh.spec for k, sh in jax.tree_util.tree_leaves_with_path(
    tr.state_shardings["params"], is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))}
  got = {}
  for k, sh in jax.tree_util.tree_leaves_with_path(
      tr.state_shardings["opt_state"], is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)):
    for moment in (".mu[", ".nu["):
      if moment in ks(k):
        got.setdefault(moment, {})[ks(k).split(moment[:-1], 1)[1]] = sh.spec
  assert set(got) == {".mu[", ".nu["}
  assert got[".mu["] == want and got[".nu["] == want
  assert any(s != P() for s in want.values())
