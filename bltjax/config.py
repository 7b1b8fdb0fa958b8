"""Frozen, hashable model configs (static under jit).

The python files in `configs/` build ml_collections dicts; `BLTConfig.from_dict` turns the `model`
section into these dataclasses at the program boundary. Every invalid value raises `ConfigError`
naming the dotted key, at construction, before anything compiles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

# Byte-id constants of the released tokenizer (docs/architecture.md).
BOE_ID = 0
BOS_ID = 1
EOS_ID = 2
BPE_ID = 3
OFFSET = 4
VOCAB_SIZE = 260
MASK_ID = 260  # BLT-D input-only id (docs/bltd.md)


def encode_prompt(data: bytes) -> list[int]:
  """BOS + byte ids (+OFFSET); prompts carry no EOS (the official `generate_nocache`)."""
  return [BOS_ID] + [b + OFFSET for b in data]


def ids_to_bytes(ids) -> bytes:
  """Byte ids (>= OFFSET) back to bytes; BOS/EOS/padding/other specials are dropped."""
  a = np.asarray(ids, np.int64)
  return (a[a >= OFFSET] - OFFSET).astype(np.uint8).tobytes()

RELEASE_THRESHOLD = 1.335442066192627


class ConfigError(ValueError):
  """A config value that cannot work; the message starts with the dotted key."""


def _fail(key: str, msg: str) -> None:
  raise ConfigError(f"{key}: {msg}")


def ffn_dim_from_rule(dim: int, multiple_of: int = 256, multiplier: float = 1.0) -> int:
  """The official SwiGLU width rule: 768->2048, 1024->2816, 2048->5632, 4096->11008."""
  hidden = int(2 * (4 * dim) / 3)
  hidden = int(multiplier * hidden)
  return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """One stack of pre-norm Llama blocks (encoder, global, decoder or entropy model)."""

  dim: int
  n_layers: int
  n_heads: int
  n_kv_heads: int | None = None
  ffn_dim: int | None = None  # None: the official rounding rule from dim
  multiple_of: int = 256
  ffn_dim_multiplier: float = 1.0
  rope_theta: float = 500000.0
  norm_eps: float = 1e-5
  window: int | None = 512  # local causal window in keys (incl. self); None = plain causal
  name: str = "stack"

  def __post_init__(self):
    k = self.name
    for field in ("dim", "n_layers", "n_heads"):
      v = getattr(self, field)
      if not isinstance(v, int) or v <= 0:
        _fail(f"{k}.{field}", f"must be a positive int, got {v!r}")
    if self.dim % self.n_heads:
      _fail(f"{k}.n_heads", f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
    if (self.dim // self.n_heads) % 2:
      _fail(f"{k}.n_heads", f"head_dim {self.dim // self.n_heads} must be even for RoPE")
    if self.n_kv_heads is not None and (
      self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads
    ):
      _fail(f"{k}.n_kv_heads", f"{self.n_kv_heads} must divide n_heads {self.n_heads}")
    if self.ffn_dim is not None and self.ffn_dim <= 0:
      _fail(f"{k}.ffn_dim", f"must be positive, got {self.ffn_dim}")
    if self.window is not None and self.window <= 0:
      _fail(f"{k}.window", f"must be positive or None, got {self.window}")
    if self.rope_theta <= 0:
      _fail(f"{k}.rope_theta", f"must be positive, got {self.rope_theta}")

  @property
  def head_dim(self) -> int:
    return self.dim // self.n_heads

  @property
  def kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def hidden_dim(self) -> int:
    if self.ffn_dim is not None:
      return self.ffn_dim
    return ffn_dim_from_rule(self.dim, self.multiple_of, self.ffn_dim_multiplier)


@dataclasses.dataclass(frozen=True)
class HashConfig:
  """Hash n-gram embeddings of the local encoder (docs/architecture.md)."""

  group_sizes: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
  vocab: int = 500002
  nb_functions: int = 1
  normalize: str = "none"  # "none" (release) | "mean" (paper: divide by len(sizes)+1)
  short_ngrams: str = "boe_pad"  # "boe_pad" (release) | "omit" (paper)

  def __post_init__(self):
    if not self.group_sizes and self.nb_functions:
      _fail("hash.group_sizes", "empty; set nb_functions=0 to disable hashing")
    for n in self.group_sizes:
      if not isinstance(n, int) or not 1 <= n <= 16:
        _fail("hash.group_sizes", f"n-gram size {n!r} outside 1..16")
    if not 0 < self.vocab < 2**31:
      _fail("hash.vocab", f"must be in (0, 2^31), got {self.vocab}")
    if self.nb_functions < 0:
      _fail("hash.nb_functions", f"must be >= 0, got {self.nb_functions}")
    if self.normalize not in ("none", "mean"):
      _fail("hash.normalize", f"must be 'none' or 'mean', got {self.normalize!r}")
    if self.short_ngrams not in ("boe_pad", "omit"):
      _fail("hash.short_ngrams", f"must be 'boe_pad' or 'omit', got {self.short_ngrams!r}")

  @property
  def num_tables(self) -> int:
    return self.nb_functions * len(self.group_sizes)


PATCHING_MODES = ("entropy", "space", "static", "byte")


@dataclasses.dataclass(frozen=True)
class PatcherConfig:
  """How patch starts are chosen (docs/architecture.md)."""

  mode: str = "entropy"
  threshold: float | None = RELEASE_THRESHOLD  # None: top-k mode (not incremental)
  threshold_add: float | None = None
  threshold_add_guard: bool = False  # the official guard never fires; True = intended guard
  monotonicity: bool = False
  max_patch_length: int | None = None
  patch_size: float = 4.0  # static mode and top-k mode

  def __post_init__(self):
    if self.mode not in PATCHING_MODES:
      _fail("patcher.mode", f"must be one of {PATCHING_MODES}, got {self.mode!r}")
    if self.max_patch_length is not None and self.max_patch_length < 1:
      _fail("patcher.max_patch_length", f"must be >= 1 or None, got {self.max_patch_length}")
    if self.patch_size <= 0:
      _fail("patcher.patch_size", f"must be positive, got {self.patch_size}")
    if self.mode == "static" and int(self.patch_size) != self.patch_size:
      _fail("patcher.patch_size", f"static patching needs an integer size, got {self.patch_size}")

  @property
  def incremental(self) -> bool:
    return not (self.mode == "entropy" and self.threshold is None)


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """BLT-D block diffusion training (fast_docs/architecture.md-3); block_size 0 = plain BLT."""

  block_size: int = 0
  block_input: str = "tok_embeddings"  # | "encoder_states"
  t_min: float = 1e-3
  loss_norm: str = "clean_tokens"  # | "per_stream_mean"
  max_blocks: int | None = None  # None: max_patches - 1
  stratified_t: bool = False
  # Keys a block sees before its start s: clean positions [s - W, s) of its document (§10 #5);
  # None = the whole prefix. Decoding keeps max(this, decoder.window) clean keys per layer.
  block_prefix_window: int | None = 512

  def __post_init__(self):
    if not isinstance(self.block_size, int) or self.block_size < 0:  # paper: 4, 8, 16
      _fail("diffusion.block_size", f"must be 0 or positive, got {self.block_size}")
    if self.block_input not in ("tok_embeddings", "encoder_states"):
      _fail("diffusion.block_input", f"unknown {self.block_input!r}")
    if not 0 < self.t_min < 1:
      _fail("diffusion.t_min", f"must be in (0, 1), got {self.t_min}")
    if self.loss_norm not in ("clean_tokens", "per_stream_mean"):
      _fail("diffusion.loss_norm", f"unknown {self.loss_norm!r}")
    w = self.block_prefix_window
    if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
      _fail("diffusion.block_prefix_window", f"must be a positive int or None (whole prefix), "
            f"got {w!r}")

  @property
  def enabled(self) -> bool:
    return self.block_size > 0


ATTENTION_KERNELS = ("auto", "xla", "pallas", "cudnn")

# The global stack's config key. Not `global`: a Python keyword breaks ml_collections' override
# paths (`--config.model.global.dim=...` cannot parse). The dataclass field stays `global_`.
GLOBAL_KEY = "global_model"
_OLD_GLOBAL_KEYS = ("global", "global_")


@dataclasses.dataclass(frozen=True)
class BLTConfig:
  """The whole model: local encoder, global transformer, local decoder and entropy model."""

  encoder: TransformerConfig
  global_: TransformerConfig
  decoder: TransformerConfig
  entropy: TransformerConfig | None = None
  hash: HashConfig = HashConfig()
  patcher: PatcherConfig = PatcherConfig()
  diffusion: DiffusionConfig = DiffusionConfig()
  vocab_size: int = VOCAB_SIZE
  cross_attn_k: int = 2
  cross_attn_nheads: int | None = None  # None: the local stack's head count (HF behaviour)
  cross_attn_residual: str = "double"  # "double" (release quirk) | "single" (paper)
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  remat: str = "none"  # "none" | "full" | "dots" (jax.checkpoint policy for each block)
  # Self-attention kernel of the training/prefill stacks (docs/kernels.md): "auto" (Pallas splash
  # on TPU, cuDNN on GPU where its masks fit, else xla) | "xla" | "pallas" | "cudnn".
  attention: str = "auto"

  def __post_init__(self):
    if self.decoder.dim != self.encoder.dim:
      _fail("decoder.dim", f"must equal encoder.dim ({self.encoder.dim}): the decoder reads "
            "the encoder's byte states")
    if self.cross_attn_k < 1:
      _fail("cross_attn_k", f"must be >= 1, got {self.cross_attn_k}")
    for key, stack in (("encoder", self.encoder), ("decoder", self.decoder)):
      h = self.cross_attn_nheads or stack.n_heads
      if stack.dim % h:
        _fail("cross_attn_nheads", f"{key}.dim {stack.dim} is not divisible by {h}")
    if self.cross_attn_residual not in ("double", "single"):
      _fail("cross_attn_residual", f"must be 'double' or 'single', got "
            f"{self.cross_attn_residual!r}")
    for key in ("dtype", "param_dtype"):
      if getattr(self, key) not in ("float32", "bfloat16", "float16"):
        _fail(key, f"must be float32, bfloat16 or float16, got {getattr(self, key)!r}")
    if self.remat not in ("none", "full", "dots"):
      _fail("remat", f"must be none, full or dots, got {self.remat!r}")
    if self.attention not in ATTENTION_KERNELS:
      _fail("attention", f"must be one of {ATTENTION_KERNELS}, got {self.attention!r}")
    if self.vocab_size != VOCAB_SIZE:
      _fail("vocab_size", f"bltjax implements the 260-id byte vocabulary, got {self.vocab_size}")
    if self.patcher.mode == "entropy" and self.entropy is None:
      _fail("entropy", "entropy patching needs an entropy model config")

  @property
  def input_vocab(self) -> int:
    """Rows of the encoder's byte table: +1 [MASK] row when BLT-D is enabled."""
    return self.vocab_size + (1 if self.diffusion.enabled else 0)

  @property
  def needs_global_projection(self) -> bool:
    return self.cross_attn_k * self.encoder.dim != self.global_.dim

  def replace(self, **kw) -> BLTConfig:
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d[GLOBAL_KEY] = d.pop("global_")
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> BLTConfig:
    """Builds from a plain (or ml_collections) mapping; unknown keys fail with their name.

    The global stack is `global_model`; `global` (configs and checkpoints written before the
    rename) and the field name `global_` are accepted too.
    """
    d = dict(d)
    names = [k for k in (GLOBAL_KEY, *_OLD_GLOBAL_KEYS) if k in d]
    if len(names) > 1:
      _fail(GLOBAL_KEY, f"given twice (as {' and '.join(names)}); keep only {GLOBAL_KEY}")
    if names:
      d["global_"] = d.pop(names[0])
    known = {f.name for f in dataclasses.fields(cls)}
    for key in d:
      if key not in known:
        shown = sorted(GLOBAL_KEY if k == "global_" else k for k in known)
        _fail(key, f"unknown model config key (known: {shown})")
    sub = {"encoder": TransformerConfig, "global_": TransformerConfig,
           "decoder": TransformerConfig, "entropy": TransformerConfig, "hash": HashConfig,
           "patcher": PatcherConfig, "diffusion": DiffusionConfig}
    kw = {}
    for key, value in d.items():
      if key in sub and value is not None and not isinstance(value, sub[key]):
        value = _build(sub[key], value, GLOBAL_KEY if key == "global_" else key)
      kw[key] = value
    return cls(**kw)


