"""BLT forward pass: entropy model, local encoder, global transformer, local decoder.

Parameter tree (plain nested dicts; docs/architecture.md names):
  local_encoder/…, global_transformer/…, local_decoder/…, entropy_model/…

Public functions are pure over `(params, cfg, arrays)` so they can be jitted with shardings:
`init_params`, `abstract_params`, `logical_axes`, the sharded-from-birth `param_shardings`,
`abstract_sharded_params`, `init_sharded`, `entropy_logits`, `entropies`, `patch`, `forward`,
`encode`, `global_latents`; `apply_blt` / `apply_entropy` run a function of the module (its stage
methods, docs/architecture.md) for the decoding engine and BLT-D training.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from bltjax.config import EOS_ID, BLTConfig, TransformerConfig
from bltjax.modeling import accel, hashing, kernels, patching, sharding
from bltjax.modeling.layers import (
  Block,
  CrossAttention,
  Einsum,
  RMSNorm,
  attend,
  attending,
  dtype_of,
  remat_policy,
  trunc_normal,
)

Params = dict[str, Any]
BLT_KEYS = ("local_encoder", "global_transformer", "local_decoder")


def _remat(cls, policy: str):
  return cls if policy == "none" else nn.remat(cls, policy=remat_policy(policy))


class HashEmbeddings(nn.Module):
  num_tables: int
  vocab: int
  dim: int
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, hash_ids_BxSxT, weight_BxSxT):
    given = self.get_variable("params", "embedding")  # None at init
    if given is not None and given.ndim == 4:
      # The training step passed the rows these ids select, gathered before the differentiated
      # function ([B, S, T, D]): it scatters their gradient into its accumulator itself
      # (`optim.RowGradient`, docs/accelerators.md).
      e_BxSxTxD = given
    else:
      table = self.param(
        # Rows over (fsdp, tensor); the width has no axis of its own, so the fsdp share of rows
        # that 8 does not divide (500002) moves there (`sharding.logical_to_physical`).
        "embedding", nn.with_logical_partitioning(trunc_normal(self.dim**-0.5),
                                                  ("hash_tables", "hash_vocab", None)),
        (self.num_tables, self.vocab, self.dim), self.param_dtype)
      e_BxSxTxD = hashing.hash_rows(table, hash_ids_BxSxT)
    # Summed in the tables' precision, then cast: were the rows cast first, XLA would cast the
    # whole table once (a bf16 copy of every shard, 0.73 GiB per chip for BLT-1B on 8 chips)
    # and gather from that. (A 0/1-weighted sum of T rows: no matmul.)
    w_BxSxTx1 = weight_BxSxT.astype(e_BxSxTxD.dtype)[..., None]
    return jnp.sum(e_BxSxTxD * w_BxSxTx1, axis=2).astype(self.dtype)


def hash_ids(cfg: BLTConfig, ids_BxS, valid_BxS):
  """The encoder's hash n-gram ids [B, S, T] (one function for the lookup and its gradient)."""
  h = cfg.hash
  return hashing.hash_ngram_ids(jnp.where(valid_BxS, ids_BxS, 0), group_sizes=h.group_sizes,
                                nb_functions=h.nb_functions, vocab=h.vocab)


# Where the hash tables sit in the parameter tree.
HASH_TABLE_PATH = ("local_encoder", "hash_embeddings", "embedding")


