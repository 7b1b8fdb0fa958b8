"""Meta's official BLT checkpoints (`facebookresearch/blt`) -> bltjax.

Two layouts (docs/architecture.md), both with the official tensor names
(`local_encoder.layers.0.attention.wq.weight`, `encoder_hash_tok_embedding.{i}.weight`,
`local_decoder.output.weight`, ...):

* hub-mixin (`facebook/blt-1b`): `config.json` = {"args": ByteLatentTransformerArgs},
  `model.safetensors`, optional `train_args.json` (TrainArgs; `data.patcher_args`).
* consolidated (`facebook/blt` snapshot, `blt_1b/`): `params.json` (TrainArgs: `model`,
  `data.patcher_args`, `distributed.model_dtype`) and `consolidated.pth` = {"model": state_dict}.

The entropy model lives in its own directory: `params.json` with an `entropy_model` block and
`consolidated.pth`, or a hub-mixin directory (`config.json` = {"args": LMTransformerArgs} +
`model.safetensors`). Without `--entropy` we look for `SRC/entropy_model` and
`SRC/../entropy_model`.

`.pth` files need torch; they are opened with `torch.load(weights_only=True, mmap=True)`, so
tensors are read lazily from the page cache one at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from bltjax import weights
from bltjax.config import (
  GLOBAL_KEY,
  PATCHING_MODES,
  RELEASE_THRESHOLD,
  VOCAB_SIZE,
  BLTConfig,
  ConfigError,
  HashConfig,
  PatcherConfig,
  TransformerConfig,
  ffn_dim_from_rule,
)
from bltjax.convert.hf import (
  ConversionError,
  Plan,
  Progress,
  SafetensorsSource,
  TensorSource,
  check_sources,
  choose_dtype,
  dtype_name,
  fill_tree,
  layout,
  log,
)

# ByteLatentTransformerArgs defaults for the keys we read (a pydantic dump carries them all; a
# hand-written file may not).
_BLT_DEFAULTS: dict[str, Any] = {
  "dim_local_encoder": 512, "dim_local_decoder": 512, "dim_global": 512,
  "n_layers_local_encoder": 8, "n_layers_local_decoder": 8, "n_layers_global": 8,
  "n_heads_local_encoder": 8, "n_heads_local_decoder": 8, "n_heads_global": 8,
  "n_kv_heads": None, "n_kv_heads_global": None, "head_dim": None,
  "cross_attn_k": None, "cross_attn_nheads": None, "cross_attn_encoder": False,
  "cross_attn_decoder": False, "cross_attn_all_layers_encoder": False,
  "cross_attn_all_layers_decoder": False, "cross_attn_init_by_pooling": False,
  "cross_attn_window_encoder": None, "cross_attn_window_decoder": None,
  "downsampling_by_pooling": None, "encoder_hash_byte_group_size": None,
  "encoder_hash_byte_group_vocab": 30000, "encoder_hash_byte_group_nb_functions": 3,
  "local_attention_window_len": None, "rope_theta": 10000.0, "norm_eps": 1e-5,
  "multiple_of": 256, "ffn_dim_multiplier": 1.0, "vocab_size": -1,
  "patching_mode": None, "patching_threshold": None, "patching_threshold_add": None,
  "monotonicity": False, "max_patch_length": None, "patch_size": None,
  "encoder_enable_byte_ngrams": False, "encoder_ngram_table_dir": None,
  "encoder_ngram_to_size_str": None, "conv_kernel_size": None, "use_rope": True,
  "non_linearity": "swiglu", "norm_type": "rmsnorm", "weight_tying": False, "pm_size": 0,
  "dim_token": None, "init_std_factor": "disabled",
}
_PATCHER_DEFAULTS: dict[str, Any] = {
  "patching_mode": "entropy", "threshold": RELEASE_THRESHOLD, "threshold_add": None,
  "max_patch_length": None, "patch_size": 4.5, "monotonicity": False,
}


def _read_json(path: Path) -> dict[str, Any]:
  try:
    doc = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ConversionError(f"{path}: invalid JSON ({e})") from e
  if not isinstance(doc, dict):
    raise ConversionError(f"{path}: expected a JSON object")
  return doc


class TorchSource(TensorSource):
  """A `torch.save`d state dict ({"model": {...}}), memory-mapped, tensors handed out as numpy."""

  def __init__(self, path: Path):
    try:
      import torch
    except ImportError as e:  # pragma: no cover - torch is in the convert/oracle extras
      raise ConversionError(f"{path}: reading .pth files needs torch (pip install torch)") from e
    self.path = path
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
      if "mmap" not in str(e):
        raise ConversionError(f"{path}: cannot load ({e})") from e
      log.warning("%s: legacy (non-zip) torch file, loading without mmap", path)
      obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in several types
      raise ConversionError(f"{path}: cannot load ({e})") from e
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
      obj = obj["model"]
    if not isinstance(obj, Mapping):
      raise ConversionError(f"{path}: expected {{'model': state_dict}}, got {type(obj).__name__}")
    self._sd = {}
    for k, v in obj.items():
      if not isinstance(v, torch.Tensor):
        raise ConversionError(f"{path}: entry {k} is a {type(v).__name__}, not a tensor")
      self._sd[k] = v
    self._torch = torch

  def keys(self) -> list[str]:
    return list(self._sd)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._sd[name].shape)

  def dtype(self, name: str) -> np.dtype:
    t = self._sd[name].dtype
    if t == self._torch.bfloat16:
      return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(str(t).removeprefix("torch."))

  def get(self, name: str) -> np.ndarray:
    t = self._sd[name]
    if t.dtype == self._torch.bfloat16:  # numpy has no bf16: reinterpret the bits
      return t.view(self._torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()

  def where(self, name: str) -> str:
    return str(self.path)


# ------------------------------------------------------------------------------------------------
# Configs.


def _refuse(args: Mapping[str, Any], where: str) -> None:
  """Raises on official features bltjax does not implement (docs/architecture.md)."""
  bad = []

  def get(k):
    return args.get(k, _BLT_DEFAULTS.get(k))

  if get("encoder_enable_byte_ngrams"):
    bad.append("encoder_enable_byte_ngrams=True (n-gram lookup tables)")
  if get("encoder_ngram_table_dir") or get("encoder_ngram_to_size_str"):
    bad.append("encoder_ngram_table_dir / encoder_ngram_to_size_str (n-gram lookup tables)")
  if get("conv_kernel_size") is not None:
    bad.append(f"conv_kernel_size={get('conv_kernel_size')}")
  if not get("cross_attn_encoder"):
    bad.append("cross_attn_encoder=False (pooling-only downsampling)")
  if not get("cross_attn_decoder"):
    bad.append("cross_attn_decoder=False (additive decoder)")
  if get("cross_attn_all_layers_encoder"):
    bad.append("cross_attn_all_layers_encoder=True (encoder cross-attention at every layer)")
  if get("cross_attn_decoder") and not get("cross_attn_all_layers_decoder"):
    bad.append("cross_attn_all_layers_decoder=False (decoder cross-attention at layer 0 only)")
  if get("cross_attn_encoder") and not get("cross_attn_init_by_pooling"):
    bad.append("cross_attn_init_by_pooling=False")
  if get("cross_attn_encoder") and get("downsampling_by_pooling") not in ("max", None):
    bad.append(f"downsampling_by_pooling={get('downsampling_by_pooling')!r} (max only)")
  if not get("use_rope"):
    bad.append("use_rope=False")
  if get("non_linearity") != "swiglu":
    bad.append(f"non_linearity={get('non_linearity')!r}")
  if get("norm_type") != "rmsnorm":
    bad.append(f"norm_type={get('norm_type')!r}")
  if get("weight_tying"):
    bad.append("weight_tying=True")
  if get("pm_size"):
    bad.append(f"pm_size={get('pm_size')}")
  if get("dim_token") not in (None, get("dim_local_encoder")):
    bad.append(f"dim_token={get('dim_token')} (local token-embedding projection)")
  if bad:
    raise ConversionError(f"{where}: unsupported by bltjax: " + "; ".join(bad))
  for k in ("cross_attn_window_encoder", "cross_attn_window_decoder"):
    if get(k) is not None:
      log.warning("%s: %s=%s is ignored (as the HF port does)", where, k, get(k))


def _ffn(dim: int, args: Mapping[str, Any], where: str) -> int:
  mult = args.get("ffn_dim_multiplier", 1.0)
  mult = 1.0 if mult is None else float(mult)
  return ffn_dim_from_rule(dim, int(args.get("multiple_of", 256)), mult)


def _stack(args: Mapping[str, Any], where: str, name: str, dim: int, n_layers: int,
           n_heads: int | None, n_kv: int | None, theta: float, window: int | None,
           ) -> TransformerConfig:
  hd = args.get("head_dim")
  if n_heads is None and hd:
    n_heads = dim // hd
  if hd is not None and n_heads and hd != dim // n_heads:
    raise ConversionError(f"{where}.head_dim: {hd} != dim / n_heads ({dim} / {n_heads})")
  if n_kv == n_heads:
    n_kv = None  # canonical: None means MHA in every importer
  try:
    return TransformerConfig(dim=int(dim), n_layers=int(n_layers), n_heads=int(n_heads),
                             n_kv_heads=n_kv, ffn_dim=_ffn(dim, args, where),
                             rope_theta=float(theta), norm_eps=float(args.get("norm_eps", 1e-5)),
                             window=window, name=name)
  except (ConfigError, TypeError) as e:
    raise ConversionError(f"{where}: {e}") from e


def entropy_config(block: Mapping[str, Any], where: str) -> TransformerConfig:
  """An `entropy_model` block / LMTransformerArgs dict -> TransformerConfig (RoPE 10000 default;
  the window is 512 as the official `load_entropy_model` forces)."""
  if block.get("vocab_size", VOCAB_SIZE) != VOCAB_SIZE:
    raise ConversionError(f"{where}.vocab_size: {block['vocab_size']} (bltjax needs 260)")
  if block.get("weight_tying"):
    raise ConversionError(f"{where}.weight_tying: tied entropy-model output is not supported")
  for k in ("dim", "n_layers"):
    if k not in block:
      raise ConversionError(f"{where}: key {k} is missing")
  return _stack(block, where, "entropy", block["dim"], block["n_layers"], block.get("n_heads"),
                block.get("n_kv_heads"), block.get("rope_theta", 10000.0) or 10000.0,
                block.get("sliding_window") or 512)


def patcher_config(patcher_args: Mapping[str, Any] | None, model_args: Mapping[str, Any],
                   where: str) -> PatcherConfig:
  """`data.patcher_args` (what generation uses) over the model's own patching keys."""
  pa = dict(_PATCHER_DEFAULTS)
  for ours, theirs in (("patching_mode", "patching_mode"), ("threshold", "patching_threshold"),
                       ("threshold_add", "patching_threshold_add"),
                       ("max_patch_length", "max_patch_length"), ("patch_size", "patch_size"),
                       ("monotonicity", "monotonicity")):
    if model_args.get(theirs) is not None:
      pa[ours] = model_args[theirs]
  for k in _PATCHER_DEFAULTS:
    if patcher_args and k in patcher_args:
      pa[k] = patcher_args[k]
  mode = str(pa["patching_mode"]).removeprefix("PatchingModeEnum.")
  if mode not in PATCHING_MODES:
    raise ConversionError(f"{where}: patching_mode {mode!r} is not supported "
                          f"(bltjax implements {PATCHING_MODES})")
  try:
    return PatcherConfig(mode=mode, threshold=pa["threshold"], threshold_add=pa["threshold_add"],
                         monotonicity=bool(pa["monotonicity"]),
                         max_patch_length=pa["max_patch_length"],
                         patch_size=float(pa["patch_size"]))
  except ConfigError as e:
    raise ConversionError(f"{where}: {e}") from e


