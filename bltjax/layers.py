"""Building blocks shared by the four stacks: norm, RoPE, attention, SwiGLU, cross-attention.

Every parameter carries logical axis names (see `sharding.py`), so one rules table shards them.
Attention kernels are 3-D ([D, H, K] / [H, K, D]) so the head axis is visible to the rules.
Modules are `setup`-style so the cached decoding path can call `project`/`output` separately.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bltjax.config import TransformerConfig

# Finite mask value: fully masked rows must not become NaN (we zero them explicitly).
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

Dtype = Any


def dtype_of(name: str) -> Dtype:
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


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

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
      "kernel", nn.with_logical_partitioning(trunc_normal(self.std), self.axes), self.shape,
      self.param_dtype)
    return jnp.einsum(self.eq, x.astype(self.dtype), kernel.astype(self.dtype))


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
    # Variance in fp32 whatever the compute dtype (blt.md §4.1).
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


def attend(q_BxQxHxK, k_BxTxGxK, v_BxTxGxK, mask_BxQxT) -> jnp.ndarray:
  """Softmax attention with GQA; fp32 softmax; rows with no visible key return exactly 0."""
  b, q, h, kd = q_BxQxHxK.shape
  g = k_BxTxGxK.shape[2]
  q_BxQxGxRxK = q_BxQxHxK.reshape(b, q, g, h // g, kd)
  s = jnp.einsum("bqgrk,btgk->bgrqt", q_BxQxGxRxK, k_BxTxGxK,
                 preferred_element_type=jnp.float32) / math.sqrt(kd)
  m = mask_BxQxT[:, None, None, :, :]
  s = jnp.where(m, s, MASK_VALUE)
  p = jax.nn.softmax(s, axis=-1)
  p = jnp.where(m, p, 0.0)  # fully masked rows: all zeros, not a uniform average
  o = jnp.einsum("bgrqt,btgk->bqgrk", p.astype(v_BxTxGxK.dtype), v_BxTxGxK)
  return o.reshape(b, q, h, kd)


def attend_hm(q_BxQxHxK, k_BxGxTxK, v_BxGxTxK, mask_BxQxT) -> jnp.ndarray:
  """`attend` over head-major caches ([B, G, T, K]): no transposes of the cache on every step."""
  b, q, h, kd = q_BxQxHxK.shape
  g = k_BxGxTxK.shape[1]
  q_BxGxRxQxK = q_BxQxHxK.reshape(b, q, g, h // g, kd).transpose(0, 2, 3, 1, 4)
  s = jnp.einsum("bgrqk,bgtk->bgrqt", q_BxGxRxQxK, k_BxGxTxK,
                 preferred_element_type=jnp.float32) / math.sqrt(kd)
  m = mask_BxQxT[:, None, None, :, :]
  s = jnp.where(m, s, MASK_VALUE)
  p = jax.nn.softmax(s, axis=-1)
  p = jnp.where(m, p, 0.0)
  o = jnp.einsum("bgrqt,bgtk->bqgrk", p.astype(v_BxGxTxK.dtype), v_BxGxTxK)
  return o.reshape(b, q, h, kd)


def attend_prefix(q_BxHxK, k_BxGxTxK, v_BxGxTxK, n_prev_B, k_BxGxK, v_BxGxK,
                  chunk: int) -> jnp.ndarray:
  """One query per row over its own new key plus cache slots 0..n_prev_B-1, read in chunks.

  Online softmax over `chunk`-slot blocks with a dynamic trip count, so a large static cache
  (the global model's patch slots) costs what is used, not what is allocated. The query's own
  key/value come separately, so the caller can write the cache after (outside any `cond`).
  """
  b, h, kd = q_BxHxK.shape
  g = k_BxGxTxK.shape[1]
  r = h // g
  q = q_BxHxK.reshape(b, g, r, kd).astype(jnp.float32) / math.sqrt(kd)
  s_self = jnp.einsum("bgrk,bgk->bgr", q, k_BxGxK.astype(jnp.float32))
  init = (s_self, jnp.ones_like(s_self),
          jnp.broadcast_to(v_BxGxK.astype(jnp.float32)[:, :, None, :], (b, g, r, kd)))

  def body(c, carry):
    m, l, acc = carry
    k = jax.lax.dynamic_slice_in_dim(k_BxGxTxK, c * chunk, chunk, axis=2).astype(jnp.float32)
    v = jax.lax.dynamic_slice_in_dim(v_BxGxTxK, c * chunk, chunk, axis=2).astype(jnp.float32)
    s = jnp.einsum("bgrk,bgtk->bgrt", q, k)
    ok = (c * chunk + jnp.arange(chunk))[None, :] < n_prev_B[:, None]
    s = jnp.where(ok[:, None, None, :], s, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    p = jnp.exp(s - m_new[..., None])
    scale = jnp.exp(m - m_new)
    return (m_new, l * scale + jnp.sum(p, axis=-1),
            acc * scale[..., None] + jnp.einsum("bgrt,bgtk->bgrk", p, v))

  n_chunks = (jnp.max(n_prev_B) + chunk - 1) // chunk
  _, l, acc = jax.lax.fori_loop(0, n_chunks, body, init)
  return (acc / l[..., None]).reshape(b, h, kd).astype(v_BxGxTxK.dtype)


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

  def project(self, x_BxSxD, pos_BxS):
    q = rope(self.wq(x_BxSxD), pos_BxS, self.cfg.rope_theta)
    k = rope(self.wk(x_BxSxD), pos_BxS, self.cfg.rope_theta)
    return q, k, self.wv(x_BxSxD)

  def output(self, o_BxSxHxK):
    return self.wo(o_BxSxHxK)

  def __call__(self, x_BxSxD, pos_BxS, mask_BxSxS):
    q, k, v = self.project(x_BxSxD, pos_BxS)
    return self.output(attend(q, k, v, mask_BxSxS))


class FeedForward(nn.Module):
  cfg: TransformerConfig
  embed_axis: str = "embed"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxSxD):
    d, f = self.cfg.dim, self.cfg.hidden_dim
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    w1 = Einsum((d, f), (self.embed_axis, "mlp"), "bsd,df->bsf", d**-0.5, name="w1", **kw)
    w3 = Einsum((d, f), (self.embed_axis, "mlp"), "bsd,df->bsf", d**-0.5, name="w3", **kw)
    w2 = Einsum((f, d), ("mlp", self.embed_axis), "bsf,fd->bsd", f**-0.5, name="w2", **kw)
    return w2(nn.silu(w1(x_BxSxD)) * w3(x_BxSxD))


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

  def __call__(self, x_BxSxD, pos_BxS, mask_BxSxS):
    h = x_BxSxD + self.attention(self.attention_norm(x_BxSxD), pos_BxS, mask_BxSxS)
    return h + self.feed_forward(self.ffn_norm(h))

  def attn_in(self, x_BxSxD, pos_BxS):
    """Cached path, part 1: q, k, v of the new positions."""
    return self.attention.project(self.attention_norm(x_BxSxD), pos_BxS)

  def attn_out(self, x_BxSxD, o_BxSxHxK):
    """Cached path, part 2: residual + FFN given the attention result of the new positions."""
    h = x_BxSxD + self.attention.output(o_BxSxHxK)
    return h + self.feed_forward(self.ffn_norm(h))


class CrossAttention(nn.Module):
  """Release cross-attention: returns x + wo(attn(norm_q(x), norm_kv(kv))); no RoPE."""

  dim: int
  n_heads: int
  eps: float = 1e-5
  embed_axis: str = "embed_local"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

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
    return x_BxQxD + self.wo(o_BxQxHxK)

  def __call__(self, x_BxQxD, kv_BxTxD, mask_BxQxT):
    k, v = self.kv(kv_BxTxD)
    return self.output(x_BxQxD, attend(self.query(x_BxQxD), k, v, mask_BxQxT))

  def gathered(self, x_BxQxD, k_BxQxCxHxK, v_BxQxCxHxK):
    """Each query attends only its own C keys (the decoder's one-latent-per-byte pattern)."""
    q = self.query(x_BxQxD)
    kd = q.shape[-1]
    s = jnp.einsum("bqhk,bqchk->bqhc", q, k_BxQxCxHxK,
                   preferred_element_type=jnp.float32) / math.sqrt(kd)
    p = jax.nn.softmax(s, axis=-1).astype(v_BxQxCxHxK.dtype)
    return self.output(x_BxQxD, jnp.einsum("bqhc,bqchk->bqhk", p, v_BxQxCxHxK))