class LocalEncoder(nn.Module):
  cfg: BLTConfig

  def setup(self):
    c = self.cfg
    e = c.encoder
    dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
    self.tok_embeddings = nn.Embed(
      c.input_vocab, e.dim, dtype=dt, param_dtype=pdt,
      embedding_init=nn.with_logical_partitioning(trunc_normal(e.dim**-0.5),
                                                  ("vocab", "embed_local")))
    if c.hash.num_tables:
      self.hash_embeddings = HashEmbeddings(c.hash.num_tables, c.hash.vocab, e.dim, dt, pdt)
    blk = _remat(Block, c.remat)
    self.layers = [blk(e, "embed_local", dt, pdt) for _ in range(e.n_layers)]
    self.patch_embedding_projection = Einsum(
      (e.dim, c.cross_attn_k * e.dim), ("embed_local", "embed_cross"), "bpd,de->bpe",
      e.dim**-0.5, dt, pdt)
    self.cross_attn_layers = [CrossAttention(e.dim, c.cross_attn_nheads or e.n_heads, e.norm_eps,
                                             "embed_local", dt, pdt,
                                             c.cross_attn_residual == "double")]

  def embed(self, ids_BxS, pos_BxS, valid_BxS, first: int = 0):
    """Byte embedding plus the hash n-gram embeddings (no scaling in the release) of positions
    first.. [B, S - first, De]; the positions before `first` are only the bytes their n-grams
    read (the decoding engine's id histories, a BLT-D block's context), never looked up."""
    c = self.cfg
    x = self.tok_embeddings(jnp.where(valid_BxS, ids_BxS, 0)[:, first:])
    if c.hash.num_tables:
      h = c.hash
      hash_ids_BxSxT = hash_ids(c, ids_BxS, valid_BxS)
      w_BxSxT = jnp.ones(hash_ids_BxSxT.shape, jnp.float32)
      if h.short_ngrams == "omit":
        w_BxSxT = hashing.ngram_valid_mask(pos_BxS, group_sizes=h.group_sizes,
                                           nb_functions=h.nb_functions).astype(jnp.float32)
      x = x + self.hash_embeddings(hash_ids_BxSxT[:, first:], w_BxSxT[:, first:])
      if h.normalize == "mean":
        x = x / (len(h.group_sizes) + 1)
    return x

  def embed_block(self, ids_BxZ, pos_BxZ, valid_BxZ, ctx_ids_BxG, ctx_valid_BxG):
    """A BLT-D block's inputs (diffusion.block_input; arXiv 2605.08044 §3), for training's block
    stream and decoding's denoising steps: "tok_embeddings", the byte table (MASK row
    included), no hash n-grams; "encoder_states", the full embedding (then the encoder layers),
    whose hash n-grams read the G = `block_context(cfg)` bytes before the block (ctx, none
    before position 0) as the clean stream's do at the same positions."""
    if self.cfg.diffusion.block_input == "tok_embeddings":
      return self.tok_embeddings(jnp.where(valid_BxZ, ids_BxZ, 0))
    g = ctx_ids_BxG.shape[1]
    ctx_pos_BxG = pos_BxZ[:, :1] - g + jnp.arange(g, dtype=jnp.int32)[None]
    all_pos = jnp.concatenate([ctx_pos_BxG, pos_BxZ], axis=1)
    all_valid = jnp.concatenate([ctx_valid_BxG & (ctx_pos_BxG >= 0), valid_BxZ], axis=1)
    return self.embed(jnp.concatenate([ctx_ids_BxG, ids_BxZ], axis=1), jnp.maximum(all_pos, 0),
                      all_valid, first=g)

  def __call__(self, ids_BxS, pos_BxS, doc_BxS, valid_BxS, patch_ids_BxS, num_patches: int):
    x = sharding.constrain_rows(self.embed(ids_BxS, pos_BxS, valid_BxS))
    mask = kernels.self_attention(self.cfg.encoder, pos_BxS, doc_BxS, valid_BxS,
                                  attention=self.cfg.attention)
    x = sharding.constrain_rows(self.states(x, pos_BxS, attending(mask))[0])
    return x, self.pool(x, patch_ids_BxS, valid_BxS, num_patches)

  def states(self, x_BxSxD, pos_BxS, run):
    """The encoder stage: byte states of embedded bytes, with `run` (`layers.attending`, the
    engine's rings) saying how the layers attend; (h, what run returns besides)."""
    return run(self.layers, x_BxSxD, pos_BxS)

  def pool(self, h_BxSxD, patch_ids_BxS, valid_BxS, num_patches: int):
    """Max-pool init, projection to C queries per patch, cross-attention over the patch's bytes."""
    c = self.cfg
    b, s, d = h_BxSxD.shape
    # Scatter-free reductions where the program runs on TPU (`accel.by_backend`).
    pool = lambda scan: lambda h, i, m: kernels.max_pool(h, i, m, num_patches, scan)  # noqa: E731
    pooled = accel.by_backend(c.attention, pool(True), pool(False), h_BxSxD, patch_ids_BxS,
                              valid_BxS)
    xa = self.cross_attn_layers[0]
    k = c.cross_attn_k
    k_BxSxHxK, v_BxSxHxK = xa.kv(h_BxSxD)
    if not kernels.pool_is_segmented(xa.n_heads, num_patches * k, s):
      ok_BxPxS = ((patch_ids_BxS[:, None, :] == jnp.arange(num_patches)[None, :, None])
                  & valid_BxS[:, None, :])
      return self.pool_patches(pooled, k_BxSxHxK, v_BxSxHxK, ok_BxPxS)
    q_BxQxD = self.patch_embedding_projection(pooled).reshape(b, num_patches * k, d)
    q_BxPxCxHxK = xa.query(q_BxQxD).reshape(b, num_patches, k, *k_BxSxHxK.shape[2:])
    att = lambda scan: lambda *a: kernels.patch_attend(*a, scan=scan)  # noqa: E731
    o = accel.by_backend(c.attention, att(True), att(False), q_BxPxCxHxK, k_BxSxHxK, v_BxSxHxK,
                         patch_ids_BxS, valid_BxS)
    out = xa.output(q_BxQxD, o.reshape(b, num_patches * k, *o.shape[3:]))
    return out.reshape(b, num_patches, k * d)

  def pool_kv(self, h_BxTxD):
    """Cross-attention keys/values of byte states; decoding caches them per byte."""
    return self.cross_attn_layers[0].kv(h_BxTxD)

  def pool_patches(self, pmax_BxPxD, k_BxTxHxK, v_BxTxHxK, ok_BxPxT):
    """P patches per row from their max-pooled states and one set of byte keys/values (a
    patch's bytes marked in ok): C queries per patch attend its bytes, [B, P, C·De]. `pool`
    (dense) and the decoding engine's pooling."""
    b, p, d = pmax_BxPxD.shape
    c = self.cfg.cross_attn_k
    q_BxQxD = self.patch_embedding_projection(pmax_BxPxD).reshape(b, p * c, d)
    xa = self.cross_attn_layers[0]
    mask_BxQxT = jnp.repeat(ok_BxPxT, c, axis=1)
    out = xa.output(q_BxQxD, attend(xa.query(q_BxQxD), k_BxTxHxK, v_BxTxHxK, mask_BxQxT))
    return out.reshape(b, p, c * d)


