"""Checkpoint converters: HF `BltForCausalLM` directories and Meta's official formats <-> bltjax.

CLI: `python -m bltjax.convert --from hf SRC DST`, `--from meta SRC DST [--entropy DIR]`,
`--to hf SRC DST`. The library entry points return or take `(BLTConfig, params)`; params are plain
nested dicts of arrays with the names of docs/architecture.md (see `hf.layout`). Every converter is
strict (each source tensor used once, each leaf filled, shapes checked from the headers first) and
writes its destination under a temporary name, renaming it into place only when complete.
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
from bltjax.convert.meta import config_from_official, import_meta, load_meta

__all__ = ["ConversionError", "config_from_hf", "config_from_official", "config_to_hf",
           "export_hf", "import_hf", "import_meta", "layout", "load_hf", "load_meta",
           "param_shapes", "save_hf"]
