import pytest

from bltjax import nfe


def test_bandwidth_reproduces_paper_row():
  # fast_blt.md §8 worked example: BLT 3B Fr->En, 512 decoder and 308 global NFEs.
  counts = nfe.ParamCounts(enc=0, glob=2_852_500_000, dec=159_800_000)
  # The counts are a least-squares fit (every row within 0.4%), hence rel=1e-3.
  assert nfe.bandwidth_gb(512, 308, counts) == pytest.approx(1920.99, rel=1e-3)


def test_param_counts_exclude_hash_tables():
  import numpy as np
  tree = {"local_encoder": {"hash_embeddings": {"embedding": np.zeros((6, 100, 4))},
                            "tok_embeddings": {"embedding": np.zeros((260, 4))}},
          "global_transformer": {"w": np.zeros((3, 5))},
          "local_decoder": {"w": np.zeros((7,))}}
  assert nfe.param_counts(tree) == nfe.ParamCounts(enc=1040, glob=15, dec=7)
