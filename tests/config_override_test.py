"""Every key of every `configs/*.py` can be set with `--config.<path>=<value>` (issue 12).

Overrides go through ml_collections' `config_flags` exactly as in `train.py` (a locked config
file flag); nothing is trained. Also: the global stack's old name `global` still loads (configs,
checkpoints) and gives a one-line error as a flag.
"""

import json
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest
import tiny_train_config
from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import config_path
from model_fixtures import tiny_config

from bltjax import weights
from bltjax.config import GLOBAL_KEY, BLTConfig, ConfigError
from bltjax.training.train_config import renamed_flag_error, resolve

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(ROOT.glob("configs/*.py"))


def parse(config_file: Path, *overrides: str) -> ml_collections.ConfigDict:
  """The config `train.py --config FILE *overrides` would get."""
  argv = ["train.py", f"--config={config_file}", *overrides]
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True,
                                           sys_argv=argv)
  fv(argv)
  return holder.value


def leaves(c: ml_collections.ConfigDict, prefix: str = ""):
  for key in c.keys():
    value, path = c[key], f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      yield from leaves(value, path + ".")
    else:
      yield path, c.get_type(key), value


def new_value(kind: type, value):
  """A value unlike `value` for a key of type `kind`, and its command-line spelling."""
  if kind is bool:
    return (not value), str(not value).lower()
  if kind is int:
    return (value or 0) + 3, str((value or 0) + 3)
  if kind is float:
    new = 0.375 if value != 0.375 else 0.625
    return new, repr(new)
  if kind is str:
    return "over_ridden", "over_ridden"
  if kind is tuple:
    new = tuple(value) + tuple(value[:1]) if value else (1,)
    return new, repr(new)
  if kind is list:
    return ["a.txt", "b/*.md"], "['a.txt', 'b/*.md']"
  if kind is dict:
    return {"web": 2.0}, "{'web': 2.0}"
  if kind is ml_collections.ConfigDict:
    return {"dim": 64}, "{'dim': 64}"
  raise AssertionError(f"type {kind} has no command-line spelling")


@pytest.mark.parametrize("config_file", CONFIGS, ids=lambda p: p.stem)
def test_every_leaf_can_be_overridden(config_file):
  base = parse(config_file)
  found = list(leaves(base))
  assert len(found) > 50 and any(p.startswith(f"model.{GLOBAL_KEY}.") for p, _, _ in found)
  for path, kind, value in found:
    assert kind is not type(None), f"{path}: untyped None (use a typed placeholder)"
    want, spelled = new_value(kind, value)
    got = config_path.get_value(path, parse(config_file, f"--config.{path}={spelled}"))
    if isinstance(got, ml_collections.ConfigDict):
      got = got.to_dict()
    assert got == want and type(got) is type(want), f"--config.{path}={spelled}: got {got!r}"


def test_optional_keys_take_none_and_data_lists_take_literals():
  c = parse(ROOT / "configs/blt_tiny.py", "--config.model.patcher.max_patch_length=None",
            "--config.model.diffusion.block_prefix_window=None", "--config.data.files=x/*.txt",
            "--config.data.weights={'web': 1.0, 'code': 0.5}")
  assert c.model.patcher.max_patch_length is None and c.model.diffusion.block_prefix_window is None
  assert c.data.files == ["x/*.txt"] and c.data.weights == {"web": 1.0, "code": 0.5}
  with pytest.raises(flags.IllegalFlagValueError):
    parse(ROOT / "configs/blt_tiny.py", "--config.data.weights=[1]")


def test_global_model_override_reaches_the_model():
  c = parse(ROOT / "configs/blt_tiny.py", "--config.model.global_model.dim=256",
            "--config.model.global_model.n_layers=3", "--config.train.entropy_checkpoint=x")
  g = resolve(c, 1).model.global_
  assert (g.dim, g.n_layers, g.name) == (256, 3, GLOBAL_KEY)


def test_old_flag_name_is_a_one_line_error():
  assert renamed_flag_error(["t", "--config.model.global_model.dim=8"]) is None
  assert renamed_flag_error(["t", "--config.model.globals=8"]) is None
  assert renamed_flag_error(["t", "--config.model.global.dim=1024"]) == (
    "error: --config.model.global.dim: the section is now 'global_model' "
    "(--config.model.global_model.dim)")
  assert "(-config.model.global_model)" in renamed_flag_error(["t", "-config.model.global", "x"])
  r = subprocess.run([sys.executable, "train.py", "--config", "configs/blt_tiny.py", "--workdir",
                      "unused", "--config.model.global.dim=1024"], cwd=ROOT, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 2 and r.stdout == ""
  assert r.stderr == ("error: --config.model.global.dim: the section is now 'global_model' "
                      "(--config.model.global_model.dim)\n")


def test_old_config_file_spelling_still_resolves():
  new = tiny_train_config.get_config("blt")
  old = tiny_train_config.get_config("blt")
  del old.model[GLOBAL_KEY]
  old.model["global"] = new.model[GLOBAL_KEY]  # the spelling of config files before the rename
  assert resolve(old, 1).model == resolve(new, 1).model
  old.model[GLOBAL_KEY] = new.model[GLOBAL_KEY]
  with pytest.raises(ConfigError, match=r"^model.global_model: given twice"):
    resolve(old, 1)


def test_checkpoint_config_with_old_key_loads(tmp_path):
  cfg = tiny_config()
  doc = cfg.to_dict()
  assert GLOBAL_KEY in doc and "global" not in doc  # written with the new name
  doc["global"] = doc.pop(GLOBAL_KEY)
  doc["global"]["name"] = "global"  # as checkpoints from before the rename stored it
  doc.update(format_version=weights.FORMAT_VERSION, converter_version=weights.CONVERTER_VERSION,
             source={"format": "test"}, meta={})
  (tmp_path / weights.CONFIG_FILE).write_text(json.dumps(doc))
  loaded = weights.load_config(tmp_path)
  assert loaded.global_.name == "global"
  assert loaded.replace(global_=cfg.global_) == cfg and loaded.global_.dim == cfg.global_.dim
  assert BLTConfig.from_dict(cfg.to_dict()) == cfg
