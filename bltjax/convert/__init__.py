"""Checkpoint converters: HF `BltForCausalLM` directories and Meta's official formats <-> bltjax.

CLI: `python -m bltjax.convert --from hf SRC DST`, `--from meta SRC DST [--entropy DIR]`,
`--to hf SRC DST`. The library entry points return or take `(BLTConfig, params)`; params are plain
nested dicts of arrays with the names of `blt.md` §7.2 (see `hf.layout`).
"""

from bltjax.convert.hf import (
  ConversionError,
  config_from_hf,
  config_to_hf,
  export_hf,
  import_hf,
  layout,
  load_hf,
  param_shapes,
  save_hf,
)

__all__ = ["ConversionError", "config_from_hf", "config_to_hf", "export_hf", "import_hf",
           "layout", "load_hf", "param_shapes", "save_hf"]
