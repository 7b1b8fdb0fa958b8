"""python -m bltjax.eval: HumanEval execution, metrics, MC scoring, every suite x method, resume,
one-line errors. Tiny random models; generation runs share shapes so they share compilations."""

import json
import os

import numpy as np
import pytest

from bltjax import score, weights
from bltjax.config import DiffusionConfig
from bltjax.eval import __main__ as cli
from bltjax.eval import execution, humaneval, mc, translation
from bltjax.eval.likelihood import Scorer, byte_ids

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = str(translation.PAIRS_FILE)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  """One tiny BLT-D checkpoint serves every method (it is an ordinary causal BLT for ar/blts),
  so every run shares one config and its compilations; `blt_cfg` is a plain BLT's config
  alone, enough for the refusal checks that run before any weights load."""
  from tests.model_fixtures import bltd_setup as setup

  root = tmp_path_factory.mktemp("eval_ckpts")
  cfg, params = setup()
  weights.save_checkpoint(root / "bltd", params, cfg)
  (root / "blt_cfg").mkdir()
  doc = cfg.replace(diffusion=DiffusionConfig()).to_dict()
  doc["format_version"] = weights.FORMAT_VERSION
  (root / "blt_cfg" / "config.json").write_text(json.dumps(doc))
  return root


def _eval(*args):
  return cli.main([*map(str, args), "--quiet", "--no-warmup"])


def _results(out):
  return json.loads((out / "results.json").read_text())


def _lines(out):
  return [json.loads(x) for x in (out / "examples.jsonl").read_text().splitlines()]


def _write_completions(path, completions):
  path.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n"
                          for t, c in completions.items()))


def test_humaneval_canonical_solutions_pass(tmp_path):
  probs = humaneval.problems(None)
  assert len(probs) == 164
  comp = tmp_path / "canonical.jsonl"
  _write_completions(comp, {p["task_id"]: p["canonical_solution"] for p in probs})
  out = tmp_path / "run"
  assert _eval("--suite", "humaneval", "--completions", comp, "--output", out,
               "--batch-size", "41") == 0
  res = _results(out)
  assert res["scores"]["pass@1"] == 1.0 and res["n"] == 164


def test_humaneval_wrong_looping_and_file_touching_completions(tmp_path):
  probs = humaneval.problems(None)[:3]
  sentinel = tmp_path / "sentinel.txt"
  sentinel.write_text("keep")
  probe = os.path.join(REPO, "eval_test_sandbox_probe.txt")
  before = sorted(os.listdir(REPO))
  vandal = (f"    open('local.txt', 'w').write('x')\n"
            f"    for f in (lambda: open({probe!r}, 'w'), lambda: os.remove({str(sentinel)!r}),\n"
            f"              lambda: __import__('shutil').rmtree({str(tmp_path)!r})):\n"
            f"        try:\n            f()\n        except Exception:\n            pass\n"
            f"    return None\n")
  comp = tmp_path / "bad.jsonl"
  _write_completions(comp, {probs[0]["task_id"]: "    return None\n",
                            probs[1]["task_id"]: "    while True:\n        pass\n",
                            probs[2]["task_id"]: "    import os\n" + vandal})
  out = tmp_path / "run"
  try:
    assert _eval("--suite", "humaneval", "--completions", comp, "--output", out,
                 "--exec-timeout", "1") == 0
  finally:
    if os.path.exists(probe):
      os.remove(probe)
      pytest.fail("the sandbox let a completion write into the repository")
  recs = {r["id"]: r for r in _lines(out)}
  assert _results(out)["scores"]["pass@1"] == 0.0
  assert recs[probs[1]["task_id"]]["result"] == "timed out"
  assert sentinel.read_text() == "keep" and sorted(os.listdir(REPO)) == before


def test_translation_metrics():
  c = translation.read_pairs_file(PAIRS, 4, None)
  refs = [b for _, b in c.pairs]
  same = translation.metrics(refs, refs)
  assert same["bleu"] == pytest.approx(100) and same["chrf"] == pytest.approx(100)
  assert same["chrf++"] == pytest.approx(100)
  shuffled = translation.metrics(refs[1:] + refs[:1], refs)
  assert shuffled["bleu"] < 10 and shuffled["chrf"] < 35


def test_mc_picks_max_likelihood_and_normalises_by_bytes():
  per_byte = {b" ab": 1.0, b" abcd": 0.7, b" x": 3.0}  # nats per byte of each choice
  seen = []

  def fake(pairs):
    seen.extend(pairs)
    return [np.full(len(x), per_byte[x]) for _, x in pairs]

  items = [{"id": "0", "context": "ctx", "choices": [" ab", " abcd", " x"], "gold": 1},
           {"id": "1", "context": "other", "choices": [" x", " ab"], "gold": 1}]
  recs = mc.choose(items, fake)
  assert seen[0] == (b"ctx", b" ab") and seen[-1] == (b"other", b" ab")
  # Sums 3.0 / 3.5 / 6.0: the raw pick is " ab"; per byte 1.0 / 0.7 / 3.0: " abcd".
  assert recs[0]["nll_nats"] == pytest.approx([3.0, 3.5, 6.0])
  assert (recs[0]["pred"], recs[0]["pred_norm"]) == (0, 1)
  assert (recs[0]["correct"], recs[0]["correct_norm"]) == (False, True)
  assert (recs[1]["pred"], recs[1]["pred_norm"]) == (1, 1)
  assert mc.score(recs, None) == {"acc": 0.5, "acc_norm": 1.0, "n": 2}


