"""Exact speculative sampling: BLT-S (k = 2, 4) and BLT-DV (one step) draw every 3-byte
continuation with the verifier's probability (enumerated by full recompute), and temperature
-> 0 gives the greedy bytes."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bltjax.decoding import generation, sampling
from bltjax.modeling import model
from tests.model_fixtures import PROMPTS, blt_setup, bltd_setup

TOP_K, N_SAMPLES, NEW, CHUNK = 4, 20_000, 3, 1000
PROMPT = b"The quick brown"
# Total-variation bound between the empirical and the exact distribution over the <= 64
# continuations: the expected TV of 20,000 exact samples is at most 0.5 * sqrt(64) *
# sqrt(2 / (pi * 20000)) = 0.023; a sampler that keeps drafts unchecked lands far above.
TV_MAX = 0.035


def _sharp_latents(params):
  """Scales the decoder's cross-attention outputs so the stale latent of a draft matters: the
  drafts' distribution q then differs visibly from the verifier's p (or the test means little)."""
  dec = dict(params["local_decoder"])
  for name, sub in dec.items():
    if name.startswith("cross_attn_layers"):
      dec[name] = dict(sub, wo={"kernel": sub["wo"]["kernel"] * 30})
  return dict(params, local_decoder=dec)


def _exact(params, cfg, prompt: bytes) -> dict[tuple[int, ...], float]:
  """p(b1 b2 b3 | prompt) under the warped (top-k, T = 1) distribution, by full recompute."""
  ids0 = generation.encode_prompt(prompt)
  width = 32
  seqs = [()]
  probs = {(): 1.0}
  fwd = jax.jit(lambda ids, n: model.forward(params, cfg, ids, lengths_B=n))
  rows = TOP_K ** (NEW - 1)  # one shape for every step: one compilation
  for _ in range(NEW):
    arr = np.zeros((rows, width), np.int32)
    for i, s in enumerate(seqs):
      arr[i, :len(ids0) + len(s)] = ids0 + list(s)
    n = jnp.asarray([len(ids0) + len(s) for s in seqs] + [1] * (rows - len(seqs)), jnp.int32)
    b = len(seqs)
    logits = fwd(jnp.asarray(arr), n)[jnp.arange(b), n[:b] - 1]
    p = np.asarray(sampling.probs(logits, jnp.ones((b,)), jnp.full((b,), TOP_K),
                                 jnp.ones((b,))), np.float64)
    nxt = {}
    for i, s in enumerate(seqs):
      for t in np.flatnonzero(p[i] > 0):
        nxt[s + (int(t),)] = probs[s] * p[i, t]
    seqs, probs = list(nxt), nxt
  return probs


def _tv(samples, exact) -> float:
  c = collections.Counter(samples)
  assert set(c) <= set(exact), "a sample outside the support of the verifier's distribution"
  return 0.5 * sum(abs(c[s] / len(samples) - p) for s, p in exact.items())


@pytest.mark.parametrize("method,k", [("blts", 2), ("blts", 4), ("bltdv", None)])
def test_speculative_sampling_follows_the_verifier(method, k):
  if method == "blts":
    cfg, params = blt_setup(window=16)
    opt = generation.Options(draft_k=k, temperature=1.0, top_k=TOP_K)
  else:
    cfg, params = bltd_setup()
    opt = generation.Options(rule="one_step", temperature=1.0, top_k=TOP_K)
  params = _sharp_latents(params)
  exact = _exact(params, cfg, PROMPT)
  assert abs(sum(exact.values()) - 1) < 1e-6 and len(exact) == TOP_K ** NEW
  res = []
  for s0 in range(0, N_SAMPLES, CHUNK):  # one compiled program, CHUNK rows at a time
    res += generation.generate(params, cfg, [PROMPT] * CHUNK, method=method, max_new=NEW,
                               options=opt, seeds=list(range(s0, s0 + CHUNK)),
                               stop_at_eos=False, batch_bucket=False, patch_cap=32)
  assert all(len(r.new_ids) == NEW for r in res)
  tv = _tv([tuple(r.new_ids) for r in res], exact)
  assert tv < TV_MAX, tv
  # The check has teeth: drafts are often rejected, so an unchecked sampler would be off.
  acceptance = sum(r.accepted for r in res) / sum(r.drafted for r in res)
  assert acceptance < 0.9, acceptance


def test_sampling_temperature_to_zero_is_greedy():
  cfg, params = blt_setup(window=16)
  greedy = generation.generate(params, cfg, PROMPTS, method="blts", max_new=24,
                               options=generation.Options(draft_k=4))
  cold = generation.generate(params, cfg, PROMPTS, method="blts", max_new=24, seeds=[1, 2, 3, 4],
                             options=generation.Options(draft_k=4, temperature=1e-4))
  assert [r.new_ids for r in cold] == [r.new_ids for r in greedy]
  # Sampling is per row: a row's bytes do not depend on its batch.
  opt = generation.Options(draft_k=4, temperature=1.0, top_p=0.9)
  alone = generation.generate(params, cfg, [PROMPTS[0]], method="blts", max_new=24, seeds=[7],
                              options=opt)[0]
  batch = generation.generate(params, cfg, [PROMPTS[2], PROMPTS[0]], method="blts", max_new=24,
                              seeds=[1, 7], options=opt)
  assert batch[1].new_ids == alone.new_ids


def test_draft_policy_tau_stops_drafting():
  cfg, params = blt_setup(window=16)
  fixed = generation.generate(params, cfg, PROMPTS, method="blts", max_new=24,
                              options=generation.Options(draft_k=8))
  tau = generation.generate(params, cfg, PROMPTS, method="blts", max_new=24,
                            options=generation.Options(draft_k=8, draft_tau=0.9))
  assert [r.new_ids for r in tau] == [r.new_ids for r in fixed]  # still exact greedy
  assert sum(r.drafted for r in tau) < sum(r.drafted for r in fixed)