def _build(cls, value: Mapping[str, Any], prefix: str):
  value = dict(value)
  known = {f.name for f in dataclasses.fields(cls)}
  for key in value:
    if key not in known:
      _fail(f"{prefix}.{key}", f"unknown key (known: {sorted(known)})")
  if "group_sizes" in value:
    value["group_sizes"] = tuple(value["group_sizes"])
  if cls is TransformerConfig:
    value.setdefault("name", prefix)
  return cls(**value)


def entropy_model_config(dim=768, n_layers=14, n_heads=12, ffn_dim=None, window=512,
                         rope_theta=10000.0) -> TransformerConfig:
  """The released entropy model geometry (docs/architecture.md) by default."""
  return TransformerConfig(dim=dim, n_layers=n_layers, n_heads=n_heads, ffn_dim=ffn_dim,
                           window=window, rope_theta=rope_theta, name="entropy")


def num_params(cfg: BLTConfig) -> dict[str, int]:
  """Parameter counts per part (non-hash, hash, entropy) for logs and docs."""

  def stack(s: TransformerConfig) -> int:
    attn = s.dim * s.head_dim * (2 * s.n_heads + 2 * s.kv_heads)
    return s.n_layers * (attn + 3 * s.dim * s.hidden_dim + 2 * s.dim)

  c, de, dg = cfg.cross_attn_k, cfg.encoder.dim, cfg.global_.dim
  xattn = lambda d: 4 * d * d + 2 * d  # noqa: E731
  enc = stack(cfg.encoder) + cfg.input_vocab * de + de * c * de + xattn(de)
  glob = stack(cfg.global_) + (c * de * dg if cfg.needs_global_projection else 0)
  dec = (stack(cfg.decoder) + cfg.decoder.n_layers * xattn(de) + dg * c * de + de
         + de * cfg.vocab_size)
  hsh = cfg.hash.num_tables * cfg.hash.vocab * de
  ent = 0
  if cfg.entropy is not None:
    e = cfg.entropy
    ent = stack(e) + 2 * cfg.vocab_size * e.dim + e.dim
  return {"encoder": enc, "global": glob, "decoder": dec, "hash": hsh, "entropy": ent,
          "total": enc + glob + dec + hsh + ent}


def ceil_div(a: int, b: int) -> int:
  return -(-a // b)
