"""Train the BLT entropy model or BLT: `python train.py --config configs/X.py --workdir DIR`.

Resumes from the latest checkpoint in DIR (a local path or a URL such as gs://bucket/run).
Several processes (multi-host / multi-process CPU): pass --num_processes, --process_id and
--coordinator_address (or JAX_COORDINATOR_ADDRESS, BLTJAX_NUM_PROCESSES, BLTJAX_PROCESS_ID), or
--distributed to let JAX detect the cluster; a TPU pod, SLURM or Open MPI job with several
processes is detected without flags (docs/multihost.md).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, metrics and the export go here")
_EXPORT_ONLY = flags.DEFINE_bool("export_only", False, "export the latest checkpoint and exit")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() (auto)")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0")
_NPROC = flags.DEFINE_integer("num_processes", None, "number of processes")
_PID = flags.DEFINE_integer("process_id", None, "this process's index")
_HEARTBEAT = flags.DEFINE_integer(
  "heartbeat_timeout", None, "seconds without a heartbeat before the other processes stop with "
  "an error when one process dies (default 100; env BLTJAX_HEARTBEAT_TIMEOUT_S)")
flags.mark_flags_as_required(["config", "workdir"])


def _fail(msg: str):
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl's parse, with a missing config file or an unknown config key as one line, exit 2."""
  path = _config_path(argv)
  if path is not None:  # config_flags defers loading it; check now, before any JAX work
    try:
      with open(path.split(":", 1)[0], "rb"):
        pass
    except OSError as e:
      _fail(f"--config {path}: {e.strerror or e}")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # bad value, unknown flag, missing required flag
    _fail(str(e).splitlines()[0])
  except (OSError, KeyError, AttributeError) as e:
    _config_error(e, argv)


def _config_path(argv) -> str | None:
  path = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
  if path is None and "--config" in argv[1:-1]:
    path = argv[argv.index("--config") + 1]
  return path


def _config_error(e: Exception, argv):
  """config_flags raises these while loading --config or applying --config.KEY=VALUE."""
  overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
  missing = str(e).strip("\"' ").split("'")[0]
  key = next((o for o in overrides if missing and missing in o.split(".")), None)
  if key is not None:
    _fail(f"{key}: no such config key")
  _fail(f"--config {_config_path(argv)}: cannot load ({str(e).strip().splitlines()[-1].strip()})")


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from bltjax import multihost  # After flag parsing: jax must not start before init.
  from bltjax.config import ConfigError
  from bltjax.training import train  # After flag parsing: jax must not start before init.
  from bltjax.weights import CheckpointError

  config = _CONFIG.value
  try:
    multihost.maybe_initialize_distributed(_COORD.value, _NPROC.value, _PID.value,
                                           _DISTRIBUTED.value, _HEARTBEAT.value)
  except ValueError as e:
    _fail(str(e))
  try:
    # One process failing must not leave the others waiting.
    with multihost.fail_fast((ConfigError, CheckpointError, multihost.NotShared)):
      if _EXPORT_ONLY.value:
        train.export_only(config, _WORKDIR.value)
      else:
        train.train_and_evaluate(config, _WORKDIR.value)
  except (ConfigError, CheckpointError, multihost.NotShared) as e:  # raised before the first step
    _fail(str(e))
  except ValueError as e:
    if "--workdir" not in str(e):
      raise
    _fail(str(e))


if __name__ == "__main__":
  from bltjax.training.train_config import renamed_flag_error

  # Before absl: it would fail on `global` (a Python keyword) with a SyntaxError trace.
  if err := renamed_flag_error(sys.argv):
    print(err, file=sys.stderr)
    sys.exit(2)
  app.run(main, flags_parser=parse_flags)
