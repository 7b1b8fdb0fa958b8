"""Train the BLT entropy model or BLT: `python train.py --config configs/X.py --workdir DIR`.

Resumes from the latest checkpoint in DIR. Several processes (multi-host / multi-process CPU):
pass --num_processes, --process_id and --coordinator_address (or JAX_COORDINATOR_ADDRESS,
BLTJAX_NUM_PROCESSES, BLTJAX_PROCESS_ID), or --distributed to let JAX detect the cluster.
"""

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, metrics and the export go here")
_EXPORT_ONLY = flags.DEFINE_bool("export_only", False, "export the latest checkpoint and exit")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() (auto)")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0")
_NPROC = flags.DEFINE_integer("num_processes", None, "number of processes")
_PID = flags.DEFINE_integer("process_id", None, "this process's index")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from bltjax import train  # After flag parsing: importing jax must not precede distributed init.

  train.maybe_initialize_distributed(_COORD.value, _NPROC.value, _PID.value, _DISTRIBUTED.value)
  if _EXPORT_ONLY.value:
    train.export_only(_CONFIG.value, _WORKDIR.value)
  else:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  import sys

  from bltjax.train_config import renamed_flag_error

  # Before absl: it would fail on `global` (a Python keyword) with a SyntaxError trace.
  if err := renamed_flag_error(sys.argv):
    print(err, file=sys.stderr)
    sys.exit(2)
  app.run(main)
