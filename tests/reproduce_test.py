"""bltjax.reproduce: the plan at every scale resolves its configs (no training)."""

from __future__ import annotations

from bltjax import reproduce


def test_tiny_dry_run_prints_the_plan(tmp_path, capsys):
  assert reproduce.main(["--scale", "tiny", "--workdir", str(tmp_path), "--dry-run"]) == 0
  out = capsys.readouterr().out
  for stage in ("entropy", "calibrate", "blt", "bltd-8", "eval", "report"):
    assert f"  {stage}" in out, stage
  # The demo drops the task suites (not meaningful at this scale) for the gen suite's grid.
  for run in ("gen-BLT-ar-T1", "gen-BLT-ar-T0.7", "gen-BLT-ar-greedy",
              "gen-BLT-blts-k4-T1", "gen-BLT-blts-k16-greedy", "gen-BLT-D-8-bltd-onestep-T1",
              "gen-BLT-D-8-bltd-a0.9-greedy", "gen-BLT-D-8-bltdv-T0.7"):
    assert run in out, run
  assert "--rule one_step" in out and "--reference" in out
  for suite in ("translation-", "mc-", "humaneval-", "bpb-"):
    assert suite not in out, suite
  assert not any(tmp_path.iterdir())  # nothing written


def test_1b_dry_run_resolves_its_configs(tmp_path, capsys):
  assert reproduce.main(["--scale", "1b", "--workdir", str(tmp_path), "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert "configs/blt_1b.py" in out and "configs/entropy_100m.py" in out
  for z in (4, 8, 16):
    assert f"bltd-{z}" in out and f"diffusion.block_size={z}" in out
  assert "humaneval" in out and "GiB" in out


def test_small_dry_run_and_overrides(tmp_path, capsys):
  assert reproduce.main(["--scale", "small", "--workdir", str(tmp_path), "--dry-run",
                         "--block-sizes", "4", "--limit", "humaneval=0"]) == 0
  out = capsys.readouterr().out
  assert "bltd-4" in out and "bltd-8" not in out and "humaneval-" not in out
  assert "translation-BLT-D-4-bltd" in out and "gen-BLT-D-4-bltd-a0.9-T1" in out