class GlobalTransformer(nn.Module):
  cfg: BLTConfig

  def setup(self):
    c = self.cfg
    g = c.global_
    dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
    if c.needs_global_projection:
      din = c.cross_attn_k * c.encoder.dim
      self.token_embedding_projection = Einsum((din, g.dim), ("embed_cross", "embed"),
                                               "bpe,ed->bpd", din**-0.5, dt, pdt)
    blk = _remat(Block, c.remat)
    self.layers = [blk(g, "embed", dt, pdt) for _ in range(g.n_layers)]

  def project_in(self, x_BxPxE):
    if self.cfg.needs_global_projection:
      return self.token_embedding_projection(x_BxPxE)
    return x_BxPxE.astype(dtype_of(self.cfg.dtype))

  def __call__(self, x_BxPxE, pos_BxP, doc_BxP, valid_BxP):
    mask = kernels.self_attention(self.cfg.global_, pos_BxP, doc_BxP, valid_BxP,  # [P, P], blocks
                                  attention=self.cfg.attention)
    return self.latents(x_BxPxE, pos_BxP, attending(mask))[0]

  def latents(self, x_BxPxE, pos_BxP, run):
    """The global stage: patch latents of pooled patches under `run` (`states`); (o, what run
    returns besides). No final norm in the release."""
    return run(self.layers, self.project_in(x_BxPxE), pos_BxP)


