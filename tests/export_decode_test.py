"""A trained model's export decodes with every method, whatever its patcher (issue 9).

A run with `model.patcher.mode=space` (or byte / static) never loads an entropy model, so its
export must not name one: decoding would reach for `params["entropy_model"]`.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from bltjax import weights
from bltjax.decoding import decode as cli
from bltjax.training import train
from tests import tiny_train_config


def _train(tmp_path, block_size: int):
  c = tiny_train_config.get_config("blt")
  c.model.patcher.update(mode="space", max_patch_length=8)
  c.model.diffusion.update(block_size=block_size)
  c.data.source = "synthetic"
  c.train.update(steps=20, eval_windows=0, ckpt_every=0, async_checkpoint=False)
  out = train.train_and_evaluate(c, tmp_path, log=lambda *a: None)
  return out["export"]


def _decode(ckpt, tmp_path, method: str) -> dict:
  inp = tmp_path / "in.jsonl"
  inp.write_text(json.dumps({"id": "a", "prompt": "the cat sat"}) + "\n")
  out = tmp_path / f"{method}.jsonl"
  rc = cli.main(["--checkpoint", ckpt, "--input", str(inp), "--output", str(out), "--method",
                 method, "--max-new-bytes", "12", "--max-context", "64", "--draft-k", "4"])
  recs = [json.loads(x) for x in out.read_text().splitlines()]
  assert rc == 0 and len(recs) == 1 and "error" not in recs[0], recs
  return recs[0]


# A BLT-D export decodes with all four methods (ar and blts run its causal path), so one run
# covers every method; the plain-BLT run exports through the same code and is only slower.
@pytest.mark.parametrize("block_size,methods", [
  (4, ("ar", "blts", "bltd", "bltdv")),
  pytest.param(0, ("ar", "blts"), marks=pytest.mark.slow),
])
def test_space_patched_export_decodes_with_every_method(tmp_path, block_size, methods):
  ckpt = _train(tmp_path, block_size)
  cfg = weights.load_config(ckpt)
  assert cfg.entropy is None and cfg.patcher.mode == "space"
  assert cfg.diffusion.block_size == block_size
  for m in methods:
    rec = _decode(ckpt, tmp_path, m)
    assert rec["new_bytes"] > 0 and rec["nfe"]["passes"]["entropy"] == 0


def test_old_export_naming_an_unused_entropy_stack_loads_without_it(tmp_path):
  # An export written before the fix: space patching, an entropy section, no entropy params.
  from bltjax.modeling import model
  from bltjax.training.train_config import resolve

  c = tiny_train_config.get_config("blt")
  c.model.patcher.update(mode="space")
  cfg = resolve(c, 8).model
  assert cfg.entropy is not None
  params = tiny_train_config.random_params(cfg, model.BLT_KEYS)
  path = weights.save_checkpoint(tmp_path / "ckpt", params, cfg)
  doc = json.loads((path / weights.CONFIG_FILE).read_text())
  assert doc["entropy"] is None  # the export no longer names it
  doc["entropy"] = cfg.to_dict()["entropy"]
  (path / weights.CONFIG_FILE).write_text(json.dumps(doc))
  with pytest.warns(UserWarning, match="entropy=None"):
    got, loaded = weights.load_checkpoint(path)
  assert got == cfg.replace(entropy=None) and "entropy_model" not in loaded
  with pytest.warns(UserWarning, match="entropy=None"):
    assert weights.load_config(path) == got
  # Entropy patching keeps its stack (the config cannot drop it) and says why it cannot decode.
  ent = cfg.replace(patcher=dataclasses.replace(cfg.patcher, mode="entropy"))
  weights.save_checkpoint(tmp_path / "ent", params, ent)
  with pytest.warns(UserWarning, match="no entropy_model parameters"):
    assert weights.load_config(tmp_path / "ent") == ent
