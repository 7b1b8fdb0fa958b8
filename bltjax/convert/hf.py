"""Hugging Face `BltForCausalLM` directories <-> bltjax parameter trees and configs.

Also holds the machinery that the Meta converter shares: the parameter layout (every bltjax leaf
with its HF and official tensor names, docs/architecture.md), the strict tensor-by-tensor filler,
and a zero-copy safetensors reader / streaming writer.
zero-copy safetensors reader / streaming writer.

Longer than 600 lines: the HF config translation in both directions and the name table of every
tensor belong together; splitting them would scatter one mapping over files.

Torch `Linear.weight` is `[out, in]`; bltjax kernels are `[in, out]` with attention heads split
out: `wq/wk/wv` `[D, H, K] = weight.T.reshape(D, H, K)` and `wo` `[H, K, D] = weight.T.reshape(H,
K, D)`. HF fuses the hash tables row-wise, `[T*Vh, De]`; bltjax stores `[T, Vh, De]`.

Strictness: every source tensor is consumed exactly once and every bltjax leaf is filled; names and
shapes are checked from the file headers before any data is read, so a bad source fails fast and
never leaves a destination behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from bltjax import weights
from bltjax.config import (
  GLOBAL_KEY,
  RELEASE_THRESHOLD,
  VOCAB_SIZE,
  BLTConfig,
  ConfigError,
  HashConfig,
  PatcherConfig,
  TransformerConfig,
)

log = logging.getLogger("bltjax.convert")

Progress = Callable[[int, int, str, tuple[int, ...]], None]


class ConversionError(ValueError):
  """A source that cannot be converted; the message names the file and tensor or config key."""


# ------------------------------------------------------------------------------------------------
# Safetensors: zero-copy reader (np.memmap) and streaming writer. Our own ~60 lines instead of
# `safe_open` because its NumPy backend rejects BF16 and its flax backend copies to a device.

_ST_DTYPES: dict[str, np.dtype] = {
  "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
  "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
  "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
  "BOOL": np.dtype(np.bool_),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


class SafetensorsFile:
  """Header-parsed safetensors file; `get` returns read-only memmap views (no copy)."""

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    size = self.path.stat().st_size
    with open(self.path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise ConversionError(f"{self.path}: truncated safetensors file")
      (n,) = struct.unpack("<Q", head)
      if n > size - 8:
        raise ConversionError(f"{self.path}: header length {n} exceeds the file size {size}")
      try:
        header = json.loads(f.read(n))
      except json.JSONDecodeError as e:
        raise ConversionError(f"{self.path}: invalid safetensors header ({e})") from e
    self.metadata = header.pop("__metadata__", None) or {}
    self._base = 8 + n
    self._info: dict[str, dict[str, Any]] = header
    for name, info in header.items():
      if info.get("dtype") not in _ST_DTYPES:
        raise ConversionError(f"{self.path}: tensor {name}: unsupported dtype {info.get('dtype')}")
      b, e = info["data_offsets"]
      want = math.prod(info["shape"]) * _ST_DTYPES[info["dtype"]].itemsize
      if e - b != want or self._base + e > size:
        raise ConversionError(f"{self.path}: tensor {name}: data offsets {b}..{e} do not hold "
                              f"shape {info['shape']} {info['dtype']} (file size {size})")
    self._mm = np.memmap(self.path, dtype=np.uint8, mode="r") if size > self._base else None

  def keys(self) -> list[str]:
    return list(self._info)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._info[name]["shape"])

  def dtype(self, name: str) -> np.dtype:
    return _ST_DTYPES[self._info[name]["dtype"]]

  def get(self, name: str) -> np.ndarray:
    info = self._info[name]
    b, e = info["data_offsets"]
    dt = _ST_DTYPES[info["dtype"]]
    if e == b:
      return np.zeros(info["shape"], dt)
    return self._mm[self._base + b:self._base + e].view(dt).reshape(info["shape"])


def write_safetensors(
  path: str | os.PathLike,
  specs: list[tuple[str, tuple[int, ...], np.dtype]],
  produce: Callable[[str], np.ndarray],
  metadata: Mapping[str, str] | None = None,
  progress: Progress | None = None,
) -> None:
  """Writes tensors one at a time: the header is laid out from `specs`, then `produce(name)` is
  called per tensor, so only one tensor's bytes are in memory beyond the caller's own tree."""
  header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
  off = 0
  for name, shape, dt in specs:
    nbytes = math.prod(shape) * np.dtype(dt).itemsize
    header[name] = {"dtype": _ST_NAMES[np.dtype(dt)], "shape": list(shape),
                    "data_offsets": [off, off + nbytes]}
    off += nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-(8 + len(blob)) % 8)  # data section starts 8-byte aligned
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for i, (name, shape, dt) in enumerate(specs):
      arr = produce(name)
      if tuple(arr.shape) != tuple(shape) or arr.dtype != np.dtype(dt):
        raise ConversionError(f"{path}: tensor {name}: produced {arr.shape} {arr.dtype}, "
                              f"declared {shape} {np.dtype(dt)}")
      # A byte view of the contiguous array: no second copy of a multi-GB hash table.
      f.write(memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8)))
      if progress:
        progress(i + 1, len(specs), name, tuple(shape))


class TensorSource:
  """A set of named tensors (one file or several shards) with cheap header access."""

  def keys(self) -> list[str]:
    raise NotImplementedError

  def shape(self, name: str) -> tuple[int, ...]:
    raise NotImplementedError

  def dtype(self, name: str) -> np.dtype:
    raise NotImplementedError

  def get(self, name: str) -> np.ndarray:
    raise NotImplementedError

  def where(self, name: str) -> str:
    """The file that holds `name` (for error messages)."""
    raise NotImplementedError


class SafetensorsSource(TensorSource):
  """One `model.safetensors`, or shards listed by `model.safetensors.index.json`."""

  def __init__(self, files: Iterable[Path], label: str):
    self.label = label
    self._owner: dict[str, SafetensorsFile] = {}
    for p in files:
      st = SafetensorsFile(p)
      for k in st.keys():
        if k in self._owner:
          raise ConversionError(f"{p}: tensor {k} also appears in {self._owner[k].path}")
        self._owner[k] = st

  @classmethod
  def from_dir(cls, src: Path, stem: str = "model") -> SafetensorsSource:
    index = src / f"{stem}.safetensors.index.json"
    single = src / f"{stem}.safetensors"
    if index.is_file():
      try:
        wmap = json.loads(index.read_text())["weight_map"]
      except (json.JSONDecodeError, KeyError) as e:
        raise ConversionError(f"{index}: not a safetensors index ({e})") from e
      files = sorted(set(wmap.values()))
      for fn in files:
        if not (src / fn).is_file():
          raise ConversionError(f"{index}: shard {fn} is missing")
      out = cls([src / fn for fn in files], str(index))
      for k, fn in wmap.items():
        if k not in out._owner or out._owner[k].path.name != fn:
          raise ConversionError(f"{index}: tensor {k} is listed in {fn} but not stored there")
      for k, st in out._owner.items():
        if k not in wmap:
          raise ConversionError(f"{st.path}: tensor {k} is not listed in {index.name}")
      return out
    if single.is_file():
      return cls([single], str(single))
    raise ConversionError(f"{src}: neither {single.name} nor {index.name} found")

  def keys(self) -> list[str]:
    return list(self._owner)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._owner[name].shape(name)

  def dtype(self, name: str) -> np.dtype:
    return self._owner[name].dtype(name)

  def get(self, name: str) -> np.ndarray:
    return self._owner[name].get(name)

  def where(self, name: str) -> str:
    return str(self._owner[name].path) if name in self._owner else self.label


# ------------------------------------------------------------------------------------------------
# The parameter layout: one Leaf per bltjax array, with its HF and official source names.

# Transform kinds (torch layout -> bltjax layout):
#   copy       same array                       (embeddings, norm scales)
#   dense      weight.T                         ([out, in] -> [in, out])
#   heads_in   weight.T.reshape(D, H, K)        (wq, wk, wv)
#   heads_out  weight.T.reshape(H, K, D)        (wo)
#   hash       HF fused [T*Vh, De] <-> [T, Vh, De]; official: table i <-> [i]


@dataclasses.dataclass(frozen=True)
class Leaf:
  path: tuple[str, ...]
  shape: tuple[int, ...]
  kind: str
  hf: str
  official: tuple[str, ...]  # several names only for the official hash tables
  group: str = "blt"  # "blt" | "entropy": which official source holds the tensor


def torch_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The `[out, in]`-style shape of a bltjax leaf in torch checkpoints (HF layout for hash)."""
  if kind == "copy":
    return shape
  if kind == "dense":
    return (shape[1], shape[0])
  if kind == "heads_in":
    return (shape[1] * shape[2], shape[0])
  if kind == "heads_out":
    return (shape[2], shape[0] * shape[1])
  if kind == "hash":
    return (shape[0] * shape[1], shape[2])
  raise ValueError(kind)