class LocalDecoder(nn.Module):
  cfg: BLTConfig

  def setup(self):
    c = self.cfg
    d = c.decoder
    dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
    self.patch_embedding_projection = Einsum(
      (c.global_.dim, c.cross_attn_k * d.dim), ("embed", "embed_cross"), "bpd,de->bpe",
      c.global_.dim**-0.5, dt, pdt)
    blk = _remat(Block, c.remat)
    self.layers = [blk(d, "embed_local", dt, pdt) for _ in range(d.n_layers)]
    self.cross_attn_layers = [CrossAttention(d.dim, c.cross_attn_nheads or d.n_heads, d.norm_eps,
                                             "embed_local", dt, pdt,
                                             c.cross_attn_residual == "double")
                              for _ in range(d.n_layers)]
    self.norm = RMSNorm(d.norm_eps, "embed_local", dt, pdt)
    self.output = Einsum((d.dim, c.vocab_size), ("embed_local", "vocab"), "bsd,dv->bsv",
                         d.dim**-0.5, dt, pdt, out_dtype=jnp.float32)

  def latent_kv(self, o_BxPxDg):
    """Per-layer cross-attention keys/values of every patch latent: [L] x ([B,P,C,H,K] x 2)."""
    c = self.cfg
    b, p, _ = o_BxPxDg.shape
    proj = self.patch_embedding_projection(o_BxPxDg).reshape(b, p * c.cross_attn_k, -1)
    out = []
    for xa in self.cross_attn_layers:
      k, v = xa.kv(proj)
      out.append((k.reshape(b, p, c.cross_attn_k, *k.shape[2:]),
                  v.reshape(b, p, c.cross_attn_k, *v.shape[2:])))
    return out

  def cross(self, i: int, h_BxSxD, kv_i, lat_idx_BxG):
    """Layer i's cross-attention: the S positions of a row in G equal runs (G = S: one byte
    each), run g reading the C keys of latent lat_idx[g] (`CrossAttention.latent`)."""
    return self.cross_attn_layers[i].latent(h_BxSxD, *take_latent(kv_i, lat_idx_BxG))

  def head(self, h_BxSxD):
    return self.output(self.norm(h_BxSxD))  # fp32 logits (Einsum out_dtype)

  def __call__(self, h_BxSxD, pos_BxS, doc_BxS, valid_BxS, o_BxPxDg, lat_idx_BxS):
    kvs = self.latent_kv(o_BxPxDg)
    mask = kernels.self_attention(self.cfg.decoder, pos_BxS, doc_BxS, valid_BxS,
                                  attention=self.cfg.attention)
    latent = lambda i: take_latent(kvs[i], lat_idx_BxS)  # noqa: E731
    return self.logits(h_BxSxD, pos_BxS, attending(mask), latent, sharding.constrain_rows)[0]

  def logits(self, h_BxSxD, pos_BxS, run, latent, rows=lambda x: x):
    """The decoder stage: next-byte logits (fp32) of encoder byte states under `run` (`states`),
    layer i cross-attending `latent(i)` = the C keys/values [B, G, C, Hx, Kx] of G latents, one
    per run of S/G positions (`CrossAttention.latent`); `rows` anchors the activations' rows
    (training's `sharding.constrain_rows`). (logits, what run returns besides).

    h may be a tuple of streams (BLT-D training's clean and block streams, `per_stream`), with
    `latent(i)` one (k, v) per stream and one logits array per stream out."""
    dt = dtype_of(self.cfg.dtype)
    h = per_stream(lambda x: x.astype(dt), h_BxSxD)
    h, keys = run(self.layers, h, pos_BxS, LatentCross(self.cross_attn_layers, latent, rows))
    return per_stream(lambda x: self.head(rows(x)), h), keys


