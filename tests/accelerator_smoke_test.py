"""benchmarks/accelerator.py (the prepared GPU run, docs/gpu_run.md) end to end on the CPU: every
section runs in `--smoke` mode (tiny configs, a few bytes) and its JSON holds sane figures; the
exact mode's BLT-S and BLT-DV reproduce AR byte for byte."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "accelerator.py"


def _run(*args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")  # conftest's XLA flags too
  return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, text=True,
                        capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp("accelerator")
  r = _run("--smoke", "--out", str(out))
  (out / "stdout.txt").write_text(r.stdout + r.stderr)  # kept for a look at a failure
  assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
  return json.loads((out / "accelerator.json").read_text()), r.stdout


def _positive(row: dict, *keys: str) -> None:
  for k in keys:
    assert row[k] is not None and row[k] > 0, (k, row)


def test_every_section_ran(smoke):
  d, _ = smoke
  sec = d["sections"]
  for name in ("environment", "model", "exactness", "table_b1", "table_b2", "hf", "train"):
    assert sec[name]["status"] == "ok", (name, sec[name])
  assert sec["table_7b_b1"]["status"].startswith("skipped")
  env = sec["environment"]
  assert env["platform"] == "cpu"
  _positive(env, "hbm_gb_s", "bf16_peak_tflop_s", "copy_ms", "matmul_ms")


def test_exact_mode_reproduces_ar(smoke):
  d, _ = smoke
  ex = d["sections"]["exactness"]
  exact, bf16 = ex["modes"]["exact"], ex["modes"]["bf16"]
  assert "skipped" not in exact and "skipped" not in bf16
  assert exact["compute_dtype"] == "float32" and bf16["compute_dtype"] == "bfloat16"
  assert exact["ar_bytes"] == [d["sizes"]["max_new"]] * ex["prompts"]  # no EOS stop
  for name in ("blts k=4", "bltdv Z=4 one_step"):
    assert exact[name]["all_identical"], (name, exact[name])
    assert exact[name]["identical"] == exact[name]["of"] == ex["prompts"]
    assert exact[name]["byte_agreement"] == 1.0
    assert 0.0 <= bf16[name]["byte_agreement"] <= 1.0
    assert 0 <= bf16[name]["identical"] <= bf16[name]["of"] == ex["prompts"]


def test_decoding_tables(smoke):
  d, out = smoke
  for sec, batch, methods in (("table_b1", 1, {"ar", "blts", "bltd", "bltdv"}),
                              ("table_b2", 2, {"ar"})):
    rows = d["sections"][sec]["rows"]
    assert {r["method"] for r in rows} == methods
    for r in rows:
      assert "skipped" not in r, r
      assert r["batch"] == batch
      _positive(r, "bytes_per_s", "x_ar_wall", "eq8_ratio", "bytes_ratio",
                "roofline_efficiency", "weight_mb_per_byte")
      # The roofline reads the bandwidth the environment section measured.
      assert r["stream_gb_s"] == pytest.approx(d["sections"]["environment"]["hbm_gb_s"])
    ar = next(r for r in rows if r["method"] == "ar")
    assert ar["x_ar_wall"] == 1.0 and ar["eq8_ratio"] == 1.0 and ar["identical_to_ar"]
  bltd = next(r for r in d["sections"]["table_b1"]["rows"] if r["method"] == "bltd")
  assert bltd["bytes_ratio"] < 1.0 and bltd["eq8_ratio"] < 1.0  # one global pass per block
  blts = next(r for r in d["sections"]["table_b1"]["rows"] if r["method"] == "blts")
  _positive(blts, "projected_bytes_per_s_paper", "projected_x_ar_paper")
  assert "bltd Z=4 one_step" in out  # the table is printed as it is measured


def test_hf_and_training(smoke):
  d, _ = smoke
  hf = d["sections"]["hf"]
  assert hf["new_bytes"] == d["sizes"]["hf_new"] and hf["batch"] == 1
  _positive(hf, "hf_bytes_per_s", "bltjax_ar_bytes_per_s", "ratio")
  tr = d["sections"]["train"]
  assert tr["finite"] and tr["seq_len"] == d["sizes"]["train_seq"]
  _positive(tr, "bytes_per_s", "step_s_median", "model_flops_per_step", "mfu")
  assert tr["mfu"] < 1.0


def test_targets_reported(smoke):
  d, out = smoke
  names = [t["target"] for t in d["targets"]]
  for want in ("HBM roofline", "one-step >= 3x AR", "BLT-S k=4", "HF generate", "MFU"):
    assert any(want in n for n in names), (want, names)
  for t in d["targets"]:
    assert t["met"] in (True, False, None)
    if t["met"] is not None:
      assert t["value"] is not None
  assert "targets (this run's own figures):" in out


def test_out_of_time_still_writes_json(tmp_path):
  r = _run("--smoke", "--out", str(tmp_path), "--budget-s", "0.001", timeout=120)
  assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
  d = json.loads((tmp_path / "accelerator.json").read_text())
  assert all(s["status"].startswith("skipped") for s in d["sections"].values())
  assert d["sections"]["table_b1"]["status"] == "skipped: time"


def test_unknown_section_named():
  r = _run("--smoke", "--sections", "environment,bogus", timeout=120)
  assert r.returncode == 2 and "--sections" in r.stderr and "bogus" in r.stderr