def config_from_official(args: Mapping[str, Any], *, where: str,
                         patcher_args: Mapping[str, Any] | None = None,
                         entropy: Mapping[str, Any] | None = None,
                         entropy_where: str = "entropy_model",
                         cross_attn_k: int | None = None) -> BLTConfig:
  """ByteLatentTransformerArgs (+ patcher args, + entropy block) -> BLTConfig.

  Args:
    args: the model args dict.
    where: the file they came from (for messages).
    patcher_args: `data.patcher_args`, if any.
    entropy: the entropy model's args, or None when there is no entropy model.
    entropy_where: the entropy args' file.
    cross_attn_k: C derived from the weights; checked against `args["cross_attn_k"]`.

  Raises:
    ConversionError: unsupported features or inconsistent values (named by key).
  """
  _refuse(args, where)

  def get(k):
    return args.get(k, _BLT_DEFAULTS[k])

  if get("vocab_size") != VOCAB_SIZE:
    raise ConversionError(f"{where}.vocab_size: {get('vocab_size')} (bltjax needs 260)")
  k = get("cross_attn_k")
  if cross_attn_k is not None:
    if k is not None and k != cross_attn_k:
      raise ConversionError(f"{where}.cross_attn_k: {k}, but the weights hold "
                            f"local_encoder.patch_embedding_projection for k={cross_attn_k}")
    k = cross_attn_k
  if k is None:
    raise ConversionError(f"{where}.cross_attn_k: missing")
  window, theta = get("local_attention_window_len"), get("rope_theta")
  enc = _stack(args, where, "encoder", get("dim_local_encoder"), get("n_layers_local_encoder"),
               get("n_heads_local_encoder"), get("n_kv_heads"), theta, window)
  dec = _stack(args, where, "decoder", get("dim_local_decoder"), get("n_layers_local_decoder"),
               get("n_heads_local_decoder"), get("n_kv_heads"), theta, window)
  glb = _stack(args, where, GLOBAL_KEY, get("dim_global"), get("n_layers_global"),
               get("n_heads_global"), get("n_kv_heads_global"), theta, None)
  nx = get("cross_attn_nheads")
  if nx is None:
    raise ConversionError(f"{where}.cross_attn_nheads: missing (the official model needs it)")
  if nx == enc.n_heads and nx == dec.n_heads:
    nx = None  # the canonical spelling: same as the local heads, as HF assumes
  sizes = get("encoder_hash_byte_group_size")
  if isinstance(sizes, str):
    sizes = [int(x) for x in sizes.split(",") if x]
  hash_cfg = (HashConfig(group_sizes=tuple(sizes), vocab=get("encoder_hash_byte_group_vocab"),
                         nb_functions=get("encoder_hash_byte_group_nb_functions"))
              if sizes else HashConfig(group_sizes=(), nb_functions=0))
  patcher = patcher_config(patcher_args, args, where)
  ent = entropy_config(entropy, entropy_where) if entropy is not None else None
  if patcher.mode == "entropy" and ent is None:
    raise ConversionError(f"{where}: entropy patching needs the entropy model; pass --entropy DIR "
                          "(a directory with params.json + consolidated.pth, or a hub-mixin dir)")
  try:
    return BLTConfig(encoder=enc, global_=glb, decoder=dec, entropy=ent, hash=hash_cfg,
                     patcher=patcher, cross_attn_k=int(k), cross_attn_nheads=nx)
  except ConfigError as e:
    raise ConversionError(f"{where}: {e}") from e


