"""The per-row `passes` counters equal the passes the engine really executes (counted on the
host by callbacks inside the compiled programs), for every method at batch 1."""

import pytest

from bltjax.decoding import engine, generation
from tests.model_fixtures import PROMPTS, blt_setup, bltd_setup


@pytest.mark.parametrize("method,opt", [
  ("ar", generation.Options()),
  ("blts", generation.Options(draft_k=4)),
  ("bltd", generation.Options(rule="confidence", alpha=0.3)),
  ("bltd", generation.Options(rule="one_step", block_latent="force_boundary")),
  ("bltdv", generation.Options(rule="entropy", gamma=1.5)),
])
def test_counted_passes_equal_executed_passes(method, opt):
  cfg, params = bltd_setup() if method.startswith("bltd") else blt_setup(window=16)
  with engine.instrument() as executed:
    g = generation.generate(params, cfg, [PROMPTS[2]], method=method, max_new=20,
                            options=opt, stop_at_eos=False)[0]
  # Prefill's forward is not a generation pass: one of each local stack (and the global).
  executed.subtract({"decoder": 1, "encoder": 1, "entropy": 1, "global": 1})
  assert {k: v for k, v in executed.items() if v} == {k: v for k, v in g.passes.items() if v}
  assert g.passes["decoder"] >= g.nfe_dec - 1 and g.passes["global"] >= 1