def to_bltjax(kind: str, w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """Torch-layout array -> bltjax-layout array (a view where possible)."""
  if kind == "copy":
    return w
  if kind == "dense":
    return w.T
  if kind in ("heads_in", "heads_out"):
    return w.T.reshape(shape)
  if kind == "hash":
    return w.reshape(shape)
  raise ValueError(kind)


def to_torch(kind: str, x: np.ndarray) -> np.ndarray:
  """bltjax-layout array -> torch-layout array (the exact inverse of `to_bltjax`)."""
  if kind == "copy":
    return x
  if kind == "dense":
    return x.T
  if kind == "heads_in":
    return x.reshape(x.shape[0], -1).T
  if kind == "heads_out":
    return x.reshape(-1, x.shape[2]).T
  if kind == "hash":
    return x.reshape(-1, x.shape[2])
  raise ValueError(kind)


_ATTN = (("wq", "q_proj", "heads_in"), ("wk", "k_proj", "heads_in"),
         ("wv", "v_proj", "heads_in"), ("wo", "o_proj", "heads_out"))


def _block_leaves(path: tuple[str, ...], hf: str, off: str, s: TransformerConfig,
                  group: str) -> list[Leaf]:
  d, h, g, k, f = s.dim, s.n_heads, s.kv_heads, s.head_dim, s.hidden_dim
  shapes = {"wq": (d, h, k), "wk": (d, g, k), "wv": (d, g, k), "wo": (h, k, d)}
  out = [Leaf(path + ("attention", ours, "kernel"), shapes[ours], kind,
              f"{hf}self_attn.{theirs}.weight", (f"{off}attention.{ours}.weight",), group)
         for ours, theirs, kind in _ATTN]
  for ours, theirs, shape in (("w1", "gate_proj", (d, f)), ("w3", "up_proj", (d, f)),
                              ("w2", "down_proj", (f, d))):
    out.append(Leaf(path + ("feed_forward", ours, "kernel"), shape, "dense",
                    f"{hf}mlp.{theirs}.weight", (f"{off}feed_forward.{ours}.weight",), group))
  for ours, theirs in (("attention_norm", "input_layernorm"),
                       ("ffn_norm", "post_attention_layernorm")):
    out.append(Leaf(path + (ours, "scale"), (d,), "copy", f"{hf}{theirs}.weight",
                    (f"{off}{ours}.weight",), group))
  return out


def _cross_leaves(path: tuple[str, ...], hf: str, off: str, d: int, heads: int) -> list[Leaf]:
  k = d // heads
  out = [Leaf(path + ("norm_q", "scale"), (d,), "copy", f"{hf}q_norm.weight",
              (f"{off}cross_attn_norm_q.weight",)),
         Leaf(path + ("norm_kv", "scale"), (d,), "copy", f"{hf}k_norm.weight",
              (f"{off}cross_attn_norm_kv.weight",))]
  for ours, theirs, kind in _ATTN:
    shape = (heads, k, d) if ours == "wo" else (d, heads, k)
    out.append(Leaf(path + (ours, "kernel"), shape, kind, f"{hf}{theirs}.weight",
                    (f"{off}{ours}.weight",)))
  return out


def layout(cfg: BLTConfig) -> list[Leaf]:
  """Every bltjax parameter leaf of `cfg`, in a stable order (the HF export order)."""
  enc, glb, dec, c = cfg.encoder, cfg.global_, cfg.decoder, cfg.cross_attn_k
  de, dg = enc.dim, glb.dim
  out: list[Leaf] = []
  le, me = ("local_encoder",), "model.local_encoder."
  out.append(Leaf(le + ("tok_embeddings", "embedding"), (cfg.input_vocab, de), "copy",
                  f"{me}embed_tokens.weight", ("local_encoder.tok_embeddings.weight",)))
  t = cfg.hash.num_tables
  if t:
    out.append(Leaf(le + ("hash_embeddings", "embedding"), (t, cfg.hash.vocab, de), "hash",
                    "model.encoder_hash_tok_embedding.weight",
                    tuple(f"encoder_hash_tok_embedding.{i}.weight" for i in range(t))))
  for l in range(enc.n_layers):
    out += _block_leaves(le + (f"layers_{l}",), f"{me}layers.{l}.", f"local_encoder.layers.{l}.",
                         enc, "blt")
  out.append(Leaf(le + ("patch_embedding_projection", "kernel"), (de, c * de), "dense",
                  f"{me}patch_embedding_projection.weight",
                  ("local_encoder.patch_embedding_projection.weight",)))
  out += _cross_leaves(le + ("cross_attn_layers_0",), f"{me}cross_attn_layers.0.",
                       "local_encoder.cross_attn_layers.0.", de,
                       cfg.cross_attn_nheads or enc.n_heads)
  gt, mg = ("global_transformer",), "model.global_transformer."
  if cfg.needs_global_projection:
    out.append(Leaf(gt + ("token_embedding_projection", "kernel"), (c * de, dg), "dense",
                    f"{mg}token_embedding_projection.weight",
                    ("global_transformer.token_embedding_projection.weight",)))
  for l in range(glb.n_layers):
    out += _block_leaves(gt + (f"layers_{l}",), f"{mg}layers.{l}.",
                         f"global_transformer.layers.{l}.", glb, "blt")
  ld, md = ("local_decoder",), "model.local_decoder."
  for l in range(dec.n_layers):
    out += _block_leaves(ld + (f"layers_{l}",), f"{md}layers.{l}.", f"local_decoder.layers.{l}.",
                         dec, "blt")
  for l in range(dec.n_layers):
    out += _cross_leaves(ld + (f"cross_attn_layers_{l}",), f"{md}cross_attn_layers.{l}.",
                         f"local_decoder.cross_attn_layers.{l}.", dec.dim,
                         cfg.cross_attn_nheads or dec.n_heads)
  out.append(Leaf(ld + ("patch_embedding_projection", "kernel"), (dg, c * dec.dim), "dense",
                  f"{md}patch_embedding_projection.weight",
                  ("local_decoder.patch_embedding_projection.weight",)))
  out.append(Leaf(ld + ("norm", "scale"), (dec.dim,), "copy", f"{md}norm.weight",
                  ("local_decoder.norm.weight",)))
  out.append(Leaf(ld + ("output", "kernel"), (dec.dim, cfg.vocab_size), "dense",
                  "lm_head.weight", ("local_decoder.output.weight",)))
  if cfg.entropy is not None:
    e, em, mp = cfg.entropy, ("entropy_model",), "model.patcher."
    out.append(Leaf(em + ("tok_embeddings", "embedding"), (cfg.vocab_size, e.dim), "copy",
                    f"{mp}embed_tokens.weight", ("tok_embeddings.weight",), "entropy"))
    for l in range(e.n_layers):
      out += _block_leaves(em + (f"layers_{l}",), f"{mp}layers.{l}.", f"layers.{l}.", e,
                           "entropy")
    out.append(Leaf(em + ("norm", "scale"), (e.dim,), "copy", f"{mp}norm.weight",
                    ("norm.weight",), "entropy"))
    out.append(Leaf(em + ("output", "kernel"), (e.dim, cfg.vocab_size), "dense",
                    f"{mp}lm_head.weight", ("output.weight",), "entropy"))
  return out


def param_shapes(cfg: BLTConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{bltjax path: shape} for every leaf of `cfg` (what `model.abstract_params` must match)."""
  return {leaf.path: leaf.shape for leaf in layout(cfg)}


# ------------------------------------------------------------------------------------------------
# Strict, streaming tree filling and flattening.


@dataclasses.dataclass(frozen=True)
class Plan:
  """One bltjax leaf fed by one source tensor, or by one tensor per slice along axis 0."""

  leaf: Leaf
  source: str  # key of the sources mapping
  names: tuple[str, ...]
  split: bool = False  # names[i] fills leaf[i] (the official per-table hash embeddings)


def _fmt_names(names: list[str], limit: int = 12) -> str:
  more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def check_sources(plans: list[Plan], sources: Mapping[str, TensorSource]) -> None:
  """Names and shapes of every source tensor against the plan, before any data is read.

  Raises:
    ConversionError: missing, extra or mis-shaped tensors (each named with its file and shapes).
  """
  problems: list[str] = []
  for key, src in sources.items():
    want: dict[str, tuple[int, ...]] = {}
    for p in plans:
      if p.source != key:
        continue
      ts = p.leaf.shape[1:] if p.split else torch_shape(p.leaf.kind, p.leaf.shape)
      for n in p.names:
        want[n] = ts
    have = set(src.keys())
    missing = sorted(n for n in want if n not in have)
    extra = sorted(n for n in have if n not in want)
    if missing:
      problems.append("missing tensors: " + _fmt_names(
        [f"{n} (expected shape {list(want[n])}) in {src.where(n)}" for n in missing]))
    if extra:
      problems.append("unexpected tensors: " + _fmt_names(
        [f"{n} (shape {list(src.shape(n))}) in {src.where(n)}" for n in extra]))
    for n in sorted(have & set(want)):
      got = src.shape(n)
      if got != want[n]:
        problems.append(f"{src.where(n)}: tensor {n} has shape {list(got)}, the config expects "
                        f"{list(want[n])}")
      dt = src.dtype(n)
      if not np.issubdtype(dt, np.floating) and dt != np.dtype(ml_dtypes.bfloat16):
        problems.append(f"{src.where(n)}: tensor {n} has non-float dtype {dt}")
  if problems:
    raise ConversionError("; ".join(problems))


def choose_dtype(plans: list[Plan], sources: Mapping[str, TensorSource],
                 dtype: Any = None) -> np.dtype:
  """The stored dtype: `dtype` if given; else the sources' common dtype; mixed -> float32."""
  if dtype is not None:
    return _np_dtype(dtype)
  seen = {sources[p.source].dtype(n) for p in plans for n in p.names}
  if len(seen) == 1:
    return seen.pop()
  log.warning("source tensors mix dtypes %s; storing everything as float32 (lossless)",
              sorted(str(d) for d in seen))
  return np.dtype(np.float32)


def _np_dtype(dtype: Any) -> np.dtype:
  if isinstance(dtype, str) and dtype in ("bfloat16", "bf16"):
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype({"fp32": "float32", "fp16": "float16"}.get(dtype, dtype))


def dtype_name(dt: np.dtype) -> str:
  """float32 / bfloat16 / float16 as the BLTConfig `param_dtype` spells it."""
  return "bfloat16" if dt == np.dtype(ml_dtypes.bfloat16) else np.dtype(dt).name


def fill_tree(plans: list[Plan], sources: Mapping[str, TensorSource], dt: np.dtype,
              progress: Progress | None = None) -> dict[str, Any]:
  """Reads, transforms and casts one tensor at a time into a nested dict of numpy arrays."""
  tree: dict[str, Any] = {}
  for i, p in enumerate(plans):
    src, leaf = sources[p.source], p.leaf
    try:
      if p.split:
        arr = np.empty(leaf.shape, dt)
        for j, n in enumerate(p.names):
          arr[j] = src.get(n)
      else:
        w = src.get(p.names[0])
        arr = np.ascontiguousarray(to_bltjax(leaf.kind, w, leaf.shape).astype(dt, copy=False))
    except (OSError, ValueError) as e:
      raise ConversionError(f"{src.where(p.names[0])}: tensor {p.names[0]}: {e}") from e
    node = tree
    for k in leaf.path[:-1]:
      node = node.setdefault(k, {})
    node[leaf.path[-1]] = arr
    if progress:
      progress(i + 1, len(plans), p.names[0], leaf.shape)
  return tree


def flat_leaves(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple, Any]:
  out: dict[tuple, Any] = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flat_leaves(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def check_tree(tree: Mapping[str, Any], cfg: BLTConfig) -> dict[tuple, Any]:
  """A parameter tree against the layout of `cfg`: no missing, extra or mis-shaped leaf."""
  flat = flat_leaves(tree)
  want = param_shapes(cfg)
  problems = []
  missing = ["/".join(p) for p in want if p not in flat]
  extra = ["/".join(p) for p in flat if p not in want]
  if missing:
    problems.append("missing parameters: " + _fmt_names(missing))
  if extra:
    problems.append("unexpected parameters: " + _fmt_names(extra))
  for p, shape in want.items():
    if p in flat and tuple(flat[p].shape) != shape:
      problems.append(f"parameter {'/'.join(p)} has shape {list(flat[p].shape)}, the config "
                      f"expects {list(shape)}")
  if problems:
    raise ConversionError("; ".join(problems))
  return flat


def host_array(x: Any) -> np.ndarray:
  """A numpy view of a (possibly jax) array; bf16 stays bf16 through ml_dtypes."""
  return np.asarray(x)


# ------------------------------------------------------------------------------------------------
# HF config <-> BLTConfig.

# HF class defaults, used only when a key is absent (so we build what HF would build).
_HF_STACK_DEFAULTS = {
  "encoder_config": dict(hidden_size=1024, num_hidden_layers=1, num_attention_heads=16,
                         intermediate_size=None, theta=500000.0),
  "decoder_config": dict(hidden_size=1024, num_hidden_layers=9, num_attention_heads=16,
                         intermediate_size=2816, theta=500000.0),
  "global_config": dict(hidden_size=2048, num_hidden_layers=25, num_attention_heads=16,
                        intermediate_size=5632, theta=500000.0),
  "patcher_config": dict(hidden_size=768, num_hidden_layers=14, num_attention_heads=12,
                         intermediate_size=2048, theta=10000.0),
}
# Keys HF (4.57.1 / 5.x) writes that carry nothing for bltjax, or that we check separately.
_HF_PASSIVE = {
  "_name_or_path", "architectures", "bos_token_id", "eos_token_id", "pad_token_id", "dtype",
  "torch_dtype", "initializer_range", "transformers_version", "use_cache", "model_type",
  "tie_word_embeddings", "max_position_embeddings", "dropout", "output_attentions",
  "output_hidden_states", "return_dict", "is_decoder", "is_encoder_decoder", "add_cross_attention",
  "chunk_size_feed_forward", "pruned_heads", "problem_type", "tf_legacy_loss", "torchscript",
  "use_bfloat16", "id2label", "label2id", "tokenizer_class", "_attn_implementation",
  "attention_bias", "attention_dropout", "encoder_cross_output_size", "patching_device",
  "realtime_patching", "patching_batch_size", "num_hidden_layers", "hidden_size",
  "num_attention_heads", "rope_theta", "rope_parameters", "rope_scaling", "head_dim",
  "hidden_act", "rms_norm_eps", "norm_eps", "sliding_window", "vocab_size", "pm_size",
  "layer_types",
}
_HF_HISTORICAL = {"attn_impl", "attn_bias_type"}


def _rope_theta(sub: Mapping[str, Any], where: str, default: float) -> float:
  rp = sub.get("rope_parameters")
  if isinstance(rp, Mapping):
    if rp.get("rope_type", "default") != "default":
      raise ConversionError(f"{where}.rope_parameters.rope_type: {rp.get('rope_type')!r} is not "
                            "supported (bltjax implements the default RoPE)")
    if "rope_theta" in rp:
      return float(rp["rope_theta"])
  rs = sub.get("rope_scaling")
  if isinstance(rs, Mapping) and rs.get("rope_type", rs.get("type", "default")) != "default":
    raise ConversionError(f"{where}.rope_scaling: {rs!r} is not supported (default RoPE only)")
  return float(sub.get("rope_theta", default))


def _warn_unknown(d: Mapping[str, Any], known: set[str], where: str) -> None:
  for k in d:
    if k in _HF_HISTORICAL:
      log.warning("%s.%s: historical key ignored (value %r)", where, k, d[k])
    elif k not in known and k not in _HF_PASSIVE:
      log.warning("%s.%s: unknown HF config key ignored", where, k)


def _hf_stack(d: Mapping[str, Any], key: str, where: str, name: str,
              window: int | None) -> TransformerConfig:
  sub = d.get(key)
  if not isinstance(sub, Mapping):
    raise ConversionError(f"{where}: {key} is missing or not a dict")
  w = f"{where}:{key}"
  df = _HF_STACK_DEFAULTS[key]
  _warn_unknown(sub, {"num_key_value_heads", "intermediate_size", "cross_attn_all_layers",
                      "cross_attn_k", "hidden_size_global"}, w)
  if sub.get("hidden_act", "silu") != "silu":
    raise ConversionError(f"{w}.hidden_act: {sub['hidden_act']!r} is not supported (silu only)")
  if sub.get("vocab_size", VOCAB_SIZE) != VOCAB_SIZE:
    raise ConversionError(f"{w}.vocab_size: {sub['vocab_size']} (bltjax needs {VOCAB_SIZE})")
  dim = sub.get("hidden_size", df["hidden_size"])
  heads = sub.get("num_attention_heads", df["num_attention_heads"])
  ffn = sub.get("intermediate_size", df["intermediate_size"])
  if ffn is None:
    ffn = int(8 * dim / 3)  # HF's own fallback when the key is null
  hd = sub.get("head_dim")
  if hd is not None and heads and hd != dim // heads:
    raise ConversionError(f"{w}.head_dim: {hd} != hidden_size / num_attention_heads "
                          f"({dim} / {heads}); bltjax derives head_dim")
  eps = sub.get("rms_norm_eps", sub.get("norm_eps", 1e-5))
  kv = sub.get("num_key_value_heads")
  kv = None if kv == heads else kv  # canonical: None means MHA in every importer
  try:
    return TransformerConfig(dim=dim, n_layers=sub.get("num_hidden_layers",
                                                       df["num_hidden_layers"]),
                             n_heads=heads, n_kv_heads=kv,
                             ffn_dim=ffn, rope_theta=_rope_theta(sub, w, df["theta"]),
                             norm_eps=float(eps), window=window, name=name)
  except ConfigError as e:
    raise ConversionError(f"{w}: {e}") from e


def config_from_hf(d: Mapping[str, Any], where: str = "config.json") -> BLTConfig:
  """An HF `BltConfig` dict (as in `config.json`) -> BLTConfig.

  Accepts both `rms_norm_eps` and `norm_eps`, both `rope_parameters` and `rope_theta`; reads the
  local window from `local_attention_window_len` (default 512) and the patcher's from its
  `sliding_window` (default 512). Cross-attention uses the local head counts, as HF does.

  Raises:
    ConversionError: a key whose value bltjax cannot represent (the message names the key).
  """
  if d.get("model_type", "blt") != "blt":
    raise ConversionError(f"{where}.model_type: {d['model_type']!r}, expected 'blt'")
  _warn_unknown(d, {"patch_in_forward", "patch_size", "patching_mode", "patching_threshold",
                    "max_patch_length", "local_attention_window_len", "cross_attn_k",
                    "encoder_hash_byte_group_size", "encoder_hash_byte_group_vocab",
                    "encoder_hash_byte_group_nb_functions", "patcher_config", "encoder_config",
                    "decoder_config", "global_config", "monotonicity",
                    "patching_threshold_add"}, where)
  if d.get("vocab_size", VOCAB_SIZE) != VOCAB_SIZE:
    raise ConversionError(f"{where}.vocab_size: {d['vocab_size']} (bltjax needs {VOCAB_SIZE})")
  local_window = d.get("local_attention_window_len", 512)
  enc = _hf_stack(d, "encoder_config", where, "encoder", local_window)
  dec = _hf_stack(d, "decoder_config", where, "decoder", local_window)
  glb = _hf_stack(d, "global_config", where, GLOBAL_KEY, None)
  k = d.get("cross_attn_k", 2)
  for key, want_all in (("encoder_config", False), ("decoder_config", True)):
    sub = d[key]
    if sub.get("cross_attn_k", k) != k:
      raise ConversionError(f"{where}:{key}.cross_attn_k: {sub['cross_attn_k']} != top-level "
                            f"cross_attn_k {k}")
    hsg = sub.get("hidden_size_global", glb.dim)
    if hsg != glb.dim and key == "encoder_config":
      # HF's encoder never reads it (its patch projection is sized by hidden_size).
      log.warning("%s:%s.hidden_size_global: %s != global_config.hidden_size %s, ignored as HF "
                  "ignores it", where, key, hsg, glb.dim)
    elif hsg != glb.dim:
      raise ConversionError(f"{where}:{key}.hidden_size_global: {hsg} != global_config."
                            f"hidden_size {glb.dim} (HF sizes the decoder's patch projection by "
                            "it, so it must read the global model's output)")
    heads = sub.get("num_attention_heads", _HF_STACK_DEFAULTS[key]["num_attention_heads"])
    if sub.get("num_key_value_heads") not in (None, heads):
      raise ConversionError(f"{where}:{key}.num_key_value_heads: {sub['num_key_value_heads']} != "
                            f"num_attention_heads {heads} is not supported (HF would use grouped "
                            "keys in the cross-attention too; bltjax cross-attention has no GQA)")
    if bool(sub.get("cross_attn_all_layers", want_all)) != want_all:
      raise ConversionError(f"{where}:{key}.cross_attn_all_layers: {sub['cross_attn_all_layers']}"
                            f" is not supported (bltjax implements the release layout: encoder "
                            "cross-attention at the last layer only, decoder at every layer)")
  entropy = None
  mode = d.get("patching_mode", "entropy") or "entropy"
  if d.get("patch_in_forward", True):
    pc = d.get("patcher_config")
    window = pc.get("sliding_window", 512) if isinstance(pc, Mapping) else 512
    entropy = _hf_stack(d, "patcher_config", where, "entropy", window)
  elif mode == "entropy":
    # HF without a patcher runs one byte per patch unless patch_lengths are passed.
    log.warning("%s: patch_in_forward is false (no entropy model): using byte patching", where)
    mode = "byte"
  if d.get("monotonicity") or d.get("patching_threshold_add"):
    log.warning("%s: monotonicity / patching_threshold_add are stored but ignored by HF; "
                "importing the plain global threshold HF runs", where)
  sizes = d.get("encoder_hash_byte_group_size") or [3, 4, 5, 6, 7, 8]
  threshold = d.get("patching_threshold", RELEASE_THRESHOLD)
  try:
    return BLTConfig(
      encoder=enc, global_=glb, decoder=dec, entropy=entropy,
      hash=HashConfig(group_sizes=tuple(sizes),
                      vocab=d.get("encoder_hash_byte_group_vocab", 500002),
                      nb_functions=d.get("encoder_hash_byte_group_nb_functions", 1)),
      patcher=PatcherConfig(mode=mode, threshold=threshold,
                            max_patch_length=d.get("max_patch_length"),
                            patch_size=float(d.get("patch_size", 4) or 4)),
      cross_attn_k=k)
  except ConfigError as e:
    raise ConversionError(f"{where}: {e}") from e


def _rope_keys(theta: float) -> dict[str, Any]:
  # Both spellings: 4.57.1 reads rope_theta/rope_scaling, 5.x reads rope_parameters.
  return {"rope_theta": theta, "rope_scaling": None,
          "rope_parameters": {"rope_type": "default", "rope_theta": theta}}


def _hf_sub(s: TransformerConfig, **extra: Any) -> dict[str, Any]:
  return {"hidden_size": s.dim, "num_hidden_layers": s.n_layers,
          "num_attention_heads": s.n_heads, "num_key_value_heads": s.kv_heads,
          "head_dim": s.head_dim, "intermediate_size": s.hidden_dim, "rms_norm_eps": s.norm_eps,
          "hidden_act": "silu", "dropout": 0.0, **_rope_keys(s.rope_theta), **extra}


def config_to_hf(cfg: BLTConfig, dtype: str = "float32") -> dict[str, Any]:
  """BLTConfig -> an HF `config.json` dict that transformers 4.57.1 and 5.x both load.

  Raises:
    ConversionError: a bltjax feature HF cannot express (named by its config key).
  """
  bad = []
  if cfg.diffusion.enabled:
    bad.append("diffusion.block_size (BLT-D has no HF equivalent)")
  if cfg.cross_attn_residual != "double":
    bad.append("cross_attn_residual (HF implements 'double')")
  if cfg.hash.normalize != "none" or cfg.hash.short_ngrams != "boe_pad":
    bad.append("hash.normalize / hash.short_ngrams (HF implements the release hashing)")
  for key, s in (("encoder", cfg.encoder), ("decoder", cfg.decoder)):
    if cfg.cross_attn_nheads not in (None, s.n_heads):
      bad.append(f"cross_attn_nheads (HF uses {key}.n_heads = {s.n_heads})")
    if s.kv_heads != s.n_heads:
      bad.append(f"{key}.n_kv_heads (HF would use grouped keys in the cross-attention too)")
  if cfg.encoder.window != cfg.decoder.window:
    bad.append("decoder.window (HF has one local_attention_window_len)")
  if cfg.global_.window is not None:
    bad.append("global.window (HF's global attention is plain causal)")
  if bad:
    raise ConversionError("cannot export to HF format: " + "; ".join(dict.fromkeys(bad)))
  p = cfg.patcher
  if p.mode not in ("entropy", "byte") or p.monotonicity or p.threshold_add is not None:
    log.warning("patcher %s is not implemented by HF (it runs the plain entropy threshold, or "
                "one byte per patch without a patcher); pass patch_lengths to HF explicitly", p)
  if p.patch_size != int(p.patch_size):
    log.warning("patcher.patch_size %s rounded to %d for HF", p.patch_size, int(p.patch_size))
  c, gdim = cfg.cross_attn_k, cfg.global_.dim
  local = dict(vocab_size=VOCAB_SIZE, cross_attn_k=c, hidden_size_global=gdim,
               max_position_embeddings=24576)
  out: dict[str, Any] = {
    "architectures": ["BltForCausalLM"], "model_type": "blt", "vocab_size": VOCAB_SIZE,
    "max_position_embeddings": 4096, "patch_in_forward": cfg.entropy is not None,
    "patch_size": int(p.patch_size), "patching_mode": p.mode,
    "patching_threshold": p.threshold, "patching_batch_size": 1,
    "max_patch_length": p.max_patch_length,
    "monotonicity": p.monotonicity, "patching_threshold_add": p.threshold_add,
    "local_attention_window_len": cfg.encoder.window, "cross_attn_k": c,
    "encoder_hash_byte_group_size": list(cfg.hash.group_sizes),
    "encoder_hash_byte_group_vocab": cfg.hash.vocab,
    "encoder_hash_byte_group_nb_functions": cfg.hash.nb_functions,
    "tie_word_embeddings": False, "use_cache": False,  # HF's BLT cache is not correct
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None, "dtype": dtype,
    # The three attributes HF's own tests set by hand; cache-building code reads them.
    "num_hidden_layers": cfg.encoder.n_layers, "hidden_size": cfg.decoder.dim,
    "num_attention_heads": cfg.decoder.n_heads,
    "encoder_config": _hf_sub(cfg.encoder, model_type="blt_local_encoder",
                              cross_attn_all_layers=False, sliding_window=cfg.encoder.window,
                              **local),
    "decoder_config": _hf_sub(cfg.decoder, model_type="blt_local_decoder",
                              cross_attn_all_layers=True, **local),
    "global_config": _hf_sub(cfg.global_, model_type="blt_global_transformer",
                             max_position_embeddings=4096),
  }
  if cfg.entropy is not None:
    out["patcher_config"] = _hf_sub(cfg.entropy, model_type="blt_patcher",
                                    vocab_size=VOCAB_SIZE, max_position_embeddings=8192,
                                    sliding_window=cfg.entropy.window)
  return out


def generation_config() -> dict[str, Any]:
  """`generation_config.json`: BOS/EOS ids and no KV cache (HF's BLT cache is not correct)."""
  return {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "use_cache": False}


def read_hf_config(src: Path) -> dict[str, Any]:
  path = src / "config.json"
  if not path.is_file():
    raise ConversionError(f"{src}: no config.json (not an HF BLT directory)")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ConversionError(f"{path}: invalid JSON ({e})") from e


# ------------------------------------------------------------------------------------------------
# Public entry points.


def hf_plans(cfg: BLTConfig) -> list[Plan]:
  return [Plan(leaf, "hf", (leaf.hf,)) for leaf in layout(cfg)]


def load_hf(src: str | os.PathLike, *, dtype: Any = None,
            progress: Progress | None = None) -> tuple[BLTConfig, dict[str, Any]]:
  """Reads an HF BLT directory into (BLTConfig, nested dict of numpy arrays).

  Args:
    src: directory with `config.json` and `model.safetensors` (or shards + index).
    dtype: cast to this dtype; None keeps the stored dtype (bf16 stays bf16).
    progress: called after each tensor as `progress(i, n, name, shape)`.

  Raises:
    ConversionError: bad config, or missing / extra / mis-shaped tensors (named with the file).
  """
  src = Path(src)
  cfg = config_from_hf(read_hf_config(src), str(src / "config.json"))
  sources = {"hf": SafetensorsSource.from_dir(src)}
  plans = hf_plans(cfg)
  check_sources(plans, sources)
  dt = choose_dtype(plans, sources, dtype)
  tree = fill_tree(plans, sources, dt, progress)
  return cfg.replace(param_dtype=dtype_name(dt)), tree


def import_hf(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: Any = None,
              overwrite: bool = False, progress: Progress | None = None) -> Path:
  """HF directory -> bltjax checkpoint directory (created only when complete)."""
  cfg, tree = load_hf(src, dtype=dtype, progress=progress)
  meta = {"source": {"format": "hf", "path": str(Path(src).absolute())}}
  return weights.save_checkpoint(dst, tree, cfg, meta, overwrite=overwrite)


def save_hf(dst: str | os.PathLike, params: Mapping[str, Any], cfg: BLTConfig, *,
            dtype: Any = None, overwrite: bool = False,
            progress: Progress | None = None) -> Path:
  """Writes an HF directory (config.json, model.safetensors, generation_config.json).

  The directory appears only when complete; tensors are converted and written one at a time.

  Args:
    dst: the HF directory to create.
    params: bltjax parameter tree (numpy or jax arrays); must match `cfg` exactly.
    cfg: the model config.
    dtype: cast on write; None keeps the tree's dtypes.
    overwrite: replace an existing `dst`.
    progress: called after each tensor.

  Raises:
    ConversionError: the tree does not match `cfg`, or `cfg` has no HF equivalent.
  """
  flat = check_tree(params, cfg)
  leaves = layout(cfg)
  dts = {np.dtype(flat[leaf.path].dtype) for leaf in leaves}
  out_dt = _np_dtype(dtype) if dtype is not None else (dts.pop() if len(dts) == 1
                                                        else np.dtype(np.float32))
  hf_cfg = config_to_hf(cfg, dtype_name(out_dt))
  by_name = {leaf.hf: leaf for leaf in leaves}

  def produce(name: str) -> np.ndarray:
    leaf = by_name[name]
    x = host_array(flat[leaf.path])
    return np.ascontiguousarray(to_torch(leaf.kind, x).astype(out_dt, copy=False))

  specs = [(leaf.hf, torch_shape(leaf.kind, leaf.shape), out_dt) for leaf in leaves]
  dst, tmp = weights.staging_dir(dst, overwrite)
  try:
    (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
    (tmp / "generation_config.json").write_text(json.dumps(generation_config(), indent=2) + "\n")
    write_safetensors(tmp / "model.safetensors", specs, produce, {"format": "pt"}, progress)
    weights.publish_dir(tmp, dst, overwrite)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return dst


def export_hf(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: Any = None,
              overwrite: bool = False, progress: Progress | None = None) -> Path:
  """bltjax checkpoint directory -> HF directory."""
  cfg, params = weights.load_checkpoint(src)
  return save_hf(dst, params, cfg, dtype=dtype, overwrite=overwrite, progress=progress)