# ------------------------------------------------------------------------------------------------
# Directory discovery.


def _open_blt(src: Path) -> tuple[dict[str, Any], dict[str, Any] | None, TensorSource, str,
                                  dict[str, Any]]:
  """(model args, patcher args, tensors, config file, extra meta) of a BLT directory."""
  params, hub = src / "params.json", src / "config.json"
  if params.is_file() and (src / "consolidated.pth").is_file():
    doc = _read_json(params)
    if doc.get("train_entropy_model"):
      raise ConversionError(f"{params}: this is an entropy-model checkpoint; pass it with "
                            "--entropy next to a BLT checkpoint")
    if not isinstance(doc.get("model"), Mapping):
      raise ConversionError(f"{params}: no 'model' block (not an official BLT params.json)")
    pa = (doc.get("data") or {}).get("patcher_args")
    extra = {"model_dtype": (doc.get("distributed") or {}).get("model_dtype"),
             "layout": "consolidated"}
    return dict(doc["model"]), pa, TorchSource(src / "consolidated.pth"), str(params), extra
  if hub.is_file():
    doc = _read_json(hub)
    if not isinstance(doc.get("args"), Mapping):
      hint = " (an HF transformers directory? use --from hf)" if "model_type" in doc else ""
      raise ConversionError(f"{hub}: no 'args' block, not an official hub-mixin config{hint}")
    pa = None
    ta = src / "train_args.json"
    if ta.is_file():
      pa = (_read_json(ta).get("data") or {}).get("patcher_args")
    return (dict(doc["args"]), pa, SafetensorsSource.from_dir(src), str(hub),
            {"layout": "hub-mixin"})
  raise ConversionError(f"{src}: neither params.json + consolidated.pth nor a hub-mixin "
                        "config.json + model.safetensors (not an official BLT checkpoint)")


