"""Every entry point: a missing file, a directory that is not a checkpoint or a bad config key is
one line on stderr naming it, exit status 2, no traceback. (bltjax.convert: convert_hub_test.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bltjax import reproduce, score
from bltjax.decoding import decode

REPO = Path(__file__).resolve().parents[1]


def _one_line(err: str, needle: str) -> None:
  lines = err.strip().splitlines()
  assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


@pytest.fixture
def prompts(tmp_path):
  p = tmp_path / "in.jsonl"
  p.write_text('{"id": 1, "prompt": "a"}\n')
  return p


@pytest.mark.parametrize("which", ["missing", "not_checkpoint"])
def test_decode_checkpoint(which, tmp_path, prompts, capsys):
  ckpt = tmp_path / "nope" if which == "missing" else tmp_path
  out = tmp_path / "out.jsonl"
  assert decode.main(["--checkpoint", str(ckpt), "--input", str(prompts), "--output",
                      str(out)]) == 2
  _one_line(capsys.readouterr().err, str(ckpt))
  assert not out.exists()


def test_decode_missing_input(tmp_path, capsys):
  missing = tmp_path / "missing.jsonl"
  assert decode.main(["--checkpoint", str(tmp_path), "--input", str(missing), "--output",
                      str(tmp_path / "o.jsonl")]) == 2
  _one_line(capsys.readouterr().err, str(missing))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
  from bltjax import weights
  from tests.model_fixtures import tiny_config, tiny_params

  cfg = tiny_config()
  return weights.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt", tiny_params(cfg), cfg)


@pytest.mark.parametrize("mesh,needle", [
  ("tensor=3", "--mesh: product of {'data': 1, 'fsdp': 1, 'tensor': 3} is 3, but there are 8 "
               "devices"),
  ("tensor=2,model=4", "--mesh: unknown mesh axis 'model'"),
  ("1,2", "--mesh: needs 3 sizes"),
  ("tensor=four", "--mesh: expected sizes like 1,1,-1 or tensor=4"),
])
def test_decode_bad_mesh(mesh, needle, tmp_path, prompts, tiny_ckpt, capsys):
  ckpt = tiny_ckpt
  out = tmp_path / "out.jsonl"
  assert decode.main(["--checkpoint", str(ckpt), "--input", str(prompts), "--output", str(out),
                      "--mesh", mesh]) == 2
  _one_line(capsys.readouterr().err, needle)
  assert not out.exists()
  with pytest.raises(SystemExit) as e:  # one model across processes needs a mesh to split it
    decode.parse_args(["--checkpoint", str(ckpt), "--input", str(prompts), "--output", str(out),
                       "--mesh-over", "all"])
  assert e.value.code == 2 and "--mesh-over all needs --mesh" in capsys.readouterr().err


def test_score(tmp_path, prompts, capsys):
  assert score.main(["--checkpoint", str(tmp_path / "nope"), "--file", str(prompts)]) == 2
  _one_line(capsys.readouterr().err, str(tmp_path / "nope"))
  assert score.main(["--checkpoint", str(tmp_path), "--file", str(tmp_path / "none.txt")]) == 2
  _one_line(capsys.readouterr().err, str(tmp_path / "none.txt"))
  assert score.main(["--checkpoint", str(tmp_path), "--file", str(prompts)]) == 2
  _one_line(capsys.readouterr().err, str(tmp_path))


def _train(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=120)


@pytest.mark.parametrize("args,needle", [
  (["--config", "configs/nonexistent.py"], "configs/nonexistent.py"),
  (["--config", "configs/blt_tiny.py", "--config.train.no_such_key=3"],
   "--config.train.no_such_key"),
  (["--config", "configs/blt_tiny.py", "--config.train.steps=abc"], "train.steps"),
])
def test_train_flags(args, needle, tmp_path):
  p = _train(*args, "--workdir", str(tmp_path / "w"))
  assert p.returncode == 2
  _one_line(p.stderr, needle)


def test_train_bad_value_and_missing_entropy_checkpoint(tmp_path):
  p = _train("--config", "configs/blt_tiny.py", "--workdir", str(tmp_path / "w"),
             "--config.train.steps=-3", f"--config.train.entropy_checkpoint={tmp_path / 'e'}")
  assert p.returncode == 2
  _one_line(p.stderr, "train.steps")
  p = _train("--config", "configs/blt_tiny.py", "--workdir", str(tmp_path / "w"),
             f"--config.train.entropy_checkpoint={tmp_path / 'e'}")
  assert p.returncode == 2
  _one_line(p.stderr, str(tmp_path / "e"))


def test_reproduce_errors(tmp_path, capsys):
  w = str(tmp_path / "w")
  assert reproduce.main(["--scale", "tiny", "--workdir", w, "--limit", "nosuite=3"]) == 2
  _one_line(capsys.readouterr().err, "nosuite")
  assert reproduce.main(["--scale", "1b", "--workdir", w, "--dry-run", "--blt-weights",
                         str(tmp_path / "nope")]) == 2
  _one_line(capsys.readouterr().err, str(tmp_path / "nope"))
  with pytest.raises(SystemExit) as e:
    reproduce.main(["--scale", "huge", "--workdir", w])
  assert e.value.code == 2
  _one_line(capsys.readouterr().err, "huge")
