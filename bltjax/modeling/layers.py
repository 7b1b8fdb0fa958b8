"""Building blocks shared by the four stacks: norm, RoPE, attention, SwiGLU, cross-attention.

Every parameter carries logical axis names (see `sharding.py`), so one rules table shards them.
Attention kernels are 3-D ([D, H, K] / [H, K, D]) so the head axis is visible to the rules.
Modules are `setup`-style so the cached decoding path can call `project`/`output` separately.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from bltjax.config import TransformerConfig

# Finite mask value: fully masked rows must not become NaN (we zero them explicitly).
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

Dtype = Any


def dtype_of(name: str) -> Dtype:
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def remat_policy(remat: str):
  """The checkpoint policy of `remat` "full" (None: save nothing) or "dots" (save the weight
  matmuls' outputs); stacks and BLT-D's layers are rematerialised with it."""
  return jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims if remat == "dots" else None


def trunc_normal(std: float):
  """Truncated normal cut at ±3σ (the official `init_weights`)."""

  def init(key, shape, dtype=jnp.float32):
    return (std * jax.random.truncated_normal(key, -3.0, 3.0, shape, jnp.float32)).astype(dtype)

  return init


class Einsum(nn.Module):
  """A bias-free linear map `eq` with a named kernel of the given shape and logical axes."""

  shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  eq: str
  std: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  out_dtype: Dtype | None = None  # None: the compute dtype; the logit heads ask for fp32

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
      "kernel", nn.with_logical_partitioning(trunc_normal(self.std), self.axes), self.shape,
      self.param_dtype)
    # fp32 output = the matmul's fp32 accumulator unrounded (bf16 logits would tie argmaxes).
    return jnp.einsum(self.eq, x.astype(self.dtype), kernel.astype(self.dtype),
                      preferred_element_type=self.out_dtype)


class RMSNorm(nn.Module):
  eps: float = 1e-5
  axis_name: str = "embed"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones,
                                                             (self.axis_name,)),
                       (x.shape[-1],), self.param_dtype)
    # Variance in fp32 whatever the compute dtype (docs/architecture.md).
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    scale = scale.astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (-1,))
    return (y * scale).astype(self.dtype)


def rope(x_BxSxHxK: jnp.ndarray, pos_BxS: jnp.ndarray, theta: float) -> jnp.ndarray:
  """Interleaved RoPE: pairs (2m, 2m+1) rotate by pos·θ^(−2m/K); fp32 math, cast back."""
  k = x_BxSxHxK.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, k, 2, dtype=jnp.float32) / k))
  ang_BxSxM = pos_BxS.astype(jnp.float32)[..., None] * inv_freq[None, None, :]
  cos, sin = jnp.cos(ang_BxSxM)[:, :, None, :], jnp.sin(ang_BxSxM)[:, :, None, :]
  x = x_BxSxHxK.astype(jnp.float32)
  x0, x1 = x[..., 0::2], x[..., 1::2]
  out = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
  return out.reshape(x.shape).astype(x_BxSxHxK.dtype)


class CacheKeys(NamedTuple):
  """Keys/values that queries read besides their own new keys (a decoding cache), [B·G, C, K]
  with batch and key heads merged, row-major (for a stack: one such array per layer, `layer(i)`
  picks it). Merged because XLA strips a size-1 dimension from a matmul operand: with a [B, G,
  C, K] buffer at B = 1, XLA:CPU fused a second copy of each step's write into the read, which
  copied the whole buffer several times per step. Visibility:
  `mask` [B, Q, C] (dense), or slots < `used` [B] read in
  chunks of `CACHE_CHUNK` with a dynamic trip count (a large, mostly empty cache costs what is
  used).

  With `slots` [B, Q] (a decoding ring), a layer first writes its new keys there (out-of-range
  slots are not written) and its queries read the cache alone, `mask` covering the written
  slots: the write precedes every read, so XLA updates the buffer in place (a write after the
  read needs a copy of the buffer)."""

  k: jax.Array | tuple[jax.Array, ...]
  v: jax.Array | tuple[jax.Array, ...]
  mask: jax.Array | None = None
  used: jax.Array | None = None
  slots: jax.Array | None = None

  def layer(self, i: int) -> CacheKeys:
    return CacheKeys(self.k[i], self.v[i], self.mask, self.used, self.slots)

  def write(self, k_BxQxGxK, v_BxQxGxK) -> CacheKeys:
    """The cache with one layer's new keys at `slots`."""
    rows = jnp.broadcast_to(jnp.arange(self.slots.shape[0])[:, None], self.slots.shape)
    return CacheKeys(scatter_slots(self.k, rows, self.slots, k_BxQxGxK),
                     scatter_slots(self.v, rows, self.slots, v_BxQxGxK), self.mask)


def scatter_slots(buf_NxCxK, rows, slots, new):
  """Row b's head g at slot s: buf[b·G + g, s] = new (a [B·G, C, K] cache, `CacheKeys`; in place
  under donation; out-of-range slots are dropped). rows/slots index the update's leading dims:
  new is [*rows.shape, G, K]."""
  g = new.shape[-2]
  n = rows[..., None] * g + jnp.arange(g).reshape((1,) * rows.ndim + (g,))
  return buf_NxCxK.at[n, jnp.broadcast_to(slots[..., None], n.shape)].set(
    new.astype(buf_NxCxK.dtype), mode="drop")


CACHE_CHUNK = 128


class AttnKernel:
  """A visibility pattern that attends q, k, v itself (`kernels.LocalPattern`): stands in for a
  dense mask wherever one goes, without building it. Subclasses define `attend(q, k, v)`."""

  def attend(self, q_BxQxHxK, k_BxTxGxK, v_BxTxGxK) -> jnp.ndarray:
    raise NotImplementedError


def attend(q_BxQxHxK, k_BxTxGxK, v_BxTxGxK, mask_BxQxT, cache: CacheKeys | None = None
           ) -> jnp.ndarray:
  """Softmax attention with GQA (fp32 scores and softmax) for every layout in the package.

  Queries read the new keys k/v under `mask` and, when given, a cache (dense or chunked); k, v
  and mask are None when the cache already holds the new keys (`CacheKeys.slots`). Rows with
  no visible key return exactly 0, not a uniform average.
  """
  b, q, h, kd = q_BxQxHxK.shape
  g = k_BxTxGxK.shape[2] if k_BxTxGxK is not None else cache.k.shape[0] // b
  r = h // g
  q_BxQxGxRxK = q_BxQxHxK.reshape(b, q, g, r, kd)

  def masked_softmax(s, m):
    p = jax.nn.softmax(jnp.where(m, s, MASK_VALUE), axis=-1)
    return jnp.where(m, p, 0.0)  # fully masked rows: all zeros, not a uniform average

  # Against a [B·G, C, K] cache (`CacheKeys`): queries as [B·G, R·Q, K], scores [B, G, R, Q, C].
  q_NxRQxK = q_BxQxGxRxK.transpose(0, 2, 3, 1, 4).reshape(b * g, r * q, kd)

  def cache_scores(k_NxCxK):
    s = jnp.einsum("nxk,nck->nxc", q_NxRQxK, k_NxCxK, preferred_element_type=jnp.float32)
    return s.reshape(b, g, r, q, -1) / math.sqrt(kd)

  def cache_mix(p_BxGxRxQxC, v_NxCxK):  # -> [B, Q, G, R, K]
    o = jnp.einsum("nxc,nck->nxk", p_BxGxRxQxC.reshape(b * g, r * q, -1), v_NxCxK)
    return o.reshape(b, g, r, q, kd).transpose(0, 3, 1, 2, 4)

  if k_BxTxGxK is None:  # the cache alone (dense)
    p = masked_softmax(cache_scores(cache.k), cache.mask[:, None, None]).astype(cache.v.dtype)
    return cache_mix(p, cache.v).reshape(b, q, h, kd)

  s = jnp.einsum("bqgrk,btgk->bgrqt", q_BxQxGxRxK, k_BxTxGxK,
                 preferred_element_type=jnp.float32) / math.sqrt(kd)
  if cache is None:
    p = masked_softmax(s, mask_BxQxT[:, None, None])
    o = jnp.einsum("bgrqt,btgk->bqgrk", p.astype(v_BxTxGxK.dtype), v_BxTxGxK)
    return o.reshape(b, q, h, kd)

  if cache.used is None:
    # A dense cache read before the new keys: one softmax over [cache, new] keys.
    c = cache.k.shape[1]
    m_all = jnp.concatenate([cache.mask, mask_BxQxT], axis=-1)[:, None, None]
    p = masked_softmax(jnp.concatenate([cache_scores(cache.k), s], axis=-1), m_all)
    p = p.astype(v_BxTxGxK.dtype)
    o = cache_mix(p[..., :c], cache.v) + jnp.einsum("bgrqt,btgk->bqgrk", p[..., c:], v_BxTxGxK)
    return o.reshape(b, q, h, kd)

  # Online softmax over the new keys, then chunks of the used cache slots.
  acc = online_softmax(None, s, mask_BxQxT[:, None, None], lambda e: jnp.einsum(
    "bgrqt,btgk->bgrqk", e, v_BxTxGxK, preferred_element_type=jnp.float32))
  chunk = min(CACHE_CHUNK, cache.k.shape[1])

  def body(c, carry):
    kc = jax.lax.dynamic_slice_in_dim(cache.k, c * chunk, chunk, axis=1)
    vc = jax.lax.dynamic_slice_in_dim(cache.v, c * chunk, chunk, axis=1)
    ok = (c * chunk + jnp.arange(chunk))[None, None, :] < cache.used[:, None, None]
    mix = lambda e: cache_mix(e, vc.astype(jnp.float32)).transpose(0, 2, 3, 1, 4)  # noqa: E731
    return online_softmax(carry, cache_scores(kc), ok[:, None, None], mix)

  acc = jax.lax.fori_loop(0, (jnp.max(cache.used) + chunk - 1) // chunk, body, acc)
  o = online_softmax_result(acc)
  return o.transpose(0, 3, 1, 2, 4).reshape(b, q, h, kd).astype(v_BxTxGxK.dtype)


def online_softmax(carry, s_Nx, ok_Nx, mix):
  """One step of the online softmax (FlashAttention, arXiv 2205.14135 §3.1): the running (max
  m, sum l, weighted values a) after one more block of scores s [..., T] (ok: visible keys,
  broadcast against s; `mix(e)` the block's unnormalised probabilities times its values).
  `carry` None: the first block. The max only shifts the softmax: no gradient through it.
  Every blocked attention of the package (`attend`'s cache chunks, `kernels.causal_attend`)
  accumulates with it; `online_softmax_result` normalises."""
  s_Nx = jnp.where(ok_Nx, s_Nx, -jnp.inf)
  mx = jnp.max(s_Nx, axis=-1)
  if carry is not None:
    mx = jnp.maximum(carry[0], mx)
  mx = jax.lax.stop_gradient(mx)
  shift = jnp.where(jnp.isfinite(mx), mx, 0.0)
  e = jnp.exp(s_Nx - shift[..., None])
  if carry is None:
    return mx, jnp.sum(e, axis=-1), mix(e)
  rescale = jnp.exp(carry[0] - shift)  # 0 while nothing was visible (m = -inf)
  return mx, carry[1] * rescale + jnp.sum(e, axis=-1), carry[2] * rescale[..., None] + mix(e)


def online_softmax_result(carry):
  """The attention output a / l of an `online_softmax` carry; 0 for rows that saw no key."""
  _, l, a = carry
  return jnp.where((l > 0)[..., None], a / jnp.where(l > 0, l, 1.0)[..., None], 0.0)


def run_stack(layers, x_BxQxD, pos_BxQ, mask_BxQxT, cache: CacheKeys | None = None,
              cross=None):
  """The one layer loop of every stack, in training and decoding: (x, k, v), k and v per layer
  [B, Q, G, K] (with a writing cache, `CacheKeys.slots`: the updated [B·G, C, K] buffers).

  `mask_BxQxT`: a dense mask, or an `AttnKernel` (long training rows; no cache then).
  `cache` holds per-layer keys the queries also read (a decoding ring or global cache);
  `cross(i, x)` runs before layer i (the decoder's cross-attention to its latent).
  """
  ks, vs = [], []
  for i, layer in enumerate(layers):
    if cross is not None:
      x_BxQxD = cross(i, x_BxQxD)
    x_BxQxD, (k, v) = layer(x_BxQxD, pos_BxQ, mask_BxQxT,
                            None if cache is None else cache.layer(i))
    ks.append(k)
    vs.append(v)
  return x_BxQxD, tuple(ks), tuple(vs)


def attending(mask_BxQxT, cache: CacheKeys | None = None):
  """How a stack's layers attend, as the stages take it (`model`'s `states`, `latents`,
  `logits`): `run(layers, x, pos, cross=None) -> (x, (k, v) per layer)` over `run_stack` with
  this mask (dense or an `AttnKernel`) and, optionally, a cache read besides the new keys. The
  decoding engine's rings give the same contract (`engine.on_ring`)."""
  def run(layers, x_BxQxD, pos_BxQ, cross=None):
    x_BxQxD, ks, vs = run_stack(layers, x_BxQxD, pos_BxQ, mask_BxQxT, cache, cross)
    return x_BxQxD, (ks, vs)
  return run


def local_mask(qpos_BxQ, kpos_BxT, qdoc_BxQ, kdoc_BxT, kvalid_BxT, window: int | None):
  """Causal (optionally windowed, W keys incl. self) mask that never crosses a document."""
  d = qpos_BxQ[:, :, None] - kpos_BxT[:, None, :]
  m = (d >= 0) & (qdoc_BxQ[:, :, None] == kdoc_BxT[:, None, :]) & kvalid_BxT[:, None, :]
  if window is not None:
    m &= d < window
  return m


class Attention(nn.Module):
  cfg: TransformerConfig
  embed_axis: str = "embed"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    c = self.cfg
    d, h, g, k = c.dim, c.n_heads, c.kv_heads, c.head_dim
    std = d**-0.5
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    e = self.embed_axis
    self.wq = Einsum((d, h, k), (e, "heads", "head_dim"), "bsd,dhk->bshk", std, **kw)
    self.wk = Einsum((d, g, k), (e, "kv_heads", "head_dim"), "bsd,dhk->bshk", std, **kw)
    self.wv = Einsum((d, g, k), (e, "kv_heads", "head_dim"), "bsd,dhk->bshk", std, **kw)
    self.wo = Einsum((h, k, d), ("heads", "head_dim", e), "bshk,hkd->bsd", std, **kw)
    # Decoding weights only (`fuse_projections`): called when the params hold it, so never
    # created by init.
    self.wqkv = Einsum((d, (h + 2 * g) * k), (e, None), "bsd,de->bse", std, **kw)

  def project(self, x_BxSxD, pos_BxS):
    c = self.cfg
    if self.has_variable("params", "wqkv"):
      h, g, kd = c.n_heads, c.kv_heads, c.head_dim
      q, k, v = jnp.split(self.wqkv(x_BxSxD), [h * kd, (h + g) * kd], axis=-1)
      q, k, v = (y.reshape(*y.shape[:2], -1, kd) for y in (q, k, v))
    else:
      q, k, v = self.wq(x_BxSxD), self.wk(x_BxSxD), self.wv(x_BxSxD)
    return rope(q, pos_BxS, c.rope_theta), rope(k, pos_BxS, c.rope_theta), v

  def output(self, o_BxSxHxK):
    return self.wo(o_BxSxHxK)


class FeedForward(nn.Module):
  cfg: TransformerConfig
  embed_axis: str = "embed"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxSxD):
    d, f = self.cfg.dim, self.cfg.hidden_dim
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    w2 = Einsum((f, d), ("mlp", self.embed_axis), "bsf,fd->bsd", f**-0.5, name="w2", **kw)
    if self.has_variable("params", "w13"):  # decoding weights (`fuse_projections`)
      h = Einsum((d, 2 * f), (self.embed_axis, "mlp"), "bsd,df->bsf", d**-0.5, name="w13",
                 **kw)(x_BxSxD)
      return w2(nn.silu(h[..., :f]) * h[..., f:])
    w1 = Einsum((d, f), (self.embed_axis, "mlp"), "bsd,df->bsf", d**-0.5, name="w1", **kw)
    w3 = Einsum((d, f), (self.embed_axis, "mlp"), "bsd,df->bsf", d**-0.5, name="w3", **kw)
    return w2(nn.silu(w1(x_BxSxD)) * w3(x_BxSxD))


def fuse_projections(params):
  """Decoding weights: every block's q, k, v kernels as one [D, (H + 2G)·K] `wqkv` kernel and
  its w1, w3 as one [D, 2F] `w13` kernel (read by `Einsum`, like every other kernel), everything
  else as is (a new tree; the input is unchanged).

  The values are the same (bit-identical logits on CPU, tests/ar_test.py); a batch-1 decoding
  step then reads a block's input projections in two matrix-vector products instead of five,
  and XLA:CPU streams a few large matrices faster than many small ones: +5% AR and +8% BLT-S
  k=8 bytes/s on `configs/bench_weightbound.py`, same process, alternated. Training, export and
  tensor-sharded decoding keep the separate kernels (the checkpoint layout; a fused q|k|v
  dimension does not split by heads)."""
  if not isinstance(params, dict):
    return params
  out = {k: fuse_projections(v) for k, v in params.items()}
  att, ffn = out.get("attention"), out.get("feed_forward")
  if isinstance(att, dict) and {"wq", "wk", "wv"} <= att.keys():
    flat = lambda w: w["kernel"].reshape(w["kernel"].shape[0], -1)  # noqa: E731
    out["attention"] = {k: v for k, v in att.items() if k not in ("wq", "wk", "wv")}
    out["attention"]["wqkv"] = {"kernel": jnp.concatenate(
      [flat(att["wq"]), flat(att["wk"]), flat(att["wv"])], axis=1)}
  if isinstance(ffn, dict) and {"w1", "w3"} <= ffn.keys():
    out["feed_forward"] = {k: v for k, v in ffn.items() if k not in ("w1", "w3")}
    out["feed_forward"]["w13"] = {"kernel": jnp.concatenate(
      [ffn["w1"]["kernel"], ffn["w3"]["kernel"]], axis=1)}
  return out


class Block(nn.Module):
  """Pre-norm Llama block: h = x + Attn(norm(x)); out = h + FFN(norm(h))."""

  cfg: TransformerConfig
  embed_axis: str = "embed"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(embed_axis=self.embed_axis, dtype=self.dtype, param_dtype=self.param_dtype)
    nkw = dict(eps=self.cfg.norm_eps, axis_name=self.embed_axis, dtype=self.dtype,
               param_dtype=self.param_dtype)
    self.attention_norm = RMSNorm(**nkw)
    self.attention = Attention(self.cfg, **kw)
    self.ffn_norm = RMSNorm(**nkw)
    self.feed_forward = FeedForward(self.cfg, **kw)

  def __call__(self, x_BxSxD, pos_BxS, mask_BxSxT, cache: CacheKeys | None = None):
    """(output, (k, v) of the new positions, or the written cache buffers when `cache.slots`);
    `cache`: keys read besides them (`attend`).

    `mask_BxSxT` is a dense mask or an `AttnKernel`, which attends without one."""
    q, k, v = self.attn_in(x_BxSxD, pos_BxS)
    if cache is not None and cache.slots is not None:  # write, then read the cache alone
      cache = cache.write(k, v)
      return self.attn_out(x_BxSxD, attend(q, None, None, None, cache)), (cache.k, cache.v)
    if isinstance(mask_BxSxT, AttnKernel):
      if cache is not None:
        raise ValueError("Block: an AttnKernel reads no cache")
      return self.attn_out(x_BxSxD, mask_BxSxT.attend(q, k, v)), (k, v)
    return self.attn_out(x_BxSxD, attend(q, k, v, mask_BxSxT, cache)), (k, v)

  def attn_in(self, x_BxSxD, pos_BxS):
    """q, k, v of the new positions (for kernels that attend outside `attend`)."""
    return self.attention.project(self.attention_norm(x_BxSxD), pos_BxS)

  def attn_out(self, x_BxSxD, o_BxSxHxK):
    """Residual + FFN given the attention result of the new positions."""
    h = x_BxSxD + self.attention.output(o_BxSxHxK)
    return h + self.feed_forward(self.ffn_norm(h))


class CrossAttention(nn.Module):
  """Release cross-attention: x + wo(attn(norm_q(x), norm_kv(kv))), no RoPE; with
  `double_residual` (the released weights, cross_attn_residual="double") x is added once more."""

  dim: int
  n_heads: int
  eps: float = 1e-5
  embed_axis: str = "embed_local"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  double_residual: bool = False

  def setup(self):
    d, h = self.dim, self.n_heads
    k = d // h
    std = d**-0.5
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    e = self.embed_axis
    nkw = dict(eps=self.eps, axis_name=e, dtype=self.dtype, param_dtype=self.param_dtype)
    self.norm_q = RMSNorm(**nkw)
    self.norm_kv = RMSNorm(**nkw)
    self.wq = Einsum((d, h, k), (e, "heads", "head_dim"), "bsd,dhk->bshk", std, **kw)
    self.wk = Einsum((d, h, k), (e, "heads", "head_dim"), "bsd,dhk->bshk", std, **kw)
    self.wv = Einsum((d, h, k), (e, "heads", "head_dim"), "bsd,dhk->bshk", std, **kw)
    self.wo = Einsum((h, k, d), ("heads", "head_dim", e), "bshk,hkd->bsd", std, **kw)

  def kv(self, kv_BxTxD):
    """Keys and values of the kv input (cached per patch during decoding)."""
    y = self.norm_kv(kv_BxTxD)
    return self.wk(y), self.wv(y)

  def query(self, x_BxQxD):
    return self.wq(self.norm_q(x_BxQxD))

  def output(self, x_BxQxD, o_BxQxHxK):
    out = x_BxQxD + self.wo(o_BxQxHxK)
    return x_BxQxD + out if self.double_residual else out

  def __call__(self, x_BxQxD, kv_BxTxD, mask_BxQxT):
    k, v = self.kv(kv_BxTxD)
    return self.output(x_BxQxD, attend(self.query(x_BxQxD), k, v, mask_BxQxT))

  def latent(self, x_BxQxD, k_BxGxCxHxK, v_BxGxCxHxK):
    """The decoder's latent cross-attention: the Q queries of a row in G equal runs of
    consecutive positions, run g reading only the C keys of its latent g (G = Q: one latent
    per byte, BLT; G = blocks: BLT-D's block stream; G = 1: a draft or block shares one)."""
    b, q, _ = x_BxQxD.shape
    g = k_BxGxCxHxK.shape[1]
    # Runs of one position (G = Q) drop the run axis: a size-1 axis costs transposes per step.
    z, run = (q // g, "z") if g < q else (1, "")
    q_BxGxZxHxK = self.query(x_BxQxD).reshape(b, g, *((z,) if run else ()),
                                              *k_BxGxCxHxK.shape[3:])
    s = jnp.einsum(f"bg{run}hk,bgchk->bg{run}hc", q_BxGxZxHxK, k_BxGxCxHxK,
                   preferred_element_type=jnp.float32) / math.sqrt(q_BxGxZxHxK.shape[-1])
    p = jax.nn.softmax(s, axis=-1).astype(v_BxGxCxHxK.dtype)
    o = jnp.einsum(f"bg{run}hc,bgchk->bg{run}hk", p, v_BxGxCxHxK)
    return self.output(x_BxQxD, o.reshape(b, q, *o.shape[-2:]))