def block_context(cfg: BLTConfig) -> int:
  """Bytes before a BLT-D block that its hash n-grams read (`LocalEncoder.embed_block`)."""
  return max(cfg.hash.group_sizes) - 1 if cfg.hash.num_tables else 0


def take_latent(kv_i, lat_idx_BxG):
  """The keys/values [B, G, C, Hx, Kx] of latents lat_idx (kv_i: one layer of `latent_kv`)."""
  take = jax.vmap(lambda a, idx: a[idx])
  return take(kv_i[0], lat_idx_BxG), take(kv_i[1], lat_idx_BxG)


def per_stream(fn, x, *rest):
  """fn(x, *rest) on one stream, or on each stream of a tuple (rest zipped alike; a None stream
  stays None): how a stage carries BLT-D training's second (block) stream."""
  if not isinstance(x, tuple):
    return fn(x, *rest)
  return tuple(None if xs is None else fn(xs, *r) for xs, *r in zip(x, *rest, strict=True))


@dataclasses.dataclass(frozen=True)
class LatentCross:
  """The decoder's cross-attention before layer i as `run` calls it, `cross(i, x)`: the layer's
  `CrossAttention.latent` over `latent(i)`, per stream. `at` takes the layer's module from the
  caller: a run that lifts each layer into a transform (BLT-D training's `nn.remat`) passes the
  module it lifted, since a lifted function may call no other module."""

  layers: Sequence[CrossAttention]
  latent: Callable[[int], Any]
  rows: Callable[[Any], Any]

  def __call__(self, i: int, x):
    return self.at(self.layers[i], i, x)

  def at(self, xa: CrossAttention, i: int, x):
    return per_stream(lambda xs, kv: self.rows(xa.latent(xs, *kv)), x, self.latent(i))


class BLT(nn.Module):
  cfg: BLTConfig

  def setup(self):
    self.local_encoder = LocalEncoder(self.cfg)
    self.global_transformer = GlobalTransformer(self.cfg)
    self.local_decoder = LocalDecoder(self.cfg)

  def __call__(self, ids_BxS, pos_BxS, doc_BxS, valid_BxS, start_BxS1, num_patches: int):
    a = byte_arrays(start_BxS1, ids_BxS, valid_BxS, num_patches)
    h, x_g = self.local_encoder(ids_BxS, pos_BxS, doc_BxS, valid_BxS, a["patch_ids"], num_patches)
    o = self.global_transformer(x_g, a["patch_pos"], a["patch_doc"], a["patch_valid"])
    return self.local_decoder(h, pos_BxS, doc_BxS, valid_BxS, o, a["dec_ids"])


class EntropyModel(nn.Module):
  """The released `LMTransformer` patcher: embeddings, blocks, RMSNorm, 260-way head."""

  cfg: TransformerConfig
  vocab_size: int = 260
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  attention: str = "xla"  # `BLTConfig.attention`

  def setup(self):
    c = self.cfg
    self.tok_embeddings = nn.Embed(
      self.vocab_size, c.dim, dtype=self.dtype, param_dtype=self.param_dtype,
      embedding_init=nn.with_logical_partitioning(trunc_normal(c.dim**-0.5),
                                                  ("vocab", "embed_local")))
    blk = _remat(Block, self.remat)
    self.layers = [blk(c, "embed_local", self.dtype, self.param_dtype)
                   for _ in range(c.n_layers)]
    self.norm = RMSNorm(c.norm_eps, "embed_local", self.dtype, self.param_dtype)
    self.output = Einsum((c.dim, self.vocab_size), ("embed_local", "vocab"), "bsd,dv->bsv",
                         c.dim**-0.5, self.dtype, self.param_dtype, out_dtype=jnp.float32)

  def embed(self, ids_BxS):
    return self.tok_embeddings(ids_BxS)

  def head(self, h_BxSxD):
    return self.output(self.norm(h_BxSxD))  # fp32 logits (Einsum out_dtype)

  def __call__(self, ids_BxS, pos_BxS, doc_BxS, valid_BxS):
    mask = kernels.self_attention(self.cfg, pos_BxS, doc_BxS, valid_BxS,
                                  attention=self.attention)
    return self.logits(jnp.where(valid_BxS, ids_BxS, 0), pos_BxS, attending(mask),
                       sharding.constrain_rows)[0]

  def logits(self, ids_BxS, pos_BxS, run, rows=lambda x: x):
    """The entropy stage: next-byte logits (fp32) of ids under `run` (`LocalEncoder.states`);
    (logits, what run returns besides)."""
    x, keys = run(self.layers, rows(self.embed(ids_BxS)), pos_BxS)
    return self.head(rows(x)), keys


