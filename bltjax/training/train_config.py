"""The training config: `configs/*.py` sections and their frozen, validated form.

A config file's `get_config()` returns an ml_collections `ConfigDict` with sections

  model  -> `BLTConfig.from_dict` (encoder, global_model, decoder, entropy, hash, patcher, ...)
  train  -> `TrainConfig` (task, optimiser, schedule, batch, checkpoints, logging)
  data   -> `bltjax.data.pipeline` (source, split, ...; see `default_data_config`)
  mesh   -> shape (data, fsdp, tensor) with one -1 = fill, and optional logical-axis rule overrides

`base_config()` holds every key with its default, so a config file only states what differs and
command-line overrides (`--config.train.steps=50`, `--config.model.global_model.dim=1024`) always
find the key; optional keys also take `None`, lists and dicts a Python literal. `resolve()` turns
the dict into frozen dataclasses and checks everything that can be checked before compiling; each
error names the dotted key.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from bltjax.config import (
  GLOBAL_KEY,
  BLTConfig,
  ConfigError,
  DiffusionConfig,
  HashConfig,
  PatcherConfig,
  TransformerConfig,
  ceil_div,
)

TASKS = ("entropy", "blt")


class _OrNone(flags.ArgumentParser):
  """`None` for an optional key (`--config.model.patcher.max_patch_length=None`), else `inner`."""

  def __init__(self, inner: flags.ArgumentParser):
    self.inner = inner

  def parse(self, argument: Any) -> Any:
    if isinstance(argument, str) and argument.strip() in ("None", "none"):
      return None
    return self.inner.parse(argument)

  def flag_type(self) -> str:
    return self.inner.flag_type()


class _LiteralOf(flags.ArgumentParser):
  """A Python literal of type `kind` (list, dict) or None; a bare string is a one-item list."""

  def __init__(self, kind: type):
    self.kind = kind

  def parse(self, argument: Any) -> Any:
    value = argument
    if isinstance(argument, str):
      try:
        value = ast.literal_eval(argument)
      except (SyntaxError, ValueError):
        value = argument  # an unquoted path or glob
    if self.kind is list and isinstance(value, str | tuple):
      value = [value] if isinstance(value, str) else list(value)
    if value is not None and not isinstance(value, self.kind):
      raise ValueError(f"expected a {self.kind.__name__} literal or None, got {argument!r}")
    return value

  def flag_type(self) -> str:
    return self.kind.__name__


# ml_collections has no parser for list / dict keys (data.files, data.weights) and cannot reset an
# optional int / float key to None. Every config file imports this module, so these are in place
# before its overrides are parsed.
config_flags.register_flag_parser_for_type(int, _OrNone(flags.IntegerParser()))
config_flags.register_flag_parser_for_type(float, _OrNone(flags.FloatParser()))
config_flags.register_flag_parser_for_type(list, _LiteralOf(list))
config_flags.register_flag_parser_for_type(dict, _LiteralOf(dict))

_OLD_GLOBAL_FLAG = re.compile(r"^(-{1,2}(?:no)?config\.model\.)global(?=\.|$)")


def renamed_flag_error(argv: Sequence[str]) -> str | None:
  """The one-line error for a flag that still names the global stack `global`, else None."""
  for arg in argv[1:]:
    if arg == "--":
      break
    name = arg.split("=", 1)[0]
    m = _OLD_GLOBAL_FLAG.match(name)
    if m:
      new = m.group(1) + GLOBAL_KEY + name[m.end():]
      return f"error: {name}: the section is now '{GLOBAL_KEY}' ({new})"
  return None


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def section(cls: type, skip: tuple[str, ...] = (), **overrides: Any) -> ml_collections.ConfigDict:
  """A ConfigDict with every field of dataclass `cls` (defaults, then `overrides`).

  Fields that are None (by default or by `overrides`) become typed placeholders, so a command-line
  override such as `--config.model.patcher.max_patch_length=8` finds the key and parses the value
  (a plain None would be typed NoneType, which no override can set).
  """
  c = ml_collections.ConfigDict()
  fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip and f.name != "name"}
  for k in overrides:
    if k not in fields:
      _fail(f"{cls.__name__}.{k}", f"unknown key (known: {sorted(fields)})")
  for name, f in fields.items():
    if name in overrides:
      value = overrides[name]
    elif f.default is not dataclasses.MISSING:
      value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
      value = f.default_factory()  # type: ignore[misc]
    else:
      value = None
    if value is None:
      kind = next((t for n, t in _TYPES.items() if n in str(f.type)), None)
      value = ml_collections.config_dict.placeholder(kind) if kind else None
    c[name] = value
  return c


def stack(dim: int, n_layers: int, n_heads: int, **kw: Any) -> ml_collections.ConfigDict:
  """A transformer-stack section for config files (ffn_dim unset = the official rule)."""
  return section(TransformerConfig, dim=dim, n_layers=n_layers, n_heads=n_heads, **kw)


def global_stack(dim: int, n_layers: int, n_heads: int, **kw: Any) -> ml_collections.ConfigDict:
  """The global transformer: plain causal over patches, no window (as released and in HF)."""
  kw = {"window": None, **kw}
  return stack(dim, n_layers, n_heads, **kw)


def entropy_stack(dim: int, n_layers: int, n_heads: int, **kw: Any) -> ml_collections.ConfigDict:
  """The entropy model's stack: RoPE θ 10000, window 512 (docs/architecture.md)."""
  kw = {"rope_theta": 10000.0, "window": 512, **kw}
  return stack(dim, n_layers, n_heads, **kw)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The `train` section. Paper defaults (docs/choices.md) unless stated."""

  task: str = "blt"  # "entropy": next-byte LM on the entropy model | "blt"
  steps: int = 1000
  batch_size: int = 8  # global rows per optimiser step (all processes, all microbatches)
  seq_len: int = 512  # S: ids per row, BOS/EOS included
  max_patches: int = 0  # static patch budget per row; 0 = auto (see `resolve_max_patches`)
  min_expected_patch: float = 2.0  # auto max_patches = ceil((S + 1) / this) + 1
  grad_accum: int = 1  # microbatches per step (lax.scan); derived when rows_per_chip > 0
  # Rows per chip (per data x fsdp shard) in each microbatch; > 0 keeps the global batch on any
  # slice: grad_accum = batch_size / (rows_per_chip x data x fsdp) (`derive_grad_accum`).
  rows_per_chip: int = 0
  lr: float = 4e-4
  warmup_steps: int = 2000
  min_lr_ratio: float = 0.0  # cosine decays to lr * this
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1  # masked off norms, embeddings and hash tables
  clip_norm: float = 1.0
  # Adam's first moment: "float32", or "bfloat16" to halve its memory (the second moment and the
  # parameters stay fp32); BLT-1B's v5e-8 figures with it: docs/accelerators.md.
  mu_dtype: str = "float32"
  # Adam's moments live in host memory (memory kind "pinned_host") between steps and visit the
  # accelerator only for the update, after the microbatch loop: the loop's peak no longer holds
  # them. Costs one host<->device copy of the moments per step (docs/accelerators.md).
  offload_optimizer: bool = False
  seed: int = 0
  entropy_checkpoint: str = ""  # task blt + entropy patching: a bltjax checkpoint dir
  init_from_blt: str = ""  # task blt: start a new run from this checkpoint's BLT weights
  log_every: int = 10
  eval_every: int = 0  # 0 = only at the end
  eval_windows: int = 8  # held-out windows of S ids per domain; 0 = no evaluation
  eval_batch_size: int = 0  # 0 = batch_size
  ckpt_every: int = 100  # 0 = only on exit / preemption
  keep: int = 3
  async_checkpoint: bool = True
  export: bool = True  # write a bltjax inference checkpoint to WORKDIR/export at the end
  progress: bool = True  # tqdm bar with ETA
  tensorboard: bool = True
  step_delay_s: float = 0.0  # test hook: sleep per step so a signal lands mid-run

  def __post_init__(self):
    if self.task not in TASKS:
      _fail("train.task", f"must be one of {TASKS}, got {self.task!r}")
    for key in ("steps", "batch_size", "seq_len", "grad_accum", "keep"):
      v = getattr(self, key)
      if not isinstance(v, int) or v < 1:
        _fail(f"train.{key}", f"must be a positive int, got {v!r}")
    for key in ("max_patches", "warmup_steps", "log_every", "eval_every", "eval_windows",
                "eval_batch_size", "rows_per_chip", "ckpt_every", "seed"):
      v = getattr(self, key)
      if not isinstance(v, int) or v < 0:
        _fail(f"train.{key}", f"must be an int >= 0, got {v!r}")
    if self.seq_len < 2:
      _fail("train.seq_len", f"needs at least 2 ids (an input and a target), got {self.seq_len}")
    if self.batch_size % self.grad_accum:
      _fail("train.grad_accum", f"{self.grad_accum} does not divide train.batch_size "
            f"{self.batch_size}")
    if not self.lr > 0:
      _fail("train.lr", f"must be positive, got {self.lr}")
    if not 0 <= self.min_lr_ratio <= 1:
      _fail("train.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
    for key in ("b1", "b2"):
      if not 0 <= getattr(self, key) < 1:
        _fail(f"train.{key}", f"must be in [0, 1), got {getattr(self, key)}")
    if not self.eps > 0:
      _fail("train.eps", f"must be positive, got {self.eps}")
    if self.weight_decay < 0:
      _fail("train.weight_decay", f"must be >= 0, got {self.weight_decay}")
    if self.mu_dtype not in ("float32", "bfloat16"):
      _fail("train.mu_dtype", f"must be 'float32' or 'bfloat16', got {self.mu_dtype!r}")
    if not isinstance(self.offload_optimizer, bool):
      _fail("train.offload_optimizer", f"must be true or false, got {self.offload_optimizer!r}")
    if not self.clip_norm > 0:
      _fail("train.clip_norm", f"must be positive, got {self.clip_norm}")
    if not self.min_expected_patch >= 1:
      _fail("train.min_expected_patch", f"must be >= 1, got {self.min_expected_patch}")
    if self.step_delay_s < 0:
      _fail("train.step_delay_s", f"must be >= 0, got {self.step_delay_s}")

  @property
  def micro_batch_size(self) -> int:
    return self.batch_size // self.grad_accum

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
    d = dict(d)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in d:
      if key not in known:
        _fail(f"train.{key}", f"unknown key (known: {sorted(known)})")
    return cls(**d)


def derive_grad_accum(train: TrainConfig, dp: int) -> TrainConfig:
  """`train` with grad_accum = batch_size / (rows_per_chip x dp) when rows_per_chip > 0.

  dp: devices along the data axes (data x fsdp). The same global batch then trains on any slice
  (BLT-1B: 1 row per chip is 16 microbatches on v5e-16, 32 on v5e-8); `resolve` calls this, so
  train.py, benchmarks/tpu_compile.py and benchmarks/train_memory.py all derive it one way.
  """
  if not train.rows_per_chip:
    return train
  rows = train.rows_per_chip * dp
  if train.batch_size % rows:
    _fail("train.rows_per_chip", f"{train.rows_per_chip} row(s) per chip x {dp} chips on the "
          f"data axes = {rows} rows per microbatch does not divide train.batch_size "
          f"{train.batch_size}")
  accum = train.batch_size // rows
  # grad_accum left at 1, or already the derived value (a resolved config read back), is fine.
  if train.grad_accum not in (1, accum):
    _fail("train.rows_per_chip", f"{train.rows_per_chip} derives train.grad_accum = {accum}, "
          f"which is also set to {train.grad_accum}: set train.rows_per_chip=0 to choose "
          "grad_accum")
  return dataclasses.replace(train, grad_accum=accum)


def _fail(key: str, msg: str) -> None:
  raise ConfigError(f"{key}: {msg}")


def set_key(c: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """`c.<dotted key> = value` for an existing key; `ConfigError` naming the key otherwise (or
  when the value's type does not fit the field)."""
  node = c
  *parents, leaf = key.split(".")
  for p in parents:
    if p not in node:
      raise ConfigError(f"{key}: no such config key ({p!r} is missing)")
    node = node[p]
  if leaf not in node:
    raise ConfigError(f"{key}: no such config key")
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{key}: {e}") from None


def base_config() -> ml_collections.ConfigDict:
  """Every section and key with its default; config files override what differs."""
  from bltjax.data import pipeline  # Lazy: grain is only needed when data is configured.

  c = ml_collections.ConfigDict()
  # Every model key exists (stacks excepted: a config file states its geometry), so
  # `--config.model.patcher.threshold=...` style overrides always resolve.
  c.model = section(BLTConfig, skip=("encoder", "global_", "decoder", "entropy", "hash",
                                     "patcher", "diffusion"))
  c.model.entropy = ml_collections.config_dict.placeholder(ml_collections.ConfigDict)
  c.model.hash = section(HashConfig)
  c.model.patcher = section(PatcherConfig)
  c.model.diffusion = section(DiffusionConfig)
  c.train = ml_collections.ConfigDict(dataclasses.asdict(TrainConfig()))
  c.data = pipeline.default_data_config()
  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (1, -1, 1)  # (data, fsdp, tensor); -1 = all remaining devices
  c.mesh.rules = ml_collections.ConfigDict()  # logical axis -> mesh axes overrides
  return c


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, loaded by path (config files are not a package)."""
  path = Path(path)
  if not path.is_file():
    raise ConfigError(f"{path}: no such config file")
  spec = importlib.util.spec_from_file_location(path.stem, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def sibling_config(here: str, name: str) -> ml_collections.ConfigDict:
  """The config file `name`.py beside `here` (a config file's `__file__`): for configs that are
  "the other one plus" a few keys."""
  return load_config_file(Path(here).with_name(f"{name}.py"))


def _plain(x: Any) -> Any:
  if isinstance(x, ml_collections.ConfigDict | ml_collections.FrozenConfigDict):
    return {k: _plain(v) for k, v in x.items()}
  if isinstance(x, Mapping):
    return {k: _plain(v) for k, v in x.items()}
  return x


def resolve_max_patches(model: BLTConfig, train: TrainConfig) -> int:
  """The static patch budget P per row (docs/choices.md: packing by bytes, P static).

  Static patching makes ceil(S / patch_size) + 1 patches (the next slot can open one more) plus
  one per forced start after an EOS, so auto adds 1/8 slack; byte patching needs S + 1.
  Entropy/space patching use `train.max_patches` or, if 0, ceil((S + 1) / min_expected_patch) + 1.
  Rows that need more are cut at a patch boundary; their tail is not scored (the metrics report
  `truncated_frac`).
  """
  s = train.seq_len
  mode = model.patcher.mode
  need = 0
  if mode == "static":
    need = ceil_div(s, int(model.patcher.patch_size)) + 1
  elif mode == "byte":
    need = s + 1
  if train.max_patches:
    if need and train.max_patches < need and model.patcher.max_patch_length is None:
      _fail("train.max_patches", f"{mode} patching of {s} ids needs {need} patches, got "
            f"{train.max_patches}")
    return min(train.max_patches, s + 1)
  if need:
    return min(s + 1, need + ceil_div(need, 8))
  return min(s + 1, math.ceil((s + 1) / train.min_expected_patch) + 1)


@dataclasses.dataclass(frozen=True)
class Resolved:
  model: BLTConfig
  train: TrainConfig
  data: ml_collections.ConfigDict
  mesh_shape: tuple[int, int, int]
  rules: Any  # sharding.ShardingRules
  max_patches: int


def resolve(config: ml_collections.ConfigDict | Mapping[str, Any], n_devices: int,
            n_processes: int = 1) -> Resolved:
  """Validates a whole config against the device count; raises `ConfigError` naming the key."""
  from bltjax.modeling import sharding  # Lazy: keeps this module importable without jax.

  for key in ("model", "train", "mesh"):
    if key not in config:
      _fail(key, "missing config section")
  model_d = _plain(config["model"])
  if not model_d:
    _fail("model", "empty: a config must describe the model")
  try:
    model = BLTConfig.from_dict(model_d)
  except ConfigError as e:
    raise ConfigError(f"model.{e}") from None
  train = TrainConfig.from_dict(_plain(config["train"]))
  mesh_d = _plain(config["mesh"])
  mesh_shape = sharding.resolve_mesh_shape(mesh_d.get("shape", (1, -1, 1)), n_devices)
  rules = sharding.ShardingRules.from_dict(mesh_d.get("rules"))
  names = dict(zip(sharding.MESH_AXES, mesh_shape))
  dp = math.prod(names[a] for a in rules.mesh_axes("batch"))
  if train.batch_size % dp:
    _fail("train.batch_size", f"{train.batch_size} is not divisible by the data axes "
          f"({'x'.join(rules.mesh_axes('batch'))} = {dp}) of mesh.shape {mesh_shape}")
  train = derive_grad_accum(train, dp)
  if train.micro_batch_size % dp:
    _fail("train.grad_accum", f"microbatch {train.micro_batch_size} (batch_size / grad_accum) "
          f"is not divisible by the data axes ({dp})")
  if train.batch_size % n_processes:
    _fail("train.batch_size", f"{train.batch_size} is not divisible by the {n_processes} "
          "processes")
  # Tensor-parallel axes must divide what they split, or the layout silently degrades.
  tp = math.prod(names[a] for a in rules.mesh_axes("heads"))
  stacks: list[tuple[str, TransformerConfig]] = [("encoder", model.encoder),
                                                  (GLOBAL_KEY, model.global_),
                                                  ("decoder", model.decoder)]
  if train.task == "entropy":
    if train.init_from_blt:
      _fail("train.init_from_blt", "only for train.task 'blt' (BLT / BLT-D weights)")
    if model.entropy is None:
      _fail("model.entropy", "train.task 'entropy' needs an entropy model config")
    stacks = [("entropy", model.entropy)]
  for key, s in stacks:
    if s.n_heads % tp:
      _fail(f"model.{key}.n_heads", f"{s.n_heads} heads do not split over the tensor axis "
            f"({tp}) of mesh.shape {mesh_shape}")
    if s.hidden_dim % tp:
      _fail(f"model.{key}.ffn_dim", f"FFN width {s.hidden_dim} does not split over the tensor "
            f"axis ({tp}) of mesh.shape {mesh_shape}")
  if train.task == "blt":
    fs = math.prod(names[a] for a in rules.mesh_axes("embed"))
    if model.global_.dim % fs:
      _fail(f"model.{GLOBAL_KEY}.dim", f"{model.global_.dim} does not split over the embed mesh "
            f"axes ({fs}) of mesh.shape {mesh_shape}")
    if train.init_from_blt and not isinstance(train.init_from_blt, str):
      _fail("train.init_from_blt", f"must be a checkpoint path, got {train.init_from_blt!r}")
    if model.patcher.mode == "entropy" and not train.entropy_checkpoint:
      _fail("train.entropy_checkpoint", "entropy patching needs a trained entropy model: set "
            "it to the export of an entropy run (or use model.patcher.mode static/space)")
  data = config.get("data") or ml_collections.ConfigDict()
  return Resolved(model, train, data, mesh_shape, rules, resolve_max_patches(model, train))
