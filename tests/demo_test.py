"""`make demo` end to end, a few steps per stage (slow: three training compiles + eval runs)."""

from __future__ import annotations

import json

import pytest

from bltjax import demo, weights


@pytest.mark.slow
def test_demo_quick_runs_every_stage(tmp_path, capsys):
  assert demo.main(["--quick", "--run_dir", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "held-out bits per byte" in out and "order-0" in out and "ETA" in out
  res = json.loads((tmp_path / "results.json").read_text())
  assert res["blt"]["mean_bpb"] > 0 and res["unigram_bits"] and res["bltd-8"]["mean_bpb"] > 0
  assert (tmp_path / "report" / "report.md").is_file()
  cfg, params = weights.load_checkpoint(tmp_path / "blt" / "export")
  assert cfg.patcher.mode == "entropy" and "entropy_model" in params