# ------------------------------------------------------------------------------------------------
# Derived per-byte / per-patch arrays.


def doc_ids_from_ids(ids_BxS: jnp.ndarray) -> jnp.ndarray:
  """Document index per byte: an EOS belongs to the document it ends (docs/architecture.md)."""
  eos = (ids_BxS == EOS_ID).astype(jnp.int32)
  return jnp.cumsum(eos, axis=-1) - eos


def byte_arrays(start_BxS1, ids_BxS, valid_BxS, num_patches: int) -> dict[str, jnp.ndarray]:
  """Patch ids, decoder latent ids and per-patch positions/validity/documents."""
  patch_ids = jnp.minimum(patching.patch_ids_from_starts(start_BxS1), num_patches - 1)
  lengths_B = jnp.sum(valid_BxS.astype(jnp.int32), axis=-1)
  dec_ids = jnp.clip(patching.decoder_patch_ids_from_starts(start_BxS1, lengths_B), 0,
                     num_patches - 1)
  n_B = jnp.minimum(patching.num_patches(start_BxS1), num_patches)
  b = ids_BxS.shape[0]
  patch_pos = jnp.broadcast_to(jnp.arange(num_patches, dtype=jnp.int32), (b, num_patches))
  patch_valid = patch_pos < n_B[:, None]
  # Global document reset: a patch holding an EOS closes its document (official block_causal).
  eos_BxS = ((ids_BxS == EOS_ID) & valid_BxS).astype(jnp.int32)
  seg = jnp.where(valid_BxS, patch_ids, num_patches)
  has_eos = jax.vmap(lambda e, i: jax.ops.segment_max(e, i, num_segments=num_patches + 1))(
    eos_BxS, seg)[:, :num_patches]
  has_eos = jnp.maximum(has_eos, 0)
  patch_doc = jnp.cumsum(has_eos, axis=-1) - has_eos
  return dict(patch_ids=patch_ids, dec_ids=dec_ids, num_patches=n_B, patch_pos=patch_pos,
              patch_valid=patch_valid, patch_doc=patch_doc)


def defaults(ids_BxS, lengths_B=None, doc_BxS=None):
  """Ids, lengths, positions, validity and documents of right-padded rows."""
  b, s = ids_BxS.shape
  ids_BxS = ids_BxS.astype(jnp.int32)
  if lengths_B is None:
    lengths_B = jnp.full((b,), s, jnp.int32)
  pos_BxS = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
  valid_BxS = pos_BxS < lengths_B[:, None]
  ids_BxS = jnp.where(valid_BxS, ids_BxS, 0)
  if doc_BxS is None:
    doc_BxS = doc_ids_from_ids(ids_BxS)
  return ids_BxS, lengths_B, pos_BxS, valid_BxS, doc_BxS


# ------------------------------------------------------------------------------------------------
# Module constructors, init and metadata.


@functools.lru_cache(maxsize=64)
def blt_module(cfg: BLTConfig) -> BLT:
  return BLT(cfg)


