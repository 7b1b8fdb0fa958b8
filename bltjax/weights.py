"""The bltjax checkpoint directory: `config.json` + an orbax PyTree of arrays under `params/`.

This is the inference / exchange format that the converters write and `score`, `generate` and
fine-tuning read. It is independent of the training checkpoint manager (no steps, no optimizer
state): one directory holds one set of weights and the config that built them.

Layout::

  DST/
    config.json   BLTConfig.to_dict() + format_version, converter_version, source, meta
    params/       orbax StandardCheckpointer PyTree (plain nested dicts of arrays)
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from bltjax import paths
from bltjax.config import BLTConfig

FORMAT_VERSION = 1
CONVERTER_VERSION = "bltjax-convert/1"
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
# Keys that config.json carries next to the BLTConfig fields.
_RESERVED = ("format_version", "converter_version", "source", "meta")


class CheckpointError(ValueError):
  """A directory that is not a readable bltjax checkpoint; the message names the path."""


Path = epath.Path  # local paths and URLs (gs://...) alike: `paths.as_path`


def _tmp_sibling(dst: Path, tag: str, token: str | None = None) -> Path:
  # Same parent as dst so the final rename stays on one filesystem (atomic on POSIX).
  return dst.parent / f".{dst.name}.{tag}-{token or uuid.uuid4().hex[:8]}"


def _rmtree(p: Path) -> None:
  try:
    if p.exists():
      p.rmtree()
  except OSError:
    pass


def publish_dir(tmp: Path, dst: Path, overwrite: bool) -> None:
  """Renames a completed `tmp` directory to `dst`; an existing `dst` is replaced only if asked.

  Args:
    tmp: a fully written directory next to `dst`.
    dst: the final path.
    overwrite: replace an existing `dst` (it is moved aside first and deleted afterwards, so a
      reader never sees a half-written directory).

  Raises:
    FileExistsError: `dst` exists and `overwrite` is False.
  """
  old = None
  if dst.exists():
    if not overwrite:
      raise FileExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace")
    old = _tmp_sibling(dst, "old")
    dst.rename(old)
  tmp.rename(dst)
  if old is not None:
    _rmtree(old)


def staging_dir(dst: str | os.PathLike, overwrite: bool, token: str | None = None,
                create: bool = True) -> tuple[Path, Path]:
  """Checks `dst` and returns (dst, fresh temp dir next to it) for a write-then-rename.

  `token` names the temp dir (every process of a multi-process save must agree on it); only the
  process that `create`s makes the directories.
  """
  dst = paths.as_path(dst, "checkpoint")
  if dst.exists() and not overwrite:
    raise FileExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace")
  tmp = _tmp_sibling(dst, "tmp", token)
  if create:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()
  return dst, tmp


def entropy_consistent(cfg: BLTConfig, has_entropy_params: bool, where: str = "",
                       warn: bool = False) -> BLTConfig:
  """`cfg` without its entropy stack when there are no entropy-model params to go with it.

  A BLT run with space / static / byte patching never loads an entropy model, but its config may
  still name one (a leftover of the base config). Decoding runs the entropy model whenever
  `cfg.entropy` is set, so such a config must not reach it. Entropy patching cannot drop the
  stack: it is kept, with a warning that the checkpoint cannot patch on its own.
  """
  if cfg.entropy is None or has_entropy_params:
    return cfg
  if cfg.patcher.mode == "entropy":
    warnings.warn(f"{where}: entropy patching, but no entropy_model parameters: the weights can "
                  "initialise training, not score or decode", stacklevel=3)
    return cfg
  if warn:
    warnings.warn(f"{where}: the config names an entropy model that has no parameters and "
                  f"{cfg.patcher.mode} patching does not use; loading with entropy=None",
                  stacklevel=3)
  return cfg.replace(entropy=None)


def _to_host(x: Any) -> Any:
  # numpy leaves go to orbax as they are; jax arrays too (orbax handles sharded arrays).
  if isinstance(x, (np.ndarray, jax.Array)):
    return x
  return np.asarray(x)


def save_checkpoint(
  dst: str | os.PathLike,
  params: Mapping[str, Any],
  cfg: BLTConfig,
  meta: Mapping[str, Any] | None = None,
  *,
  overwrite: bool = False,
) -> Path:
  """Writes a bltjax checkpoint directory; `dst` appears only once it is complete.

  Args:
    dst: the checkpoint directory to create.
    params: the parameter tree (nested dicts of numpy or jax arrays).
    cfg: the model config stored next to the arrays. Its entropy section is dropped when
      `params` has no `entropy_model` and the patcher does not need one (`entropy_consistent`).
    meta: extra provenance. `source` and `converter_version` go to the top level of config.json,
      everything else under `meta`.
    overwrite: replace an existing `dst`.

  Several processes (`jax.process_count() > 1`) must all call it with the same (global) arrays:
  each writes its own shards, process 0 writes config.json and publishes the directory, and
  barriers keep them in step, so `dst` appears once, complete. `dst` must be a directory every
  process sees (a shared file system or a URL such as gs://).

  Returns:
    The absolute path (or URL) of `dst`.

  Raises:
    FileExistsError: `dst` exists and `overwrite` is False.
  """
  import orbax.checkpoint as ocp  # Deferred: orbax import is slow and only needed here.

  from bltjax import multihost  # noqa: PLC0415

  meta = dict(meta or {})
  multi, main = jax.process_count() > 1, jax.process_index() == 0
  token = multihost.shared_token() if multi else None
  dst, tmp = staging_dir(dst, overwrite, token, create=main)
  if cfg.patcher.mode != "entropy":
    cfg = entropy_consistent(cfg, "entropy_model" in params)
  try:
    if main:
      doc = cfg.to_dict()
      doc["format_version"] = FORMAT_VERSION
      doc["converter_version"] = meta.pop("converter_version", CONVERTER_VERSION)
      doc["source"] = meta.pop("source", "bltjax")
      doc["meta"] = meta
      (tmp / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    multihost.barrier(f"bltjax-export-staged-{token}")
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp / PARAMS_DIR, jax.tree.map(_to_host, dict(params)))
    ckpt.wait_until_finished()
    ckpt.close()
    multihost.barrier(f"bltjax-export-written-{token}")
    if main:
      publish_dir(tmp, dst, overwrite)
    multihost.barrier(f"bltjax-export-published-{token}")
  except BaseException:
    if main:
      _rmtree(tmp)
    raise
  return dst


def _read_doc(src: Path) -> dict[str, Any]:
  path = src / CONFIG_FILE
  if not src.is_dir():
    raise CheckpointError(f"{src}: not a directory (expected a bltjax checkpoint)")
  if not path.is_file():
    hint = ""
    if (src / "model.safetensors").exists() or (src / "model.safetensors.index.json").exists():
      hint = " (this looks like an HF directory: convert it with `python -m bltjax.convert`)"
    elif (src / "params.json").exists():
      hint = " (this looks like an official Meta checkpoint: convert it with `--from meta`)"
    raise CheckpointError(f"{src}: no {CONFIG_FILE}, not a bltjax checkpoint{hint}")
  try:
    doc = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: invalid JSON ({e})") from e
  if not isinstance(doc, dict) or "format_version" not in doc:
    hint = "an HF or Meta config.json must be converted first"
    if isinstance(doc, dict) and "model_type" in doc:
      hint = "this is an HF directory: `python -m bltjax.convert --from hf SRC DST`"
    elif isinstance(doc, dict) and "args" in doc:
      hint = "this is an official Meta directory: `python -m bltjax.convert --from meta SRC DST`"
    raise CheckpointError(f"{path}: no format_version, not a bltjax checkpoint config ({hint})")
  if doc["format_version"] != FORMAT_VERSION:
    raise CheckpointError(f"{path}: format_version {doc['format_version']} is not supported "
                          f"(this bltjax reads {FORMAT_VERSION})")
  return doc


def _stored_config(src: Path) -> BLTConfig:
  body = {k: v for k, v in _read_doc(src).items() if k not in _RESERVED}
  try:
    return BLTConfig.from_dict(body)
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{src / CONFIG_FILE}: {e}") from e


def load_config(src: str | os.PathLike) -> BLTConfig:
  """Reads only the BLTConfig of a bltjax checkpoint directory (the one `load_checkpoint` gives:
  an entropy stack without parameters is dropped, see `entropy_consistent`)."""
  src = paths.as_path(src, "checkpoint")
  cfg = _stored_config(src)
  if cfg.entropy is None or not (src / PARAMS_DIR).is_dir():
    return cfg
  return entropy_consistent(cfg, "entropy_model" in _tree_meta(src), str(src), warn=True)


def load_metadata(src: str | os.PathLike) -> dict[str, Any]:
  """The provenance fields of a checkpoint: format_version, converter_version, source, meta."""
  doc = _read_doc(paths.as_path(src, "checkpoint"))
  return {k: doc.get(k) for k in _RESERVED}


def _abstract_tree(tree_meta: Any, dtype: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs for restore; `shardings` is None, one Sharding, or a matching tree."""
  if shardings is None:
    # Sharding must be concrete for restore; put everything on the first local device.
    shardings = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  if isinstance(shardings, jax.sharding.Sharding):
    shard_tree = jax.tree.map(lambda _: shardings, tree_meta)
  else:
    shard_tree = shardings
  try:
    return jax.tree.map(
      lambda m, s: jax.ShapeDtypeStruct(tuple(m.shape), dtype or m.dtype, sharding=s),
      tree_meta, shard_tree)
  except ValueError as e:
    raise ValueError(f"shardings tree does not match the checkpoint's parameter tree: {e}") from e


def _tree_meta(src: Path) -> Any:
  import orbax.checkpoint as ocp  # Deferred: orbax import is slow.

  pdir = src / PARAMS_DIR
  if not pdir.is_dir():
    raise CheckpointError(f"{src}: no {PARAMS_DIR}/ directory (incomplete bltjax checkpoint)")
  ckpt = ocp.StandardCheckpointer()
  try:
    return ckpt.metadata(pdir).item_metadata.tree
  except Exception as e:  # orbax raises several types for a damaged directory.
    raise CheckpointError(f"{pdir}: cannot read orbax metadata ({e})") from e
  finally:
    ckpt.close()


def tree_metadata(src: str | os.PathLike) -> Any:
  """The parameter tree of a bltjax checkpoint as orbax metadata (shape, dtype), no arrays read."""
  src = paths.as_path(src, "checkpoint")
  _stored_config(src)
  return _tree_meta(src)


def load_checkpoint(
  src: str | os.PathLike, *, dtype: Any = None, shardings: Any = None
) -> tuple[BLTConfig, dict[str, Any]]:
  """Loads (cfg, params) from a bltjax checkpoint directory.

  Args:
    src: the checkpoint directory.
    dtype: cast every array to this dtype while restoring (None keeps the stored dtypes).
    shardings: None (first local device), one `jax.sharding.Sharding` for every leaf, or a tree of
      shardings matching the parameter tree. Arrays are restored directly into their shards, so a
      model larger than one device loads without a full host copy per device.

  Returns:
    The config and the parameter tree of jax arrays.

  Raises:
    CheckpointError: `src` is not a bltjax checkpoint (the message names the directory or file).
  """
  import orbax.checkpoint as ocp

  src = paths.as_path(src, "checkpoint")
  cfg = _stored_config(src)
  tree_meta = _tree_meta(src)
  cfg = entropy_consistent(cfg, "entropy_model" in tree_meta, str(src), warn=True)
  dt = None if dtype is None else jnp.dtype(dtype)
  abstract = _abstract_tree(tree_meta, dt, shardings)
  ckpt = ocp.StandardCheckpointer()
  try:
    params = ckpt.restore(src / PARAMS_DIR, abstract)
  finally:
    ckpt.close()
  if dt is not None and dt.name in ("float32", "bfloat16", "float16"):
    cfg = cfg.replace(param_dtype=dt.name)  # the config describes the arrays it comes with
  return cfg, params
