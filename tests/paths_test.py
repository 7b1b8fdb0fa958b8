"""Paths: user strings -> epath (local absolute, URLs kept), on a non-POSIX file system.

The gs:// tests run offline against `fake_gcs`: fsspec's "gcs" protocol registered to a local
directory, which is what epath uses for gs:// when TensorFlow is absent. Orbax writes arrays with
tensorstore's own GCS driver and asks google-cloud-storage about the bucket, neither of which
this fake reaches: array checkpoints on gs:// are not tested here (docs/multihost.md).
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib

import pytest

from bltjax import paths, weights
from bltjax.training import train
from tests import tiny_train_config

fsspec = pytest.importorskip("fsspec")


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """gs://BUCKET/x -> tmp_path/gcs/BUCKET/x through fsspec (epath's gs:// backend)."""
  from fsspec.implementations.local import LocalFileSystem

  root = tmp_path / "gcs"
  root.mkdir()

  class FakeGCS(LocalFileSystem):
    protocol = ("gs", "gcs")
    root_marker = ""

    def __init__(self, *args, **kwargs):
      kwargs.pop("finalize_on_close", None)
      super().__init__(*args, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
      path = os.fspath(path)
      for p in ("gs://", "gcs://"):
        if path.startswith(p):
          path = f"{root}/{path[len(p):]}"
      return super()._strip_protocol(path)

  from etils.epath import backend

  monkeypatch.setenv("EPATH_USE_TF", "false")
  for name in ("gs", "gcs"):
    fsspec.register_implementation(name, FakeGCS, clobber=True)
  backend.fsspec_backend._get_filesystem.cache_clear()
  yield root
  backend.fsspec_backend._get_filesystem.cache_clear()
  registry = importlib.import_module("fsspec.registry")
  for name in ("gs", "gcs"):
    registry._registry.pop(name, None)  # noqa: SLF001 - no public unregister


def test_as_path_keeps_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(paths.as_path("runs/x")) == str(tmp_path / "runs" / "x")
  assert str(paths.as_path("~/y")) == os.path.expanduser("~/y")
  assert str(paths.as_path("gs://bucket/run")) == "gs://bucket/run"  # not $PWD/gs:/bucket/run
  assert str(paths.as_path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
  assert str(paths.as_path(pathlib.Path("a"))) == str(tmp_path / "a")
  with pytest.raises(ValueError, match="--workdir nope://x: unsupported URL scheme"):
    paths.as_path("nope://x", "--workdir")
  with pytest.raises(ValueError, match="--workdir: empty path"):
    paths.as_path("", "--workdir")


def test_trainer_keeps_a_gs_workdir(fake_gcs):
  # (orbax's own gs:// code needs google-cloud-storage and a bucket: not run here)
  tr = train.Trainer.create(tiny_train_config.get_config("blt"), "gs://bucket/run")
  assert str(tr.workdir) == "gs://bucket/run"
  assert str(tr.workdir / "checkpoints") == "gs://bucket/run/checkpoints"


def test_line_log_appends_to_an_object_store(fake_gcs):
  url = "gs://bucket/run/metrics.jsonl"
  w = train.MetricWriter(paths.as_path("gs://bucket/run"), True, False)
  w.write(1, {"train/loss": 2.5})
  w.close()
  with paths.LineLog(url, flush_s=0.0) as log:  # a resumed run appends
    log.write(json.dumps({"step": 2}) + "\n")
    # flushed at once (flush_s=0): readable while the run goes on
    assert (fake_gcs / "bucket/run/metrics.jsonl").read_text().count("\n") == 2
  lines = (fake_gcs / "bucket/run/metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["step"] for x in lines] == [1, 2]


def test_checkpoint_config_reads_from_gs(fake_gcs, tmp_path):
  from bltjax.modeling import model
  from bltjax.training.train_config import resolve

  cfg = resolve(tiny_train_config.get_config("blt"), 1).model
  local = weights.save_checkpoint(tmp_path / "ckpt", tiny_train_config.random_params(
    cfg, model.BLT_KEYS), cfg)
  dst = fake_gcs / "bucket" / "ckpt"
  dst.mkdir(parents=True)
  (dst / "config.json").write_text((local / "config.json").read_text())
  assert weights.load_config("gs://bucket/ckpt") == weights.load_config(local)
  assert weights.load_metadata("gs://bucket/ckpt")["format_version"] == weights.FORMAT_VERSION
  with pytest.raises(weights.CheckpointError, match="gs://bucket/missing: not a directory"):
    weights.load_config("gs://bucket/missing")
