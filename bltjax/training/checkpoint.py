"""Training checkpoints (orbax V1 `training.Checkpointer`), preemption handling and export.

`TrainCheckpointer` keeps `WORKDIR/checkpoints/<step>/` with two checkpointables:

  state    the train-state pytree (params, opt_state, step), saved asynchronously: the device ->
           host copy happens before `save` returns, so the next step may donate the buffers
  dataset  the grain iterator (one JSON state file per process), so a resumed run reads exactly
           the batches an uninterrupted one would

Restore always goes through an abstract tree of `jax.ShapeDtypeStruct(..., sharding=...)`, so a
checkpoint written on one mesh / device count loads onto another. Steps are committed atomically
(orbax writes a temporary directory and renames it), so a `kill -9` mid-save leaves the previous
step as the latest. `PreemptionGuard` turns SIGTERM / SIGINT into a flag that the training loop
polls to save and exit cleanly. `export_params` writes the bltjax inference checkpoint
(`bltjax.weights`) that every `--checkpoint DIR` command reads.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping
from typing import Any

import jax
from etils import epath

from bltjax import paths

FORMAT = "bltjax-train/1"


def _ocp():
  from orbax.checkpoint import v1 as ocp  # Deferred: orbax import is slow.

  return ocp


def abstract_tree(tree: Any, shardings: Any = None) -> Any:
  """`ShapeDtypeStruct`s of `tree` carrying `shardings` (a matching tree) or the leaves' own."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


class TrainCheckpointer:
  """A thin wrapper over orbax's V1 training checkpointer.

  Args:
    directory: where step directories go (created if missing); a local path or a URL (gs://).
    keep: keep the newest `keep` steps (older ones are deleted after each save).
    async_save: write in the background (the device -> host copy is still synchronous).
  """

  def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
    ocp = _ocp()
    self.directory = paths.as_path(directory, "checkpoint directory")
    self._async = async_save
    self._pending = None
    self._last_saved: int | None = None
    self._ckpt = ocp.training.Checkpointer(
      self.directory,
      preservation_policy=ocp.training.preservation_policies.LatestN(keep),
      # A run killed mid-save leaves a temporary directory; it is never a valid step.
      cleanup_tmp_directories=True,
    )

  def latest_step(self) -> int | None:
    latest = self._ckpt.latest
    return None if latest is None else int(latest.step)

  def steps(self) -> list[int]:
    return sorted(int(c.step) for c in self._ckpt.checkpoints)

  def save(self, step: int, state: Any, data_iter: Any = None,
           meta: Mapping[str, Any] | None = None, wait: bool = False) -> bool:
    """Saves `state` (and the iterator state) as `step`; a step that exists is left alone.

    Returns:
      True if a save was started.
    """
    if step == self._last_saved or step in self.steps():
      if wait:
        self.wait()
      return False
    self._last_saved = step
    items = {"state": state}
    if data_iter is not None:
      items["dataset"] = data_iter
    custom = {"format": FORMAT, **(dict(meta) if meta else {})}
    if self._async and not wait:
      self._pending = self._ckpt.save_checkpointables_async(step, items, force=True,
                                                            custom_metadata=custom)
      return self._pending is not None
    ok = self._ckpt.save_checkpointables(step, items, force=True, custom_metadata=custom)
    return bool(ok)

  def restore(self, step: int, abstract_state: Any, data_iter: Any = None) -> Any:
    """Loads `step` into the shardings of `abstract_state`; sets `data_iter`'s state in place.

    Args:
      step: a step from `steps()`.
      abstract_state: the state's tree of `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`;
        any mesh works, not only the one that saved.
      data_iter: a grain iterator built like the saved one (same process count), or None.

    Returns:
      The restored state tree (same structure as `abstract_state`).
    """
    self.wait()
    items = {"state": abstract_state}
    if data_iter is not None:
      if not (self.directory / str(step) / "dataset").is_dir():
        raise ValueError(f"{self.directory}/{step}: no data iterator state saved "
                         "(this run's data source has none to restore)")
      items["dataset"] = data_iter
    out = self._ckpt.load_checkpointables(step, items)
    return out["state"]

  def metadata(self, step: int) -> dict[str, Any]:
    meta = self._ckpt.metadata(step).custom_metadata
    return dict(meta or {})

  def wait(self) -> None:
    """Blocks until a background save has committed."""
    if self._pending is not None:
      self._pending.result()
      self._pending = None
    self._ckpt.wait()

  def close(self) -> None:
    self.wait()
    self._ckpt.close()

  def __enter__(self) -> TrainCheckpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def export_params(dst: str | os.PathLike, params: Any, cfg: Any,
                  meta: Mapping[str, Any] | None = None) -> epath.Path:
  """Writes `params` + `cfg` as a bltjax inference checkpoint (replacing an older export)."""
  from bltjax import weights

  return weights.save_checkpoint(dst, params, cfg, dict(meta or {}), overwrite=True)


class PreemptionGuard:
  """SIGTERM / SIGINT -> a flag the training loop polls at step boundaries.

  The first signal only sets `requested`; the loop then saves a checkpoint and exits. A second
  SIGINT restores Python's default behaviour (KeyboardInterrupt), so Ctrl-C twice still quits.
  Installs handlers only in the main thread (signal's own rule); elsewhere it is inert.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested: int | None = None
    self._old: dict[int, Any] = {}

  def _handle(self, signum, frame) -> None:
    del frame
    if self.requested is not None and signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt
    self.requested = signum

  def __enter__(self) -> PreemptionGuard:
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._old[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, h in self._old.items():
      signal.signal(s, h)
    self._old.clear()