def _open_entropy(src: Path) -> tuple[dict[str, Any], dict[str, Any] | None, TensorSource, str]:
  """(entropy args, patcher args, tensors, config file) of an entropy-model directory."""
  params, hub = src / "params.json", src / "config.json"
  if params.is_file() and (src / "consolidated.pth").is_file():
    doc = _read_json(params)
    block = doc.get("entropy_model")
    if not isinstance(block, Mapping):
      raise ConversionError(f"{params}: no 'entropy_model' block (not an entropy-model dir)")
    pa = (doc.get("data") or {}).get("patcher_args")
    return dict(block), pa, TorchSource(src / "consolidated.pth"), str(params)
  if hub.is_file():
    doc = _read_json(hub)
    if not isinstance(doc.get("args"), Mapping):
      raise ConversionError(f"{hub}: no 'args' block, not a hub-mixin entropy model")
    return dict(doc["args"]), None, SafetensorsSource.from_dir(src), str(hub)
  raise ConversionError(f"{src}: neither params.json + consolidated.pth nor config.json + "
                        "model.safetensors (not an official entropy-model directory)")


def _find_entropy(src: Path) -> Path | None:
  for cand in (src / "entropy_model", src.parent / "entropy_model"):
    if cand.is_dir() and cand.absolute() != src.absolute():
      return cand
  return None


