"""One declaration of the decoding methods and their options (bltjax/decoding/options.py) feeds
`generation`, decode.py and `python -m bltjax.eval`."""

import dataclasses

import pytest

from bltjax.decoding import decode, generation, options
from bltjax.eval import __main__ as eval_main


def test_method_names_are_the_registry():
  assert tuple(generation.METHODS) == options.METHODS


def test_both_command_lines_build_the_same_options():
  flags = ["--method", "bltd", "--rule", "one_step", "--alpha", "0.4", "--gamma", "2",
           "--eb-rule", "cumulative", "--block-latent", "force_boundary", "--temperature",
           "0.5", "--top-k", "7", "--top-p", "0.9", "--draft-k", "4", "--draft-tau", "0.1"]
  a = decode.parse_args(["--checkpoint", "c", "--input", "i", "--output", "o", *flags])
  b = eval_main.parser().parse_args(["--suite", "bpb", "--output", "o", *flags])
  want = options.Options(draft_k=4, draft_tau=0.1, rule="one_step", alpha=0.4, gamma=2.0,
                         eb_rule="cumulative", block_latent="force_boundary", temperature=0.5,
                         top_k=7, top_p=0.9)
  assert options.from_args(a) == options.from_args(b) == want
  assert options.from_args(decode.parse_args(["--checkpoint", "c", "--input", "i",
                                              "--output", "o"])) == options.Options()
  # every Options field has a flag
  assert {f.name for f in dataclasses.fields(options.Options)} <= set(vars(a))


@pytest.mark.parametrize("flags,msg", [
  (["--method", "blts", "--draft-k", "0"], "--draft-k must be positive"),
  (["--method", "ar", "--block-latent", "force_boundary"], "--block-latent"),
  (["--temperature", "-1"], "--temperature must be >= 0"),
])
def test_bad_flag_combinations_name_the_flag(flags, msg, capsys):
  with pytest.raises(SystemExit) as e:
    decode.parse_args(["--checkpoint", "c", "--input", "i", "--output", "o", *flags])
  assert e.value.code == 2 and msg in capsys.readouterr().err
  assert eval_main.main(["--suite", "bpb", "--output", "o", "--checkpoint", "c", *flags]) == 2
  assert msg in capsys.readouterr().err


def test_no_caller_switches_on_a_method_name():
  """The report, the option checks and the reproduction's decoding runs read the method records
  (`options.INFO`), never a name: a method's labels, defaults, sweeps and figure roles live in
  its record."""
  from pathlib import Path

  from bltjax import report, reproduce
  for mod in (report, options, reproduce):
    src = Path(mod.__file__).read_text()
    if mod is options:  # its functions, past the records and the --method flag's default
      body = src[src.index("def info("):src.index("def add_args(")] + src[src.index(
        "def check_args("):]
    elif mod is reproduce:  # its samples and evaluation plan (its training stages are bltd-Z)
      body = src[src.index("def stage_samples("):src.index("def stage_eval(")]
    else:
      body = src
    for name in options.METHODS:
      assert f'"{name}"' not in body and f"'{name}'" not in body, (mod.__name__, name)
  assert options.check("ar", options.Options(block_latent="force_boundary")) == (
    "block_latent", "force_boundary applies to bltd only")
  assert options.check("blts", options.Options(draft_k=0))[0] == "draft_k"
  assert options.check("ar", options.Options(draft_k=0)) is None  # ar takes no draft window