@functools.lru_cache(maxsize=64)
def entropy_module(cfg: BLTConfig) -> EntropyModel:
  # fp32 compute whatever cfg.dtype (docs/choices.md): entropies near the threshold would flip
  # patch boundaries between precisions, and between a verification pass and an AR step.
  return EntropyModel(cfg.entropy, cfg.vocab_size, jnp.float32, dtype_of(cfg.param_dtype),
                      cfg.remat, cfg.attention)


def _init_boxed(cfg: BLTConfig, rng) -> Params:
  k1, k2 = jax.random.split(rng)
  s = 8
  ids = jnp.ones((1, s), jnp.int32)
  ids, _, pos, valid, doc = defaults(ids)
  start = jnp.ones((1, s + 1), bool)
  out = dict(blt_module(cfg).init(k1, ids, pos, doc, valid, start, s + 1)["params"])
  if cfg.entropy is not None:
    out["entropy_model"] = entropy_module(cfg).init(k2, ids, pos, doc, valid)["params"]
  return out


def init_params(cfg: BLTConfig, rng) -> Params:
  """Materialised parameters as plain nested dicts (logical-axis boxes removed).

  Jitted: eager Linen init dispatches op by op and is many times slower on CPU.
  """
  return jax.jit(lambda r: nn.meta.unbox(_init_boxed(cfg, r)))(rng)


@functools.lru_cache(maxsize=8)
def _trees(cfg: BLTConfig) -> tuple[Params, Params]:
  """(logical specs, abstract params) of `cfg` from one trace of the init (costly at 7B)."""
  boxed = jax.eval_shape(lambda r: _init_boxed(cfg, r), jax.random.key(0))
  return nn.get_partition_spec(boxed), nn.meta.unbox(boxed)


def abstract_params(cfg: BLTConfig) -> Params:
  """Shapes and dtypes only: a 7B model is described without allocating it."""
  return _trees(cfg)[1]


def logical_axes(cfg: BLTConfig) -> Params:
  """Tree of `PartitionSpec`s of logical axis names, same structure as the params."""
  return _trees(cfg)[0]


# ------------------------------------------------------------------------------------------------
# Sharded from birth: `eval_shape(init)` -> shardings -> `jit(init, out_shardings=...)`, so no
# host ever holds a full copy (docs/architecture.md, sharding).


def _subset(tree: Params, keys: Sequence[str] | None) -> Params:
  return tree if keys is None else {k: tree[k] for k in keys}


def param_shardings(cfg: BLTConfig, mesh: Mesh,
                    rules: sharding.ShardingRules = sharding.ShardingRules(),
                    keys: Sequence[str] | None = None) -> Params:
  """NamedShardings for every parameter of `cfg` (only the top-level `keys`, if given)."""
  specs, shapes = _trees(cfg)
  return sharding.logical_to_sharding(_subset(specs, keys), mesh, rules, _subset(shapes, keys))


def abstract_sharded_params(cfg: BLTConfig, mesh: Mesh,
                            rules: sharding.ShardingRules = sharding.ShardingRules(),
                            keys: Sequence[str] | None = None) -> Params:
  """`ShapeDtypeStruct`s with shardings: describes a 7B model without allocating it."""
  shards = param_shardings(cfg, mesh, rules, keys)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      _subset(_trees(cfg)[1], keys), shards)


def init_sharded(cfg: BLTConfig, rng: jax.Array, mesh: Mesh,
                 rules: sharding.ShardingRules = sharding.ShardingRules(),
                 keys: Sequence[str] | None = None) -> Params:
  """Initialises parameters directly into their shards."""
  shards = param_shardings(cfg, mesh, rules, keys)
  init = lambda r: _subset(nn.meta.unbox(_init_boxed(cfg, r)), keys)  # noqa: E731
  with sharding.use_mesh(mesh):
    return jax.jit(init, out_shardings=shards)(rng)


def blt_params(params: Params) -> Params:
  return {k: params[k] for k in BLT_KEYS}


# ------------------------------------------------------------------------------------------------
# Forward functions.


