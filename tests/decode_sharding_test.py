"""Sharded decoding on 8 fake CPU devices: the decode state is split (rows over data x fsdp,
heads over tensor), stays split through the loop, and every method's greedy output equals
single-device decoding byte for byte."""

import functools

import jax
import pytest
from jax.sharding import PartitionSpec as P
from model_fixtures import PROMPTS, bltd_setup

from bltjax.decoding import engine, generation, runloop
from bltjax.decoding.generation import Options
from bltjax.modeling import model, sharding

MAX_NEW = 24
# Two short prompts (compilation dominates): the power-of-two batch (2) is padded to 4 rows for
# data x fsdp = 4.
BATCH = [PROMPTS[0], PROMPTS[1]]


@functools.cache
def _mesh():
  return sharding.make_mesh((2, 2, 2))


def test_state_shardings_follow_rules_and_drop_what_does_not_divide():
  cfg, params = bltd_setup()
  shapes = lambda b: jax.eval_shape(  # noqa: E731
    lambda: engine.empty_state(params, cfg, b, engine.CacheSpec(16, 32)))
  sh = engine.state_shardings(shapes(4), _mesh())
  rows = ("data", "fsdp")
  # Caches: one [B·G, slots, K] buffer per layer, rows over data x fsdp, then heads over tensor.
  merged = ("data", "fsdp", "tensor")
  assert [x.spec for x in sh.glob_k] == [P(merged, None, None)] * cfg.global_.n_layers
  assert [x.spec for x in sh.dec.k] == [P(merged, None, None)] * cfg.decoder.n_layers
  assert sh.dec.pos.spec == P(rows, None)
  assert sh.lat_k.spec == P(None, rows, None, "tensor", None)
  assert sh.patch_k.spec == P(rows, None, "tensor", None) and sh.n.spec == P(rows)
  # 2 rows on data x fsdp = 2 x 2: data only (`prepare` pads the batch so that this never
  # happens in decoding).
  assert engine.state_shardings(shapes(2), _mesh()).glob_k[0].spec == P(("data", "tensor"), None,
                                                                        None)
  # 2 kv heads on tensor = 4: replicated over tensor (never moved to the slot axis), while the
  # 4 latent heads split.
  wide = engine.state_shardings(shapes(4), sharding.make_mesh((2, 1, 4)))
  assert wide.glob_k[0].spec == P(("data", "fsdp"), None, None)
  assert wide.lat_k.spec == P(None, ("data", "fsdp"), None, "tensor", None)


def _spy_loop(monkeypatch, seen):
  """Records (sharding, ndim) of every state array entering and leaving `runloop.loop`."""
  real = runloop.loop
  shards = lambda st: jax.tree.map(lambda x: (x.sharding, x.ndim), st)  # noqa: E731

  def loop(params, cfg, state, *a, **kw):
    seen["in"] = shards(state)
    g = real(params, cfg, state, *a, **kw)
    seen["out"] = shards(g.state)
    return g

  monkeypatch.setattr(runloop, "loop", loop)


@pytest.mark.parametrize("method,opts", [
  ("ar", {}), ("blts", {"draft_k": 4}), ("bltd", {}), ("bltdv", {})])
def test_sharded_greedy_equals_single_device(method, opts, monkeypatch):
  cfg, params = bltd_setup()  # BLT-D weights decode with every method (one cached setup)
  mesh = _mesh()
  sharded = jax.device_put(params, model.param_shardings(cfg, mesh))
  run = lambda p, **kw: generation.generate(  # noqa: E731
    p, cfg, BATCH, method=method, max_new=MAX_NEW, options=Options(**opts), **kw)
  want = run(params)
  seen = {}
  _spy_loop(monkeypatch, seen)
  got = run(sharded, mesh=mesh)
  assert [g.new_ids for g in got] == [g.new_ids for g in want]
  assert [g.reason for g in got] == [g.reason for g in want]
  assert got == want  # counters too: a row's passes never depend on its batch or placement
  assert any(len(g.new_ids) > 4 for g in want)
  # The caches are really split (not silently replicated), and the loop keeps every array's
  # sharding.
  split = jax.NamedSharding(mesh, P(("data", "fsdp", "tensor")))  # [B·G, slots, K] rows
  for glob, dec in ((seen["in"].glob_k[0], seen["in"].dec.k[0]),
                    (seen["out"].glob_k[0], seen["out"].dec.k[0])):
    assert glob[0].is_equivalent_to(split, 3) and dec[0].is_equivalent_to(split, 3)
    assert len(glob[0].device_set) == 8 and not glob[0].is_fully_replicated
  is_pair = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], int)  # noqa: E731
  pairs = zip(jax.tree.leaves(seen["in"], is_leaf=is_pair),
              jax.tree.leaves(seen["out"], is_leaf=is_pair), strict=True)
  assert all(a.is_equivalent_to(b, n) for (a, n), (b, _) in pairs)
