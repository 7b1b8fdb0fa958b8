"""The gen suite (generative bpb and entropy), per-byte efficiency and the results.json
`generation` rows: gen bpb against an independent score of the same bytes, entropy of known
strings, the row schema, zero-byte runs reported and never divided by."""

import json
import math
import types

import pytest

from bltjax import report, score, weights
from bltjax.eval import __main__ as cli
from bltjax.eval import gen, runner
from bltjax.eval.bpb import pooled_bpb


def _entropy(data: bytes) -> float:  # written out, independent of bltjax.data.stats
  n = len(data)
  return -sum(c / n * math.log2(c / n) for c in (data.count(bytes([b])) for b in set(data)))


def test_gen_bpb_equals_the_scorer_on_the_same_bytes(tmp_path):
  from tests.model_fixtures import blt_setup

  cfg, params = blt_setup()
  weights.save_checkpoint(tmp_path / "blt", params, cfg)
  out = tmp_path / "run"
  assert cli.main(["--suite", "gen", "--checkpoint", str(tmp_path / "blt"), "--output", str(out),
                   "--method", "ar", "--temperature", "1", "--limit", "2", "--max-new-bytes",
                   "12", "--prompt-bytes", "20", "--data", "fixture", "--batch-size", "2",
                   "--quiet", "--no-warmup"]) == 0
  recs = [json.loads(x) for x in (out / "examples.jsonl").read_text().splitlines()]
  res = json.loads((out / "results.json").read_text())
  assert len(recs) == 2 and {r["group"] for r in recs} and res["n"] == 2
  nll = nbytes = 0.0
  for r in recs:
    cont, prompt = bytes.fromhex(r["completion_hex"]), r["prompt"].encode()
    assert len(cont) == r["new_bytes"] == r["bytes"] and 0 < len(prompt) <= 20
    # Independent: the whole text's NLL minus the prompt's, each scored from BOS (causal).
    ref = (score.score_bytes(params, cfg, prompt + cont)["nll_nats"]
           - score.score_bytes(params, cfg, prompt)["nll_nats"])
    assert r["nll_nats"] == pytest.approx(ref, rel=1e-4, abs=1e-3)
    assert r["entropy"] == pytest.approx(_entropy(cont), abs=1e-9)
    nll, nbytes = nll + ref, nbytes + len(cont)
  assert res["scores"]["gen_bpb"] == pytest.approx(nll / (math.log(2) * nbytes), rel=1e-4)
  pb = res["per_byte"]
  assert pb["nfe_decoder"] == pytest.approx(sum(r["nfe"]["decoder"] for r in recs) / nbytes)
  assert pb["est_bandwidth_gb"] == pytest.approx(
    sum(r["est_bandwidth_gb"] for r in recs) / nbytes)


def test_entropy_and_pooling_of_known_rows():
  assert _entropy(b"aabb") == 1.0 and _entropy(b"abcd") == 2.0
  rows = [{"bytes": 4, "new_bytes": 4, "nll_nats": 4 * math.log(2), "entropy": 1.0},
          {"bytes": 2, "new_bytes": 2, "nll_nats": 6 * math.log(2), "entropy": 0.0},
          {"bytes": 0, "new_bytes": 0, "nll_nats": 0.0, "entropy": 0.0}]
  s = gen.score(rows, None)
  # (4 + 6) bits over 6 bytes; the empty row counts as such, not in bpb or entropy.
  assert s["gen_bpb"] == pytest.approx(10 / 6) and s["entropy"] == 0.5
  assert (s["new_bytes"], s["n"], s["empty_rows"]) == (6, 3, 1) and s["gen_bpb_se"] > 0
  assert gen.ratio_se([rows[0], rows[0]]) == 0.0
  empty = gen.score([rows[2]], None)
  assert empty["gen_bpb"] is None and empty["entropy"] is None and empty["empty_rows"] == 1
  assert pooled_bpb([]) is None


def _rec(i, new_bytes, dec, enc, gb, extra=None):
  return {"id": f"d/{i}", "group": "d", "new_bytes": new_bytes, "bytes": new_bytes,
          "nll_nats": 2.0 * new_bytes, "entropy": 3.0 if new_bytes else 0.0, "seconds": 0.5,
          "nfe": {"decoder": dec, "encoder_global": enc}, "est_bandwidth_gb": gb,
          **(extra or {})}


