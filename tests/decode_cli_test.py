"""decode.py CLI: output records, error lines, resume, truncation, batch independence."""

import base64
import dataclasses
import json

import pytest

from bltjax import weights
from bltjax.decoding import decode as cli
from tests.model_fixtures import median_threshold, tiny_config, tiny_params


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  cfg = tiny_config(window=16)
  params = tiny_params(cfg)
  cfg = cfg.replace(patcher=dataclasses.replace(cfg.patcher,
                                                threshold=median_threshold(params, cfg)))
  path = tmp_path_factory.mktemp("ckpt") / "tiny"
  weights.save_checkpoint(path, params, cfg)
  return path


def _run(ckpt, tmp_path, lines, *extra):
  inp = tmp_path / "in.jsonl"
  inp.write_text("\n".join(lines) + "\n")
  out = tmp_path / "out.jsonl"
  rc = cli.main(["--checkpoint", str(ckpt), "--input", str(inp), "--output", str(out),
                 "--max-new-bytes", "24", "--max-context", "256", *extra])
  return rc, [json.loads(x) for x in out.read_text().splitlines()]


def test_cli_records_errors_and_resume(ckpt, tmp_path, capsys):
  lines = [json.dumps({"id": "a", "prompt": "Hello"}),
           "{not json",
           json.dumps({"id": 2, "prompt_b64": base64.b64encode(b"\xff\x00\x80").decode()}),
           json.dumps({"id": "long", "prompt": "x" * 400}),
           json.dumps({"id": "c", "prompt": "The cat"})]
  rc, recs = _run(ckpt, tmp_path, lines, "--batch-size", "2")
  assert rc == 0
  errs = [r for r in recs if "error" in r]
  assert {e["line"] for e in errs} == {2, 4}
  assert "in.jsonl:2" in capsys.readouterr().err
  good = {r["id"]: r for r in recs if "error" not in r}
  assert set(good) == {"a", 2, "c"}
  for r in good.values():
    data = base64.b64decode(r["completion_b64"])
    assert r["new_bytes"] == len(data)
    assert r["completion"] == data.decode("utf-8", errors="replace")
    assert r["stop_reason"] in ("eos", "length", "stop")
    assert r["nfe"]["decoder"] >= r["new_bytes"]
    assert r["est_bandwidth_gb"] > 0
  # Resume: nothing new is decoded for ids already present.
  out = tmp_path / "out.jsonl"
  before = out.read_text()
  rc, _ = _run(ckpt, tmp_path, lines[:1] + lines[2:3], "--resume")
  assert out.read_text() == before
  # Truncation keeps the row instead of failing it.
  rc, recs = _run(ckpt, tmp_path, [lines[3]], "--truncate-left")
  assert [r["id"] for r in recs] == ["long"] and "error" not in recs[0]


def test_cli_sampling_independent_of_batch(ckpt, tmp_path):
  a = json.dumps({"id": "a", "prompt": "Hello"})
  b = json.dumps({"id": "b", "prompt": "Other prompt"})
  args = ("--temperature", "1.0", "--top-p", "0.9", "--seed", "3")
  _, alone = _run(ckpt, tmp_path, [a], *args, "--batch-size", "1")
  _, both = _run(ckpt, tmp_path, [b, a], *args, "--batch-size", "2")
  assert {r["id"]: r["completion_b64"] for r in both}["a"] == alone[0]["completion_b64"]


def test_cli_blts_writes_the_greedy_ar_bytes(ckpt, tmp_path):
  lines = [json.dumps({"id": "a", "prompt": "Hello"}), json.dumps({"id": "c", "prompt": "The cat"})]
  _, ar = _run(ckpt, tmp_path, lines, "--batch-size", "2")
  _, sp = _run(ckpt, tmp_path, lines, "--batch-size", "2", "--method", "blts", "--draft-k", "4")
  assert [r["completion_b64"] for r in sp] == [r["completion_b64"] for r in ar]
  assert [r["stop_reason"] for r in sp] == [r["stop_reason"] for r in ar]
  for r in sp:
    b = r["speculation"]
    assert b["window"] == 4
    nfe = r["nfe"]
    drafted = nfe["decoder"] - b["cycles"]  # decoder NFE = drafts + 1 per verification
    assert 0 < drafted <= 4 * b["cycles"] and nfe["encoder_global"] == b["cycles"]
    assert nfe["passes"] == {"decoder": nfe["decoder"], "encoder": nfe["decoder"],
                             "global": b["cycles"], "entropy": b["cycles"]}
    assert 1 <= b["bytes_per_cycle"] <= 5 and 0 <= b["acceptance"] <= b["agreement"] <= 1


def test_cli_block_methods(ckpt, tmp_path, capsys):
  from tests.model_fixtures import bltd_setup as setup

  cfg, params = setup()
  bltd = tmp_path / "bltd"
  weights.save_checkpoint(bltd, params, cfg)
  lines = [json.dumps({"id": "a", "prompt": "Hello"})]
  _, ar = _run(bltd, tmp_path, lines, "--batch-size", "1")
  _, dv = _run(bltd, tmp_path, lines, "--batch-size", "1", "--method", "bltdv")
  assert dv[0]["completion_b64"] == ar[0]["completion_b64"]  # verified: greedy causal bytes
  assert dv[0]["speculation"]["window"] == cfg.diffusion.block_size
  _, d = _run(bltd, tmp_path, lines, "--batch-size", "1", "--method", "bltd", "--rule",
              "one_step")
  blk = d[0]["blocks"]
  assert d[0]["nfe"]["decoder"] == d[0]["nfe"]["encoder_global"] == blk["blocks"]
  assert blk["decoder_steps_per_block"] == 1 and d[0]["new_bytes"] > 0
  # Sampled BLT-DV needs the one-step rule (refused before anything is written).
  rc = cli.main(["--checkpoint", str(bltd), "--input", str(tmp_path / "in.jsonl"), "--output",
                 str(tmp_path / "dv.jsonl"), "--method", "bltdv", "--temperature", "0.7"])
  assert rc == 2 and "one_step" in capsys.readouterr().err
  assert not (tmp_path / "dv.jsonl").exists()
  # A plain BLT checkpoint is refused for block decoding before anything is written.
  rc = cli.main(["--checkpoint", str(ckpt), "--input", str(tmp_path / "in.jsonl"), "--output",
                 str(tmp_path / "refused.jsonl"), "--method", "bltd"])
  assert rc == 2 and "diffusion.block_size" in capsys.readouterr().err
  assert not (tmp_path / "refused.jsonl").exists()
