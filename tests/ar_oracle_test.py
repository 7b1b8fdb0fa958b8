"""Cached greedy decoding equals HF `generate(use_cache=False)` on converted random weights."""

import numpy as np
import pytest
import torch

from bltjax.convert import hf as convert_hf
from bltjax.decoding import generation
from tests.hf_fixtures import save_tiny

pytestmark = pytest.mark.oracle


def _hf_greedy(model, prompt: bytes, max_new: int) -> list[int]:
  ids = torch.tensor([generation.encode_prompt(prompt)])
  with torch.no_grad():
    out = model.generate(ids, max_new_tokens=max_new, do_sample=False, use_cache=False,
                         eos_token_id=2, pad_token_id=0)
  return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("k", [2, 4])
def test_greedy_equals_hf_generate(tmp_path, k):
  path, model = save_tiny(tmp_path / "hf", k=k)
  cfg, params = convert_hf.load_hf(path)
  rng = np.random.default_rng(k)
  prompts = [b"my name is", b"x", bytes(rng.integers(32, 127, 150).astype(np.uint8))]
  if k == 2:  # Prompt + generation cross the 512-byte local window (HF's costliest case).
    prompts.append(bytes(rng.integers(32, 127, 496).astype(np.uint8)))
  max_new = 32
  ours = generation.generate(params, cfg, prompts, method="ar", max_new=max_new)
  closed = 0
  for prompt, r in zip(prompts, ours, strict=True):
    ref = _hf_greedy(model, prompt, max_new)
    got = r.new_ids + ([2] if r.reason == "eos" else [])
    assert got == ref, (prompt[:20], got, ref)
    closed += r.nfe_enc_global
  assert closed > 15  # patches really close during generation
