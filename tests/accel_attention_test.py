"""bltjax/modeling/accel.py: the accelerator attention kernels equal the xla reference kernels.

Splash attention (the TPU kernel) runs in Pallas interpret mode here; the cuDNN call's mask
mapping is checked through `jax.nn.dot_product_attention`'s xla implementation (the same call
with implementation="cudnn" needs a GPU). Tolerances, fp32: values atol 1e-6, gradients atol 1e-5
(those of tests/kernels_test.py).
"""

import dataclasses
import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bltjax.config import BLTConfig, ConfigError
from bltjax.modeling import accel, kernels, model
from bltjax.modeling.layers import attend, local_mask
from tests.kernels_test import _packed_ids, _rand, packed_rows
from tests.model_fixtures import tiny_config, tiny_params

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
VAL_ATOL, GRAD_ATOL = 1e-6, 1e-5


def _qkv(s: int, seed: int, h: int = 4, g: int = 2, kd: int = 16, b: int = 2):
  ks = jax.random.split(jax.random.key(seed), 4)
  return (_rand(ks[0], b, s, h, kd), _rand(ks[1], b, s, g, kd), _rand(ks[2], b, s, g, kd),
          _rand(ks[3], b, s, h, kd))


def _same(fast, ref, q, k, v, r, valid):
  """fast == ref at valid queries, 0 at padded ones (the reference's value there is never read:
  padded positions are neither keys nor loss targets), and equal q, k, v gradients of a loss
  over the valid queries."""
  got, want = jit(fast)(q, k, v), jit(ref)(q, k, v)
  ok = np.asarray(valid)
  np.testing.assert_allclose(np.asarray(got)[ok], np.asarray(want)[ok], atol=VAL_ATOL, rtol=0)
  np.testing.assert_array_equal(np.asarray(got)[~ok], 0.0)
  r = jnp.where(valid[:, :, None, None], r, 0.0)
  loss = lambda f: lambda *a: jnp.sum(f(*a) * r)  # noqa: E731
  g_fast = jit(jax.grad(loss(fast), argnums=(0, 1, 2)))(q, k, v)
  g_ref = jit(jax.grad(loss(ref), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g_fast, g_ref, strict=True):
    np.testing.assert_allclose(a, b, atol=GRAD_ATOL, rtol=0)


# ------------------------------------------------------------------------------------------------
# Splash (Pallas, interpret mode) against the xla kernels.


@pytest.mark.parametrize("s,window", [(200, 48), (160, 1), (130, 300)])
def test_splash_local_attention_equals_xla(s, window):
  """Windowed, three/two documents per row, right padding, GQA (4 query heads over 2)."""
  pos, doc, valid, _ = packed_rows(s)
  q, k, v, r = _qkv(s, seed=s + window)
  _same(lambda q, k, v: accel.pallas_attend(q, k, v, doc, valid, window),
        lambda q, k, v: kernels.local_attend(q, k, v, pos, doc, valid, window, 32, None),
        q, k, v, r, valid)


@pytest.mark.parametrize("s", [140, 260])
def test_splash_causal_attention_equals_xla(s):
  """The global model's form (no window) against the blocked causal kernel."""
  pos, doc, valid, _ = packed_rows(s)
  q, k, v, r = _qkv(s, seed=s)
  _same(lambda q, k, v: accel.pallas_attend(q, k, v, doc, valid, None),
        lambda q, k, v: kernels.causal_attend(q, k, v, pos, doc, valid, 64),
        q, k, v, r, valid)


def test_splash_under_a_mesh_equals_xla():
  """With a mesh current, splash runs per device under shard_map (rows over fsdp, heads over
  tensor; 4 of the 8 fake CPU devices): same values and gradients."""
  from bltjax.modeling import sharding
  s, w = 136, 40
  pos, doc, valid, _ = packed_rows(s)
  q, k, v, r = _qkv(s, seed=11)
  mesh = sharding.make_mesh((1, 2, 2), devices=jax.devices()[:4])
  with sharding.use_mesh(mesh):
    _same(lambda q, k, v: accel.pallas_attend(q, k, v, doc, valid, w),
          lambda q, k, v: kernels.local_attend(q, k, v, pos, doc, valid, w, None, None),
          q, k, v, r, valid)
    text = jax.jit(lambda q, k, v: accel.pallas_attend(q, k, v, doc, valid, w)).lower(
      q, k, v).as_text()
  assert "shard_map" in text or "manual" in text  # ran per device


def test_splash_layout_pads_to_blocks():
  assert accel.splash_layout(8192) == (512, 8192)
  assert accel.splash_layout(2049) == (256, 2304)
  assert accel.splash_layout(200) == (256, 256)
  assert accel.splash_layout(130) == (256, 256)
  assert accel.splash_layout(1) == (128, 128)


# ------------------------------------------------------------------------------------------------
# cuDNN's mask mapping, through the xla implementation of the same call.


@pytest.mark.parametrize("window", [None, 7, 1])
def test_dot_product_attention_mask_mapping_equals_local_mask(window):
  """One document per row, right padding: `dpa_attend` == `attend` under `local_mask`."""
  s = 40
  pos, _, valid, _ = packed_rows(s)
  doc = jnp.zeros_like(pos)
  q, k, v, r = _qkv(s, seed=3)
  assert bool(accel.dpa_fits(pos, doc, valid))
  _same(lambda q, k, v: accel.dpa_attend(q, k, v, valid, window, "xla"),
        lambda q, k, v: attend(q, k, v, local_mask(pos, pos, doc, doc, valid, window)),
        q, k, v, r, valid)


def test_cudnn_dispatch_falls_back_for_packed_documents():
  """`cudnn_attend`'s device-side choice: packed documents take xla, single documents the
  dot_product_attention call; both equal the reference."""
  s, w = 40, 9
  pos, doc, valid, _ = packed_rows(s)
  q, k, v, r = _qkv(s, seed=4)
  ref = lambda d: lambda q, k, v: attend(q, k, v, local_mask(pos, pos, d, d, valid, w))  # noqa
  for d, fits in ((doc, False), (jnp.zeros_like(doc), True)):
    assert bool(accel.dpa_fits(pos, d, valid)) == fits
    _same(lambda q, k, v, d=d: accel.cudnn_attend(q, k, v, pos, d, valid, w, ref(d), "xla"),
          ref(d), q, k, v, r, valid)
  assert not bool(accel.dpa_fits(pos, jnp.zeros_like(doc), valid.at[0, 3].set(False)))
  assert not bool(accel.dpa_fits(pos.at[0, 5].set(0), jnp.zeros_like(doc), valid))


def test_cudnn_refuses_fp32_and_uses_xla():
  assert accel.cudnn_unfit(jnp.float32, 64) is not None
  assert accel.cudnn_unfit(jnp.bfloat16, 64) is None
  s = 16
  pos, doc, valid, _ = packed_rows(s)
  q, k, v, _ = _qkv(s, seed=5)
  ref = lambda q, k, v: attend(q, k, v, local_mask(pos, pos, doc, doc, valid, 4))  # noqa: E731
  np.testing.assert_array_equal(accel.cudnn_attend(q, k, v, pos, doc, valid, 4, ref, "cudnn"),
                                ref(q, k, v))


# ------------------------------------------------------------------------------------------------
# The config switch and the whole model.


def test_attention_config_key():
  cfg = tiny_config()
  assert cfg.attention == "auto"
  with pytest.raises(ConfigError, match="^attention: must be one of"):
    cfg.replace(attention="flash")
  d = cfg.to_dict()
  assert BLTConfig.from_dict(d).attention == "auto"
  d.pop("attention")  # configs and checkpoints written before the key
  assert BLTConfig.from_dict(d) == cfg
  d["attention"] = "pallas"
  assert BLTConfig.from_dict(d).attention == "pallas"
  from bltjax.training import train_config
  base = train_config.base_config()
  assert base.model.attention == "auto"


def test_resolve_on_cpu():
  assert jax.default_backend() == "cpu"
  assert accel.resolve("xla", 4096) == "xla"
  assert accel.resolve("auto", accel.SPLASH_MIN_SEQ - 1) == "xla"
  assert accel.resolve("auto", 4096) == "tpu_or_xla"
  assert accel.resolve("pallas", 8) == "pallas"
  assert accel.resolve("cudnn", 8) == "cudnn"


def _model_run(cfg, params, ids, start, lengths):
  s = ids.shape[1]

  def loss(p):
    ok = (jnp.arange(s)[None] < lengths[:, None])[..., None]
    return jnp.sum(jnp.where(ok, jax.nn.log_softmax(
      model.forward(p, cfg, ids, start, lengths)), 0.0)[..., 5])

  logits = jit(lambda p: model.forward(p, cfg, ids, start, lengths))(params)
  ent = jit(lambda p: model.entropies(p, cfg, ids, lengths))(params)
  return logits, ent, jit(jax.grad(loss))(params)


def _model_inputs(s: int, w: int):
  cfg = tiny_config(window=w, max_patch_length=6)
  params = tiny_params(cfg)
  ids = _packed_ids(s)
  lengths = jnp.asarray([s, s - 7], jnp.int32)
  start = model.patch(params, cfg, ids, lengths)
  return cfg, params, ids, start, lengths


def test_auto_on_cpu_is_the_xla_program():
  """auto on a CPU run: the TPU branch is pruned at lowering, so logits, entropies and gradients
  are bit-identical to attention="xla" (rows of 160 bytes: every local stack takes the
  `tpu_or_xla` pattern)."""
  s, w = 160, 24
  cfg, params, ids, start, lengths = _model_inputs(s, w)
  assert isinstance(kernels.self_attention(cfg.encoder, *(jnp.zeros((1, s), jnp.int32),) * 2,
                                           jnp.ones((1, s), bool), attention="auto"),
                    kernels.LocalPattern)
  auto = _model_run(cfg, params, ids, start, lengths)
  ref = _model_run(cfg.replace(attention="xla"), params, ids, start, lengths)
  for a, b in zip(jax.tree.leaves(auto), jax.tree.leaves(ref), strict=True):
    np.testing.assert_array_equal(a, b)


def _hlo_ops(text: str) -> list[str]:
  """Instruction lines of an HLO module without metadata (source lines differ)."""
  lines = [re.sub(r",? ?metadata=\{[^}]*\}", "", ln).strip() for ln in text.splitlines()]
  return [ln for ln in lines if "=" in ln and not ln.startswith(("HloModule", "FileNames",
                                                                  "FunctionNames"))]


def test_auto_on_cpu_compiles_no_conditional_and_no_pallas():
  s, w = 160, 24
  pos, doc, valid, _ = packed_rows(s)
  q, k, v, _ = _qkv(s, seed=9)
  pat = kernels.LocalPattern(pos, doc, valid, w, impl="tpu_or_xla")
  text = jax.jit(jax.grad(lambda q: jnp.sum(pat.attend(q, k, v)))).lower(q).compile().as_text()
  ops = _hlo_ops(text)
  assert any(" dot(" in ln for ln in ops)  # the attention is there
  assert not any(re.search(r" (conditional|custom-call)\(", ln) for ln in ops)


# ~100 s of interpret-mode kernels on 2 cores; the per-kernel equalities above stay in make test.
@pytest.mark.slow
def test_model_with_pallas_equals_xla():
  """The whole BLT (entropy model, encoder, global model, decoder; packed documents, padding)
  with every self-attention through splash in interpret mode: logits, entropies and gradients
  equal attention="xla" (tolerances of tests/kernels_test.py's whole-model test)."""
  s, w = 130, 24
  cfg, params, ids, start, lengths = _model_inputs(s, w)
  got = _model_run(cfg.replace(attention="pallas"), params, ids, start, lengths)
  want = _model_run(cfg.replace(attention="xla"), params, ids, start, lengths)
  valid = np.arange(s)[None] < np.asarray(lengths)[:, None]
  for a, b in zip(got[:2], want[:2], strict=True):
    np.testing.assert_allclose(np.asarray(a)[valid], np.asarray(b)[valid], atol=2e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got[2]), jax.tree.leaves(want[2]), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_bltd_forward_with_pallas_equals_xla():
  """BLT-D's clean stream (`diffusion.two_streams`) and pooling take the switch too: block and clean
  logits with attention="pallas" equal "xla" (documents that reuse an id, padding)."""
  from bltjax.training import diffusion
  from tests import diffusion_test as dt
  cfg, params, b = dt.setup()

  def run(c):
    return jit(lambda pp, bb: diffusion.bltd_forward(
      pp, c, bb, jax.random.key(2), max_patches=dt.S + 1, t=0.6))(params, b)

  got, want = run(cfg.replace(attention="pallas")), run(cfg.replace(attention="xla"))
  sel = np.asarray(want["blocks"]["valid_BxMxZ"])
  assert sel.sum() > 4
  np.testing.assert_allclose(np.asarray(got["block_logits_BxMxZxV"])[sel],
                             np.asarray(want["block_logits_BxMxZxV"])[sel], atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(got["clean_logits_BxSxV"])[b["valid"]],
                             np.asarray(want["clean_logits_BxSxV"])[b["valid"]], atol=2e-5,
                             rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Lowering for TPU ahead of time (needs libtpu; no TPU).


def _tpu_devices():
  # Other processes on this host may hold libtpu's lock file (ahead-of-time compiles): allowed.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    import libtpu  # noqa: F401
    from jax.experimental import topologies
    return topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices
  except Exception as e:  # noqa: BLE001 - any failure means no TPU compiler here
    pytest.skip(f"no TPU compiler (libtpu) on this host: {type(e).__name__}")


@pytest.mark.parametrize("window", [None, 256])
def test_splash_compiles_for_tpu(window):
  """Values and gradients of the Pallas kernels compile for TPU v5e from this CPU host, rows
  over a 4-chip mesh (shard_map), with the TPU kernel (a Mosaic custom call), not interpret."""
  devices = _tpu_devices()
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  from bltjax.modeling import sharding
  mesh = Mesh(np.asarray(devices).reshape(1, 4, 1), sharding.MESH_AXES)
  b, s, h, g, kd = 4, 1000, 8, 4, 128
  row = lambda *shape, dt=jnp.bfloat16: jax.ShapeDtypeStruct(  # noqa: E731
    shape, dt, sharding=NamedSharding(mesh, P(("data", "fsdp"), *([None] * (len(shape) - 1)))))

  def loss(q, k, v, doc, valid):
    return jnp.sum(accel.pallas_attend(q, k, v, doc, valid, window).astype(jnp.float32))

  # conftest's global "highest" matmul precision asks Mosaic for fp32 passes on bf16 operands,
  # which it refuses: compile at the default precision, as training does.
  with sharding.use_mesh(mesh), jax.default_matmul_precision("default"):
    lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(
      row(b, s, h, kd), row(b, s, g, kd), row(b, s, g, kd), row(b, s, dt=jnp.int32),
      row(b, s, dt=bool))
    text = lowered.compile().as_text()
  assert "tpu_custom_call" in text


def test_blt_training_gradient_compiles_for_tpu_with_auto():
  """The tiny BLT's loss gradient, attention="auto", lowered for one TPU v5e chip from this CPU
  host: the splash kernels (Mosaic custom calls) replace the einsum attention, and the
  encoder's pooling has no segment-max scatter left (the hash-table and byte-embedding gathers
  keep their scatter-add gradients, as on any backend)."""
  devices = _tpu_devices()
  s = 256
  cfg = tiny_config(window=64, mode="static", max_patch_length=None).replace(
    patcher=dataclasses.replace(tiny_config().patcher, mode="static", patch_size=2.0),
    dtype="bfloat16", entropy=None)
  params = jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))
  dev = jax.sharding.SingleDeviceSharding(devices[0])
  spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev)  # noqa: E731
  ids = jax.ShapeDtypeStruct((2, s), jnp.int32, sharding=dev)
  start = jax.ShapeDtypeStruct((2, s + 1), bool, sharding=dev)

  def loss(p, ids, start):
    return jnp.mean(model.forward(p, cfg, ids, start, max_patches=s // 2 + 2)[..., 7])

  with jax.default_matmul_precision("default"):
    text = jax.jit(jax.grad(loss)).lower(jax.tree.map(spec, params), ids, start).compile(
      ).as_text()
  ops = _hlo_ops(text)
  assert sum('custom_call_target="tpu_custom_call"' in ln for ln in ops) >= 6  # fwd, dq, dkv x 2+
  assert _max_scatters(text) == 1  # byte_arrays' per-patch EOS flag (int32), not the pooling


def _max_scatters(hlo: str) -> int:
  """Scatters of an HLO module whose combiner takes a maximum (segment_max)."""
  bodies = dict(re.findall(r"^%?([\w.\-]+) \([^\n]*\{\n(.*?)^\}", hlo, re.S | re.M))
  maxes = {name for name, body in bodies.items() if " maximum(" in body}
  return sum(m in maxes for m in re.findall(r" scatter\(.*?to_apply=%?([\w.\-]+)", hlo))


# ------------------------------------------------------------------------------------------------
# Scatter-free pooling.


def _pool_case(s: int, p: int, seed: int):
  """Two rows (the second right-padded), p patch slots: random starts, the last slots empty, and
  one patch made only of padding in row 1."""
  _, _, valid, _ = packed_rows(s)
  rng = np.random.default_rng(seed)
  starts = np.sort(rng.choice(np.arange(1, s), p - 3, replace=False))
  pid = np.searchsorted(starts, np.arange(s), side="right")  # p - 2 patches used: 2 empty
  pid = np.broadcast_to(pid, (2, s)).astype(np.int32).copy()
  return jnp.asarray(pid), valid


@pytest.mark.parametrize("s,p", [(16, 6), (40, 12), (33, 30)])
def test_scan_max_pool_equals_scatter(s, p):
  pid, valid = _pool_case(s, p, seed=s)
  h = _rand(jax.random.key(p), 2, s, 8)
  r = _rand(jax.random.key(p + 1), 2, p, 8)
  fast = lambda h: kernels.max_pool(h, pid, valid, p, scan=True)  # noqa: E731
  ref = lambda h: kernels.max_pool(h, pid, valid, p, scan=False)  # noqa: E731
  np.testing.assert_array_equal(jit(fast)(h), jit(ref)(h))  # a max is exact
  np.testing.assert_array_equal(np.asarray(jit(fast)(h))[:, p - 2:], 0.0)  # empty patches
  g = lambda f: jit(jax.grad(lambda h: jnp.sum(f(h) * r)))(h)  # noqa: E731
  np.testing.assert_array_equal(g(fast), g(ref))


@pytest.mark.parametrize("s,p,c", [(16, 6, 2), (40, 12, 1), (33, 9, 3)])
def test_scan_patch_attend_equals_scatter(s, p, c):
  pid, valid = _pool_case(s, p, seed=s + 1)
  ks = jax.random.split(jax.random.key(s), 4)
  h, kd = 2, 4
  q, k, v = _rand(ks[0], 2, p, c, h, kd), _rand(ks[1], 2, s, h, kd), _rand(ks[2], 2, s, h, kd)
  r = _rand(ks[3], 2, p, c, h, kd)
  fast = lambda q, k, v: kernels.patch_attend(q, k, v, pid, valid, scan=True)  # noqa: E731
  ref = lambda q, k, v: kernels.patch_attend(q, k, v, pid, valid, scan=False)  # noqa: E731
  np.testing.assert_allclose(jit(fast)(q, k, v), jit(ref)(q, k, v), atol=VAL_ATOL, rtol=0)
  loss = lambda f: lambda *a: jnp.sum(f(*a) * r)  # noqa: E731
  g_fast = jit(jax.grad(loss(fast), argnums=(0, 1, 2)))(q, k, v)
  g_ref = jit(jax.grad(loss(ref), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g_fast, g_ref, strict=True):
    np.testing.assert_allclose(a, b, atol=GRAD_ATOL, rtol=0)


def test_scan_pooling_has_no_scatter():
  s, p = 40, 12
  pid, valid = _pool_case(s, p, seed=2)
  h = _rand(jax.random.key(0), 2, s, 8)
  q, kv = _rand(jax.random.key(1), 2, p, 2, 2, 4), _rand(jax.random.key(2), 2, s, 2, 4)

  def f(h, q, kv):
    pooled = kernels.max_pool(h, pid, valid, p, scan=True)
    return jnp.sum(pooled) + jnp.sum(kernels.patch_attend(q, kv, kv, pid, valid, scan=True))

  text = jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(h, q, kv).as_text()
  assert "scatter" not in text


def test_dataclass_pattern_keeps_impl_static():
  pos, doc, valid, _ = packed_rows(8)
  pat = kernels.LocalPattern(pos, doc, valid, 4, impl="pallas")
  leaves, tree = jax.tree.flatten(pat)
  assert len(leaves) == 3 and jax.tree.unflatten(tree, leaves).impl == "pallas"
  assert dataclasses.replace(pat, impl="xla").impl == "xla"
