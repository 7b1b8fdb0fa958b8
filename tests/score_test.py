"""`python -m bltjax.score`: window rule, and NLL / patch counts against HF's BltForCausalLM."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bltjax import score


@pytest.mark.parametrize("n,window,stride", [(1, 8, 4), (8, 8, 3), (9, 8, 3), (100, 16, 16),
                                             (100, 16, 5), (37, 10, 1)])
def test_windows_score_every_byte_once(n, window, stride):
  seen = np.zeros(n, int)
  spans = list(score.windows(n, window, stride))
  for i, (s, f, e) in enumerate(spans):
    assert 0 <= s <= f < e <= n
    assert e - s == min(n, window)  # one shape for every forward pass
    seen[f:e] += 1
    if i:
      assert f - s >= window - stride  # later windows re-read >= window - stride bytes
  assert (seen == 1).all()


def test_windows_reject_bad_stride():
  with pytest.raises(ValueError):
    list(score.windows(10, 4, 5))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  import hf_fixtures as fx

  from bltjax.convert import hf

  root = tmp_path_factory.mktemp("score")
  src, model = fx.save_tiny(root / "hf", k=2)
  hf.import_hf(src, root / "blt")
  return root / "blt", model


def _hf_score(model, data: bytes, window: int, stride: int):
  """HF reference with the same window rule: summed NLL and patch starts at scored bytes."""
  import hf_fixtures as fx
  import torch

  ids = np.concatenate([[1], np.frombuffer(data, np.uint8).astype(np.int64) + 4])
  nll, patches = 0.0, 0
  for s, f, e in score.windows(len(data), window, stride):
    row = torch.tensor(np.concatenate([[1], ids[1 + s:1 + e]])[None])
    with torch.no_grad():
      logits = model(row, use_cache=False).logits[0, :-1].double()
      _, lengths, _ = model.model.patcher(row, patch_size=model.config.patch_size,
                                          threshold=model.config.patching_threshold)
    logp = torch.log_softmax(logits, -1)
    tgt = row[0, 1:]
    nll += float(-logp[torch.arange(len(tgt)), tgt][f - s:e - s].sum())
    starts = fx.starts_from_hf_lengths(lengths[0].numpy(), row.shape[1])
    patches += int(starts[f - s + 1:e - s + 1].sum())
  return nll, patches


@pytest.mark.oracle
@pytest.mark.parametrize("window,stride", [(512, None), (96, 40)])
def test_score_cli_matches_hf(tiny, tmp_path, capsys, window, stride):
  ckpt, model = tiny
  rng = np.random.default_rng(7)
  text = ("Byte Latent Transformer — patches scale better than tokens. Ünïcödé ✓ " * 5).encode()
  data = text[:200] + bytes(rng.integers(0, 256, 60, dtype=np.uint8)) + text[200:300]
  f = tmp_path / "doc.bin"
  f.write_bytes(data)
  argv = ["--checkpoint", str(ckpt), "--file", str(f), "--window", str(window)]
  if stride:
    argv += ["--stride", str(stride), "--batch", "3"]
  assert score.main(argv) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  want_nll, want_patches = _hf_score(model, data, window, stride or window // 2)
  assert out["bytes"] == len(data)
  assert out["nll_nats"] == pytest.approx(want_nll, rel=1e-4)
  assert out["bpb"] == pytest.approx(out["nll_nats"] / (math.log(2) * len(data)), rel=1e-12)
  assert out["patches"] == want_patches
  assert len(data) / out["patches"] > 1.5  # the sharpened patcher makes multi-byte patches
