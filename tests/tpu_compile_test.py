"""The TPU compiler, run ahead of time on this CPU (benchmarks/tpu_compile.py), accepts the tiny
training step and one cycle of every decoding method for a v5e:2x2 slice, and its memory and cost
analyses come back sane. Needs libtpu (the `test` extra installs it on Python 3.11)."""

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="libtpu not installed (pip install -e '.[tpu]')")

sys.path.insert(0, str(REPO / "benchmarks"))
import tpu_compile  # noqa: E402

TOPOLOGY = "v5e:2x2"


def _run(tmp_path, *args) -> dict:
  out = tmp_path / "out.json"
  assert tpu_compile.main([*args, "--topology", TOPOLOGY, "--json", str(out)]) == 0
  return json.loads(out.read_text())


def test_topology_describes_four_v5e_chips():
  devices = tpu_compile.topology_devices(TOPOLOGY)
  assert len(devices) == 4
  assert "v5" in devices[0].device_kind.lower()
  assert len(tpu_compile.topology_devices("v5e:1x1")) == 1  # smaller than a host


def test_unknown_topology_is_a_clear_error():
  with pytest.raises(SystemExit, match="--topology"):
    tpu_compile.chip_for("v9z:2x2")


def test_train_step_compiles_for_v5e(tmp_path):
  r = _run(tmp_path, "train", "--config", "configs/blt_tiny.py", "--seq-len", "128",
           "--batch-size", "8", "--grad-accum", "2")
  assert r["label"] == tpu_compile.LABEL and r["chip"] == "TPU v5e" and r["chips"] == 4
  assert r["rows_per_chip"] == 1 and r["grad_accum"] == 2
  mem = r["memory_gib_per_chip"]
  assert mem["argument"] > 0 and mem["temp"] > 0
  # Donated state: the new state reuses the old one's buffers.
  assert mem["alias"] > 0 and mem["alias"] <= mem["output"]
  assert 0 < mem["peak"] <= r["hbm_gib"] and r["fits"]
  assert r["xla_counted_tflops"] > 0 and r["gb_accessed_per_chip_per_step"] > 0
  # The per-step cost counts both microbatches, XLA's count one.
  assert r["tflops_per_chip_per_step"] == pytest.approx(2 * r["xla_counted_tflops"], rel=1e-3)
  assert r["roofline_step_s"] > 0 and 0 < r["mfu_upper_bound"] <= 1
  assert "| configs/blt_tiny.py | v5e:2x2 | 128 | 8 | 2 | 1 |" in tpu_compile.table(
    [str(tmp_path / "out.json")])


def test_decode_cycles_compile_for_v5e(tmp_path):
  r = _run(tmp_path, "decode", "--config", "configs/bltd_tiny.py", "--batch", "4",
           "--methods", "ar,blts:4,bltd:8,bltdv:8", "--prompt-len", "32", "--max-new", "32")
  assert r["chips"] == 4 and r["mesh_shape"] == [1, 1, 4]
  rows = {x["method"]: x for x in r["rows"]}
  assert {"ar", "blts:4", "bltd:8:one_step", "bltdv:8:one_step"} <= set(rows)
  assert any(k.startswith("bltd:8:steps") for k in rows)
  for x in rows.values():
    assert x["batch"] == 4 and x["xla_tflops"] > 0 and x["xla_gb_accessed"] > 0
    assert 0 < x["memory_gib_per_chip"]["peak"] <= 16 and x["fits"]
    assert x["xla_bytes_per_s"] > 0 and x["weights_bytes_per_s"] > 0
    assert 0 < x["weights_gb"] and x["weights_cycle_s"] > 0 and x["xla_cycle_s"] > 0
    assert x["optimal_seconds"] is None or x["optimal_seconds"] > 0
  ar = rows["ar"]
  assert ar["xla_x_ar"] == 1 and ar["weights_x_ar"] == 1 and ar["eq8_x_ar"] == 1
  # More denoising steps per block can only cost more, in both predictions.
  for key in ("xla_cycle_s", "weights_cycle_s"):
    one = rows["bltd:8:one_step"][key]
    assert all(v[key] > one for k, v in rows.items() if ":steps" in k)
  md = tpu_compile.table([str(tmp_path / "out.json")])
  assert all(f"| {k} |" in md for k in rows)


def test_attention_flag(tmp_path):
  from bltjax.config import BLTConfig

  if not any(f.name == "attention" for f in dataclasses.fields(BLTConfig)):
    with pytest.raises(SystemExit, match="--attention"):
      tpu_compile.main(["train", "--topology", TOPOLOGY, "--config", "configs/blt_tiny.py",
                        "--attention", "xla"])
  else:
    c = tpu_compile.load_config("configs/blt_tiny.py")
    assert tpu_compile.set_attention(c, "xla") == "xla" and c.model.attention == "xla"


def test_set_overrides_config_keys_and_names_bad_ones():
  c = tpu_compile.load_config("configs/blt_tiny.py")
  tpu_compile.apply_sets(c, ["model.hash.vocab=500002", "model.patcher.mode=static",
                             "model.encoder.dim=512"])
  assert (c.model.hash.vocab, c.model.patcher.mode, c.model.encoder.dim) == (500002, "static", 512)
  for bad, msg in (("model.hash.vocabs=3", "model.hash.vocabs: no such config key"),
                   ("model.hashes.vocab=3", "'hashes' is missing"),
                   ("model.hash.vocab", "KEY=VALUE")):
    with pytest.raises(SystemExit, match=msg):
      tpu_compile.apply_sets(c, [bad])


def test_bare_command_runs_train_and_decode_into_one_json(tmp_path, monkeypatch):
  """The issue's verify command names no sub-command: both sections, one file, one table."""
  seen = []

  def fake(section):
    def run(a, log):
      seen.append((section, a.json, a.topology, a.seq_len))
      return {"section": section}
    return run

  monkeypatch.setattr(tpu_compile, "run_train", fake("train"))
  monkeypatch.setattr(tpu_compile, "run_decode", fake("decode"))
  out = tmp_path / "all.json"
  assert tpu_compile.main(["--topology", TOPOLOGY, "--config", "configs/blt_tiny.py",
                           "--seq-len", "64", "--json", str(out)]) == 0
  assert seen == [("train", None, TOPOLOGY, 64), ("decode", None, TOPOLOGY, 64)]
  assert json.loads(out.read_text()) == {"section": "all", "train": {"section": "train"},
                                         "decode": {"section": "decode"}}