def _run(tmp_path, name, method, recs, **settings):
  s = {"checkpoint": f"/ckpt/{name.split('-')[0]}", "draft_k": 8, "alpha": 0.7, "rule": None,
       "temperature": 1.0, "gamma": 1.5, **settings}
  res = runner.summarize(gen, types.SimpleNamespace(method=method), s, recs,
                         {"model": settings.pop("model", "BLT")})
  d = tmp_path / name
  d.mkdir()
  (d / "results.json").write_text(json.dumps(res))
  return report.load_run(str(d))


def test_generation_rows_schema_and_zero_byte_runs(tmp_path):
  spec = {"speculation": {"window": 8, "cycles": 2, "bytes_per_cycle": 5.0, "acceptance": 0.6,
                          "agreement": 0.7}}
  runs = [_run(tmp_path, "blt-ar", "ar", [_rec(i, 10, 10, 3, 2.0) for i in range(2)]),
          _run(tmp_path, "blt-blts", "blts", [_rec(i, 10, 12, 2, 1.0, spec) for i in range(2)],
               draft_k=4)]
  for a, steps in ((0.3, 2), (0.9, 6)):
    blocks = {"blocks": {"block_size": 8, "blocks": 2, "bytes_per_block": 5.0,
                         "decoder_steps_per_block": steps}}
    runs.append(_run(tmp_path, f"bltd-a{a}", "bltd",
                     [_rec(i, 10, 2 * steps, 2, 0.5, blocks) for i in range(2)], alpha=a,
                     rule="confidence", block_size=8, model="BLT-D-8"))
  runs.append(_run(tmp_path, "bltd-dv", "bltdv", [_rec(i, 10, 8, 2, 0.5, spec) for i in range(2)],
                   block_size=8, model="BLT-D-8"))
  runs.append(_run(tmp_path, "bltd-empty", "ar", [_rec(0, 0, 0, 0, 0.0)], model="BLT-D-8",
                   block_size=8))
  rows = report.generation_rows(runs)
  need = {"model", "method", "setting", "temperature", "alpha", "gen_bpb", "entropy",
          "eq8_gb_per_byte", "nfe_decoder_per_byte", "nfe_global_per_byte", "steps_per_block",
          "acceptance", "bytes_per_s", "new_bytes"}
  assert all(need <= set(r) for r in rows) and len(rows) == 6
  json.dumps(rows)  # results.json-able
  by = {(r["model"], r["method"], r["alpha"]): r for r in rows}
  ar = by[("BLT", "ar", None)]
  assert ar["gen_bpb"] == pytest.approx(2 / math.log(2)) and ar["entropy"] == 3.0
  assert ar["eq8_gb_per_byte"] == pytest.approx(0.2) and ar["nfe_global_per_byte"] == 0.3
  assert ar["steps_per_block"] is None and ar["acceptance"] is None and ar["setting"] == "AR"
  s = by[("BLT", "blts", None)]
  assert (s["acceptance"], s["agreement"], s["setting"]) == (0.6, 0.7, "k=4")
  assert by[("BLT-D-8", "bltd", 0.3)]["steps_per_block"] == 2
  assert by[("BLT-D-8", "bltd", 0.9)]["steps_per_block"] == 6
  dv = by[("BLT-D-8", "bltdv", None)]
  assert dv["steps_per_block"] == 3 and dv["acceptance"] == 0.6  # 8 NFEs / 2 cycles - 1
  empty = by[("BLT-D-8", "ar", None)]
  assert empty["new_bytes"] == 0 and empty["gen_bpb"] is None
  assert empty["eq8_gb_per_byte"] is None and empty["nfe_decoder_per_byte"] is None
  assert runner.per_byte([_rec(0, 0, 5, 1, 1.0)]) is None
  path = report.write_report(runs, tmp_path / "rep")
  md = path.read_text()
  assert "## Generative quality and cost per generated byte" in md and "| 0 B |" in md
  assert "## BLT-D confidence threshold α" in md and "## BLT-S draft length k" in md
  for png in ("gen_quality_vs_bandwidth", "alpha_curves", "blts_vs_k"):
    assert (tmp_path / "rep" / f"{png}.png").stat().st_size > 1000 and f"({png}.png)" in md