def apply_entropy(params: Params, cfg: BLTConfig, fn, *args):
  """fn(module, *args) on the entropy model (`apply_blt`'s counterpart): its stage
  (`EntropyModel.logits`) as scoring and the decoding engine run it."""
  return entropy_module(cfg).apply({"params": params["entropy_model"]}, *args, method=fn)


def entropy_logits(params: Params, cfg: BLTConfig, ids_BxS, lengths_B=None, doc_BxS=None):
  ids_BxS, _, pos, valid, doc = defaults(ids_BxS, lengths_B, doc_BxS)
  return apply_entropy(params, cfg, lambda m, *a: m(*a), ids_BxS, pos, doc, valid)


def entropies(params: Params, cfg: BLTConfig, ids_BxS, lengths_B=None, doc_BxS=None):
  """Entropy (nats, fp32) of the entropy model's next-byte prediction at every position."""
  return patching.entropies_from_logits(entropy_logits(params, cfg, ids_BxS, lengths_B, doc_BxS))


def patch(params: Params, cfg: BLTConfig, ids_BxS, lengths_B=None, doc_BxS=None):
  """Patch starts over S+1 slots with the config's patcher."""
  ids_BxS, lengths_B, _, _, doc = defaults(ids_BxS, lengths_B, doc_BxS)
  h = None
  if cfg.patcher.mode == "entropy":
    h = entropies(params, cfg, ids_BxS, lengths_B, doc)
  return patching.patch_starts(cfg.patcher, ids_BxS=ids_BxS, lengths_B=lengths_B, H_BxS=h)


def forward(params: Params, cfg: BLTConfig, ids_BxS, start_BxS1=None, lengths_B=None,
            max_patches: int | None = None, doc_BxS=None):
  """Next-byte logits [B, S, 260] (fp32). Runs the patcher when `start_BxS1` is None."""
  ids_BxS, lengths_B, pos, valid, doc = defaults(ids_BxS, lengths_B, doc_BxS)
  if start_BxS1 is None:
    start_BxS1 = patch(params, cfg, ids_BxS, lengths_B, doc)
  p = max_patches or ids_BxS.shape[1] + 1
  return blt_module(cfg).apply({"params": blt_params(params)}, ids_BxS, pos, doc, valid,
                               start_BxS1, p)


def apply_blt(params: Params, cfg: BLTConfig, fn, *args):
  """fn(module, *args) on the BLT module: how stage functions outside it run (the decoding
  engine's stages, BLT-D's blocks and training). `params` may hold all three stacks or, inside a
  rematerialised layer, only the weights it reads."""
  return blt_module(cfg).apply({"params": {k: params[k] for k in BLT_KEYS if k in params}}, *args,
                               method=fn)


def encode(params: Params, cfg: BLTConfig, ids_BxS, pos_BxS, doc_BxS, valid_BxS, patch_ids_BxS,
           num_patches: int):
  """Local encoder: (byte states h_enc [B,S,De], patch inputs [B,P,C·De])."""
  return apply_blt(params, cfg, lambda m, *a: m.local_encoder(*a), ids_BxS, pos_BxS, doc_BxS,
                   valid_BxS, patch_ids_BxS, num_patches)


def global_latents(params: Params, cfg: BLTConfig, x_BxPxE, pos_BxP, doc_BxP, valid_BxP):
  return apply_blt(params, cfg, lambda m, *a: m.global_transformer(*a), x_BxPxE, pos_BxP,
                   doc_BxP, valid_BxP)


__all__ = ["BLT", "EntropyModel", "init_params", "abstract_params", "logical_axes", "forward",
           "entropies", "entropy_logits", "apply_entropy", "patch", "encode", "global_latents",
           "apply_blt", "byte_arrays", "doc_ids_from_ids", "defaults", "param_shardings",
           "abstract_sharded_params", "init_sharded", "take_latent", "per_stream", "LatentCross",
           "block_context"]