def _cross_attn_k(tensors: TensorSource, args: Mapping[str, Any], where: str) -> int | None:
  """C from `local_encoder.patch_embedding_projection.weight` [C*De, De] (never hard-coded)."""
  name = "local_encoder.patch_embedding_projection.weight"
  if name not in tensors.keys():
    return None  # reported as a missing tensor by the strict check
  rows, de = tensors.shape(name)
  want = args.get("dim_local_encoder", _BLT_DEFAULTS["dim_local_encoder"])
  if de != want or rows % de:
    raise ConversionError(f"{tensors.where(name)}: tensor {name} has shape {[rows, de]}, which "
                          f"is not [k * {want}, {want}] for dim_local_encoder={want} ({where})")
  return rows // de


def official_plans(cfg: BLTConfig) -> list[Plan]:
  out = []
  for leaf in layout(cfg):
    split = leaf.kind == "hash"
    out.append(Plan(leaf, leaf.group, leaf.official, split=split))
  return out


def load_meta(src: str | os.PathLike, *, entropy: str | os.PathLike | None = None,
              dtype: Any = None, progress: Progress | None = None,
              ) -> tuple[BLTConfig, dict[str, Any], dict[str, Any]]:
  """Reads an official BLT checkpoint (+ entropy model) into (cfg, params, provenance).

  Args:
    src: consolidated or hub-mixin BLT directory.
    entropy: the entropy model's directory; None looks next to `src`.
    dtype: cast to this dtype; None keeps the stored dtype (bf16 stays bf16).
    progress: called after each tensor.

  Raises:
    ConversionError: unsupported features, missing / extra / mis-shaped tensors, bad configs.
  """
  src = Path(src)
  args, pa, tensors, where, extra = _open_blt(src)
  ent_dir = Path(entropy) if entropy is not None else _find_entropy(src)
  ent_args = ent_tensors = None
  ent_where = "entropy_model"
  if ent_dir is not None:
    ent_args, ent_pa, ent_tensors, ent_where = _open_entropy(ent_dir)
    pa = pa if pa is not None else ent_pa
  k = _cross_attn_k(tensors, args, where)
  cfg = config_from_official(args, where=where, patcher_args=pa, entropy=ent_args,
                             entropy_where=ent_where, cross_attn_k=k)
  sources: dict[str, TensorSource] = {"blt": tensors}
  if cfg.entropy is not None:
    sources["entropy"] = ent_tensors
  elif ent_dir is not None:
    log.warning("%s: patching mode %r does not use the entropy model in %s; not converting it",
                where, cfg.patcher.mode, ent_dir)
  plans = official_plans(cfg)
  check_sources(plans, sources)
  dt = choose_dtype(plans, sources, dtype)
  tree = fill_tree(plans, sources, dt, progress)
  prov = {"format": "meta", "path": str(src.absolute()), **extra}
  if ent_dir is not None and cfg.entropy is not None:
    prov["entropy"] = str(ent_dir.absolute())
  return cfg.replace(param_dtype=dtype_name(dt)), tree, prov


def import_meta(src: str | os.PathLike, dst: str | os.PathLike, *,
                entropy: str | os.PathLike | None = None, dtype: Any = None,
                overwrite: bool = False, progress: Progress | None = None) -> Path:
  """Official BLT directory -> bltjax checkpoint directory (created only when complete)."""
  cfg, tree, prov = load_meta(src, entropy=entropy, dtype=dtype, progress=progress)
  return weights.save_checkpoint(dst, tree, cfg, {"source": prov}, overwrite=overwrite)
