"""Logit parity with HF's BltForCausalLM (docs/testing.md, workflows A and B), fp32 on CPU.

Weights go through the real converters (HF dir -> bltjax tree, bltjax tree -> HF dir). Inputs
keep S <= 512 and contain no EOS (docs/testing.md). Tolerances are docs/testing.md's: logits and
entropies atol = rtol = 1e-4, patch starts exact.
"""

from __future__ import annotations

import hf_fixtures as fx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import BltForCausalLM

from bltjax.convert import hf
from bltjax.modeling import model

pytestmark = pytest.mark.oracle
jax.config.update("jax_default_matmul_precision", "highest")

S = 512
TOL = dict(atol=1e-4, rtol=1e-4)
# (pattern, length) rows of the explicit-patch test; official S+1 lengths (docs/testing.md).
ROWS = [([1, 3, 1, 4, 2, 5, 1, 1, 6, 2, 3, 1, 7, 2, 1, 4], S),  # irregular
        ([1], S),  # all ones
        ([S], S),  # one long patch (it also covers the next-token slot)
        ([2, 1, 3], 17),  # short rows run padded inside the same bltjax call
        ([5, 1, 1, 8, 3], 200)]
ENTROPY_LENGTHS = (S, 150)

def _both_paths(params, cfg, ids, lengths, starts, explicit):
  """Rows with `explicit` use the given starts; the others run bltjax's own patcher.

  One compiled function per config serves every check (CPU compiles dominate the test time).
  """
  own = model.patch(params, cfg, ids, lengths)
  start = jnp.where(explicit[:, None], starts, own)
  return (model.entropies(params, cfg, ids, lengths), own,
          model.forward(params, cfg, ids, start, lengths))


