"""python -m bltjax.report: tables in the paper's layout and the figures, from run directories
whose results.json the eval runner's own `summarize` writes (synthetic records, no model)."""

import json
import types

import pytest

from bltjax import report
from bltjax.eval import mc, runner, translation


def _gen_record(i, group, nfe_dec, nfe_enc, gb, seconds, extra=None):
  return {"id": f"{group}/{i}", "group": group, "source": "s", "reference": f"the ref {i}",
          "hypothesis": f"the ref {i}" if i % 2 == 0 else "other words", "completion": "x",
          "new_bytes": 10, "stop_reason": "stop", "seconds": seconds,
          "nfe": {"decoder": nfe_dec, "encoder_global": nfe_enc, "entropy": 0,
                  "encoder_byte": 0}, "est_bandwidth_gb": gb, **(extra or {})}


def _run_dir(tmp_path, name, suite, method, records, settings):
  a = types.SimpleNamespace(method=method)
  s = {"checkpoint": "/ckpt/tiny", "draft_k": 8, "alpha": 0.7, "gamma": 1.5, "rule": None,
       **settings}
  res = runner.summarize(suite, a, s, records, {"model": "tiny"})
  d = tmp_path / name
  d.mkdir()
  (d / "results.json").write_text(json.dumps(res))
  return d


def test_report_tables_and_figures(tmp_path, capsys):
  recs = lambda dec, enc, gb, sec, extra=None: [
    _gen_record(i, g, dec, enc, gb, sec, extra) for g in ("en-es", "es-en") for i in range(4)]
  ar = _run_dir(tmp_path, "ar", translation, "ar", recs(10, 6, 2.0, 0.5), {})
  spec = {"speculation": {"window": 8, "cycles": 2, "bytes_per_cycle": 5.0, "acceptance": 0.6,
                          "agreement": 0.7}}
  blts = _run_dir(tmp_path, "blts", translation, "blts", recs(12, 2, 1.0, 0.25, spec), {})
  blocks = {"blocks": {"block_size": 4, "blocks": 3, "bytes_per_block": 3.3,
                       "decoder_steps_per_block": 1.7}}
  bltd = _run_dir(tmp_path, "bltd", translation, "bltd", recs(5, 3, 0.5, 0.2, blocks),
                  {"block_size": 4})
  items = [{"id": "0", "gold": 0, "correct": True, "correct_norm": False},
           {"id": "1", "gold": 1, "correct": False, "correct_norm": False}]
  mcd = _run_dir(tmp_path, "mc", mc, "ar", items, {})
  out = tmp_path / "rep"
  assert report.main([str(ar), str(blts), str(bltd), str(mcd), "--out", str(out)]) == 0
  md = (out / "report.md").read_text()
  assert "## Translation en → es" in md and "## Translation es → en" in md
  assert "## Multiple choice (likelihood)" in md
  assert "| tiny | BLT | causal | 50.00 | 0.00 | 2 |" in md
  head = ("| Model | Method | Setting | BLEU | chrF | n | Decoder NFE | Global NFE | Est. GB | "
          "Decrease vs BLT | bytes/s | × AR wall-clock |")
  assert head in md
  rows = {line.split(" | ")[1]: line for line in md.splitlines()
          if line.startswith("| tiny |") and "causal" not in line}
  assert "| BLT-S | k=8 |" in rows["BLT-S"] and "| 50.00% | 40.0 | 2.00 |" in rows["BLT-S"]
  assert "| BLT-D-4 | conf α=0.7 |" in rows["BLT-D-4"] and "| 75.00% |" in rows["BLT-D-4"]
  assert "| 4 | 10.0 | 6.0 | 2 | – | 20.0 | 1.00 |" in rows["BLT"]
  assert "archaic" in md
  for png in ("quality_vs_bandwidth", "speed_vs_bandwidth", "acceptance_vs_draft",
              "steps_per_block_vs_alpha"):
    assert (out / f"{png}.png").stat().st_size > 1000 and f"({png}.png)" in md
  # Without BLT-S / BLT-D runs their figures are skipped, not drawn empty.
  out2 = tmp_path / "rep2"
  assert report.main([str(ar), "--out", str(out2)]) == 0
  assert not (out2 / "acceptance_vs_draft.png").exists()
  assert not (out2 / "steps_per_block_vs_alpha.png").exists()
  capsys.readouterr()
  assert report.main([str(tmp_path / "missing"), "--out", str(out2)]) == 2
  err = capsys.readouterr().err.strip()
  assert "missing" in err and "\n" not in err
  with pytest.raises(SystemExit) as e:
    report.main([str(ar)])
  assert e.value.code == 2
