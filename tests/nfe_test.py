import pytest

from bltjax.decoding import nfe


def test_bandwidth_reproduces_paper_row():
  # Worked example of arXiv 2605.08044, Eq. 8: BLT 3B Fr->En, 512 decoder and 308 global NFEs.
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


def test_paper_3b_tables_reproduce():
  # Fast BLT (arXiv 2605.08044) 3B Fr→En and HumanEval, fitted counts nfe.PAPER_3B.
  rows = nfe.reproduce_paper()
  assert len(rows) == len(nfe.PAPER_3B_ROWS) == 13
  for r in rows:
    where = f"{r['task']} {r['model']} {r['setting']}"
    if r["bw_from_nfe"] is not None:
      assert r["bw_from_nfe"] == pytest.approx(r["bw_gb"], rel=5e-3), where
    if r["decrease"] is None:
      continue
    # Every decrease cell is 1 − BW/BW_BLT of the BW cells; HumanEval has no NFE cells, so its
    # decrease cells are checked from the BW cells only.
    assert abs(r["decrease_from_bw"] - r["decrease"]) <= 0.01, where  # 2-decimal rounding
    if r["task"] == "fr-en":
      assert abs(r["decrease_from_nfe"] - r["decrease"]) <= 0.5, where
  assert sum(r["decrease_from_nfe"] is not None for r in rows) == 8  # every Fr→En row
  assert sum(r["decrease"] is not None for r in rows) == 11


def test_implied_nfe_inverts_eq8():
  c = nfe.PAPER_3B
  assert nfe.implied_n_enc(nfe.bandwidth_gb(512, 308, c), 512) == pytest.approx(308)
  assert nfe.implied_n_dec(nfe.bandwidth_gb(179, 64, c), 64) == pytest.approx(179)
  # HumanEval BLT with the full 512-byte budget: about 250 global NFEs (docs/nfe.md).
  assert nfe.implied_n_enc(1590.45, 512) == pytest.approx(250.1, abs=0.1)


def test_weight_bytes_counts_each_module_pass():
  c = nfe.ParamCounts(enc=10, glob=100, dec=3, entropy=7)
  got = nfe.weight_bytes({"decoder": 5, "global": 2, "encoder": 6, "entropy": 4}, c)
  assert got == 2 * (5 * 3 + 2 * 100 + 6 * 10 + 4 * 7)
  # Eq. 8 is the special case encoder passes = global passes, no entropy term.
  eq8 = nfe.weight_bytes({"decoder": 534, "global": 215, "encoder": 215}, nfe.PAPER_3B)
  assert eq8 / 1e9 == pytest.approx(nfe.bandwidth_gb(534, 215, nfe.PAPER_3B))
  with pytest.raises(ValueError, match="unknown modules"):
    nfe.weight_bytes({"head": 1}, c)


def test_param_counts_entropy_model_counted_apart():
  import numpy as np
  tree = {"local_encoder": {"w": np.zeros((2, 3))}, "global_transformer": {"w": np.zeros(5)},
          "local_decoder": {"w": np.zeros(7)}, "entropy_model": {"w": np.zeros((4, 4))}}
  c = nfe.param_counts(tree)
  assert c == nfe.ParamCounts(enc=6, glob=5, dec=7, entropy=16)
  assert nfe.bandwidth_gb(1, 1, c) == 2 * (7 + 11) / 1e9  # entropy not in Eq. 8