_both_paths_jit = jax.jit(_both_paths, static_argnums=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """name -> (HF model, bltjax cfg, bltjax params loaded from the HF directory)."""
  root = tmp_path_factory.mktemp("oracle")
  out = {}
  for name, k, heads in (("k2", 2, "default"), ("k4-mixed-heads", 4, "mixed")):
    src, hf_model = fx.save_tiny(root / name, k=k, heads=heads)
    cfg, params = hf.load_hf(src)
    out[name] = (hf_model, cfg, params)
  return out


def _hf_reference(hf_model):
  """HF logits per row: explicit-patch rows, then patcher rows (batch 1, docs/testing.md)."""
  rows = []
  for i, (pattern, n) in enumerate(ROWS):
    ids = fx.sample_ids(n, seed=i)
    lens = fx.lengths_from_pattern(pattern, n)
    st = np.zeros(S + 1, bool)
    st[:n + 1] = fx.starts_from_lengths(lens, n + 1)
    rows.append(dict(ids=ids, n=n, lens=lens, starts=st, explicit=True))
  # Explicit rows of one length share an HF call: 0-padded S+1 lengths are safe (docs/testing.md).
  for n in sorted({r["n"] for r in rows}):
    group = [r for r in rows if r["n"] == n]
    p = max(len(r["lens"]) for r in group)
    lens = torch.tensor([r["lens"] + [0] * (p - len(r["lens"])) for r in group])
    with torch.no_grad():
      ref = hf_model(torch.tensor(np.stack([r["ids"] for r in group])), patch_lengths=lens,
                     use_cache=False).logits.numpy()
    for r, logits in zip(group, ref):
      r["logits"] = logits
  theta = hf_model.config.patching_threshold
  for i, n in enumerate(ENTROPY_LENGTHS):
    ids = fx.sample_ids(n, seed=10 + i)
    x = torch.tensor(ids[None])
    with torch.no_grad():
      h, lens, _ = hf_model.model.patcher(x, patch_size=hf_model.config.patch_size,
                                          threshold=theta)
      ref = hf_model(x, use_cache=False).logits[0].numpy()
    h = h[0].numpy()
    # Exact start comparison needs entropies clear of the threshold (docs/testing.md).
    assert np.abs(h[1:] - theta).min() > 1e-4
    st = np.zeros(S + 1, bool)
    st[:n + 1] = fx.starts_from_hf_lengths(lens[0].numpy(), n)
    rows.append(dict(ids=ids, n=n, starts=st, logits=ref, explicit=False, entropies=h))
  return rows


def _compare(hf_model, cfg, params):
  """Runs HF row by row and bltjax once (padded batch); returns worst |Δ| per quantity."""
  rows = _hf_reference(hf_model)
  ids = np.zeros((len(rows), S), np.int32)
  for i, r in enumerate(rows):
    ids[i, :r["n"]] = r["ids"]
  lengths = np.asarray([r["n"] for r in rows], np.int32)
  starts = np.stack([r["starts"] for r in rows])
  explicit = np.asarray([r["explicit"] for r in rows])
  got_h, got_st, got = map(np.asarray, _both_paths_jit(params, cfg, ids, lengths, starts,
                                                       explicit))
  worst = {"explicit": 0.0, "patcher": 0.0, "entropy": 0.0}
  for i, r in enumerate(rows):
    n = r["n"]
    np.testing.assert_allclose(got[i, :n], r["logits"], err_msg=f"row {i}", **TOL)
    key = "explicit" if r["explicit"] else "patcher"
    worst[key] = max(worst[key], float(np.abs(got[i, :n] - r["logits"]).max()))
    if not r["explicit"]:
      np.testing.assert_allclose(got_h[i, :n], r["entropies"], err_msg=f"row {i}", **TOL)
      np.testing.assert_array_equal(got_st[i, :n + 1], r["starts"][:n + 1])
      assert n / r["starts"].sum() > 1.5  # non-trivial patches (sharpened patcher head)
      worst["entropy"] = max(worst["entropy"], float(np.abs(got_h[i, :n] - r["entropies"]).max()))
  return worst


@pytest.mark.parametrize("name", ["k2", "k4-mixed-heads"])
def test_layout_matches_model(models, name):
  _, cfg, params = models[name]
  abstract = {k: tuple(v.shape) for k, v in hf.flat_leaves(model.abstract_params(cfg)).items()}
  assert abstract == hf.param_shapes(cfg)
  assert {k: v.shape for k, v in hf.flat_leaves(params).items()} == abstract


@pytest.mark.parametrize("name", ["k2", "k4-mixed-heads"])
def test_logits_explicit_and_entropy_patching(models, name):
  """Explicit irregular / all-ones / one-long-patch rows, and each side's own patcher."""
  worst = _compare(*models[name])
  print(f"{name}: max |dlogit| explicit {worst['explicit']:.2e}, patcher "
        f"{worst['patcher']:.2e}; max |dH| {worst['entropy']:.2e}")


def test_export_loaded_by_hf(models, tmp_path):
  """Workflow B: a bltjax-side random model exported to HF gives the same logits there."""
  _, cfg, _ = models["k2"]
  rng = np.random.default_rng(3)
  params: dict = {}
  for leaf in hf.layout(cfg):
    fan_in = leaf.shape[0] if leaf.kind != "hash" else leaf.shape[-1]
    x = rng.standard_normal(leaf.shape).astype(np.float32) * fan_in**-0.5
    if leaf.path[-1] == "scale":
      x = 1.0 + 0.1 * x
    node = params
    for k in leaf.path[:-1]:
      node = node.setdefault(k, {})
    node[leaf.path[-1]] = x
  params["entropy_model"]["output"]["kernel"] *= 25.0  # non-trivial entropy patches
  hf.save_hf(tmp_path / "hf", params, cfg)
  hf_model, info = BltForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  hf_model.eval()
  worst = _compare(hf_model, cfg, params)
  print(f"export: max |dlogit| explicit {worst['explicit']:.2e}, patcher "
        f"{worst['patcher']:.2e}; max |dH| {worst['entropy']:.2e}")