def test_scorer_matches_score_bytes(ckpts):
  cfg, params = weights.load_checkpoint(ckpts / "bltd")
  ctx, cont = b"In the beginning ", b"God created the heaven and the earth. And the earth was"
  s = Scorer(params, cfg, window=64, batch=2)
  [full] = s.nll([byte_ids(ctx + cont)])
  ref = score.score_bytes(params, cfg, ctx + cont, window=64)
  assert full.sum() == pytest.approx(ref["nll_nats"], rel=1e-4)
  [given] = s.continuation_nll([(ctx, cont)])
  assert len(given) == len(cont) and given == pytest.approx(full[len(ctx):], rel=1e-4)


GEN = ("--max-new-bytes", "8", "--batch-size", "2")


@pytest.mark.parametrize("method", ["ar", "blts", "bltd", "bltdv"])
def test_every_suite_runs_with_every_method(ckpts, tmp_path, method):
  c = ckpts / "bltd"
  runs = {
    "translation": ("--pairs", PAIRS, "--shots", "1", "--limit", "1", *GEN),
    "humaneval": ("--limit", "2", "--window", "64", *GEN),
    "mc": ("--limit", "2", "--window", "64", "--batch-size", "2"),
    "bpb": ("--data", "fixture", "--domains", "novel", "--limit", "1", "--max-doc-bytes", "100",
            "--window", "64"),
  }
  for suite, extra in runs.items():
    out = tmp_path / suite
    assert _eval("--suite", suite, "--checkpoint", c, "--method", method, "--output", out,
                 *extra) == 0, suite
    res = _results(out)
    assert res["suite"] == suite and res["method"] == method
    assert len(_lines(out)) == res["n"] == (1 if suite == "bpb" else 2)
    if suite in ("translation", "humaneval"):
      assert res["nfe"]["decoder"] > 0 and res["est_bandwidth_gb"] > 0
      assert res["bytes_per_second"] > 0 and res["wall_seconds"] > 0
      assert ({"blts": "speculation", "bltdv": "speculation", "bltd": "blocks"}.get(method)
              in (None, *res))
  tr = _results(tmp_path / "translation")
  assert set(tr["scores"]) == {"en-es", "es-en"} and set(tr["groups"]) == {"en-es", "es-en"}
  he = _results(tmp_path / "humaneval")["scores"]
  assert he["pass@1"] == 0.0 and he["canonical_bpb"] > 0
  assert 0 <= _results(tmp_path / "mc")["scores"]["acc"] <= 1
  assert _results(tmp_path / "bpb")["scores"]["novel"]["bytes"] == 100


def test_resume_finishes_without_repeating(ckpts, tmp_path):
  # The runner is the same for every suite; mc with the shapes above reuses their compilation.
  out = tmp_path / "run"
  args = ("--suite", "mc", "--checkpoint", ckpts / "bltd", "--window", "64", "--batch-size", "2",
          "--output", out)
  assert _eval(*args, "--limit", "1") == 0
  first = (out / "examples.jsonl").read_text()
  assert _eval(*args, "--limit", "3") == 2  # refuses to clobber without --resume
  with open(out / "examples.jsonl", "a") as f:
    f.write('{"id": "1", "gold": 0, "cut by a cra')  # an interrupted write
  assert _eval(*args, "--limit", "3", "--resume") == 0
  text = (out / "examples.jsonl").read_text()
  assert text.startswith(first) and [r["id"] for r in _lines(out)] == ["0", "1", "2"]
  assert _results(out)["n"] == 3
  # Different settings cannot be resumed into the same directory.
  assert _eval(*args, "--limit", "3", "--resume", "--window", "128") == 2


def test_errors_are_one_line_with_status_2(ckpts, tmp_path, capsys):
  out = str(tmp_path / "o")
  cases = [
    (["--suite", "mc", "--checkpoint", str(tmp_path / "missing")], "missing"),
    (["--suite", "mc", "--checkpoint", str(tmp_path)], str(tmp_path)),
    (["--suite", "mc", "--checkpoint", str(ckpts / "blt_cfg"), "--method", "bltd"], "bltd"),
    (["--suite", "mc", "--checkpoint", str(ckpts / "bltd"), "--mc-file", "nope.jsonl"],
     "nope.jsonl"),
    (["--suite", "translation", "--checkpoint", str(ckpts / "bltd"), "--pairs", "no.tsv"],
     "no.tsv"),
    (["--suite", "translation", "--checkpoint", str(ckpts / "bltd"), "--tfds",
      "wmt14_translate/fr-en", "--tfds-data-dir", str(tmp_path)], "wmt14_translate"),
    (["--suite", "humaneval", "--completions", "none.jsonl"], "none.jsonl"),
    (["--suite", "mc"], "--checkpoint"),
  ]
  for argv, name in cases:
    capsys.readouterr()
    assert cli.main([*argv, "--output", out, "--quiet"]) == 2, argv
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and name in err and "Traceback" not in err, (argv, err)
  for argv in (["--suite", "nope"], ["--suite", "mc", "--limit", "x"]):
    with pytest.raises(SystemExit) as e:
      cli.main([*argv, "--output", out])
    assert e.value.code == 2
    assert "\n" not in capsys.readouterr().err.strip()
  assert not os.path.exists(out)


def test_program_runner_timeout_does_not_hang():
  o = execution.run_program("while True:\n  pass\n", timeout=0.5)
  assert o == execution.Outcome(False, "timed out")
