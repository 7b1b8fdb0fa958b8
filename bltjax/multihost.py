"""Several processes (hosts): start-up, barriers, and the check that they share a directory.

Start-up (`maybe_initialize_distributed`), in order of precedence:

1. explicit arguments (`--coordinator_address`, `--num_processes`, `--process_id`), then the
   environment variables `JAX_COORDINATOR_ADDRESS`, `BLTJAX_NUM_PROCESSES`, `BLTJAX_PROCESS_ID`;
   `num_processes=1` means one process and no `jax.distributed` at all;
2. `--distributed`: `jax.distributed.initialize()` detects the cluster itself;
3. otherwise a cluster environment that says there are several processes (`detect_cluster`):
   a multi-host TPU slice (`TPU_WORKER_HOSTNAMES` with several hosts, or Megascale), SLURM
   (`SLURM_NTASKS` > 1 inside a job), Open MPI (`OMPI_COMM_WORLD_SIZE` > 1). JAX's own cluster
   detection then fills in the coordinator, the process count and the index.

A single-host TPU VM, a GPU box or Colab needs none of this: one process sees all its devices.

Failure: a process that dies stops sending heartbeats; after `heartbeat_timeout_s` the coordination
service tells the others, which exit with an error instead of waiting in a collective forever.
"""

from __future__ import annotations

import inspect
import os
import sys
import uuid
from collections.abc import Callable

from bltjax import paths

DEFAULT_HEARTBEAT_S = 100  # JAX's default; BLTJAX_HEARTBEAT_TIMEOUT_S overrides it


def detect_cluster(env: dict[str, str] | None = None) -> str | None:
  """The kind of multi-process cluster the environment describes, or None (one process)."""
  env = os.environ if env is None else env

  def count(key: str) -> int:
    try:
      return int(env.get(key, "1").split("(")[0])  # SLURM writes e.g. "2(x3)" for some counts
    except ValueError:
      return 1

  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if len(hosts) > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "tpu"
  if env.get("SLURM_JOB_ID") and max(count("SLURM_STEP_NUM_TASKS"), count("SLURM_NTASKS")) > 1:
    return "slurm"
  if count("OMPI_COMM_WORLD_SIZE") > 1:
    return "mpi"
  return None


def _initialize(heartbeat_s: int | None, **kwargs) -> None:
  import jax

  params = inspect.signature(jax.distributed.initialize).parameters
  if heartbeat_s is None:
    heartbeat_s = int(os.environ.get("BLTJAX_HEARTBEAT_TIMEOUT_S", DEFAULT_HEARTBEAT_S))
  if "heartbeat_timeout_seconds" in params:  # guarded: not every JAX release has it
    kwargs["heartbeat_timeout_seconds"] = heartbeat_s
  if "initialization_timeout" in params and os.environ.get("BLTJAX_INIT_TIMEOUT_S"):
    kwargs["initialization_timeout"] = int(os.environ["BLTJAX_INIT_TIMEOUT_S"])
  jax.distributed.initialize(**kwargs)


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None, auto: bool = False,
                                 heartbeat_s: int | None = None) -> str | None:
  """`jax.distributed.initialize` when this is one of several processes (see the module doc).

  Returns:
    How it started: "explicit", "auto" (--distributed), a `detect_cluster` kind, or None.
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and os.environ.get("BLTJAX_NUM_PROCESSES"):
    num_processes = int(os.environ["BLTJAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("BLTJAX_PROCESS_ID"):
    process_id = int(os.environ["BLTJAX_PROCESS_ID"])
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"--num_processes must be >= 1, got {num_processes}")
  if num_processes is not None and num_processes > 1:
    if process_id is None or not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id must be in [0, {num_processes}) with --num_processes "
                       f"{num_processes}, got {process_id}")
    if not coordinator_address:
      raise ValueError("--coordinator_address (or JAX_COORDINATOR_ADDRESS) is needed with "
                       f"--num_processes {num_processes}")
    _initialize(heartbeat_s, coordinator_address=coordinator_address,
                num_processes=num_processes, process_id=process_id)
    return "explicit"
  if num_processes == 1:
    return None
  if auto:
    _initialize(heartbeat_s)
    return "auto"
  kind = detect_cluster()
  if kind is not None:
    _initialize(heartbeat_s)
  return kind


def process_line(prefix: str = "[bltjax]") -> str:
  """'process i/n: local devices a/b (platform)': every process logs it at start."""
  import jax

  return (f"{prefix} process {jax.process_index()}/{jax.process_count()}: "
          f"{jax.local_device_count()} of {jax.device_count()} devices "
          f"({jax.devices()[0].platform})")


def log_process(prefix: str = "[bltjax]", stream=None) -> None:
  print(process_line(prefix), file=stream or sys.stderr, flush=True)


def barrier(name: str) -> None:
  """All processes wait here (a no-op with one process)."""
  import jax

  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def all_true(flag: bool) -> list[bool]:
  """Every process's `flag` (in process order); [flag] with one process."""
  import jax
  import numpy as np

  if jax.process_count() == 1:
    return [bool(flag)]
  from jax.experimental import multihost_utils

  got = multihost_utils.process_allgather(np.int32(bool(flag)))
  return [bool(x) for x in np.asarray(got).reshape(-1)]


def shared_token() -> str:
  """A random hex string that process 0 draws and every process receives."""
  import jax
  import numpy as np

  raw = np.frombuffer(uuid.uuid4().bytes[:8], np.int32).copy()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    raw = np.asarray(multihost_utils.broadcast_one_to_all(raw))
  return raw.astype(np.uint32).tobytes().hex()


class NotShared(RuntimeError):
  """The processes of one run do not see the same directory."""


def check_shared_dir(directory: paths.PathLike, what: str = "workdir",
                     log: Callable[[str], None] | None = None) -> None:
  """Raises `NotShared` on every process unless all of them see `directory` as one directory.

  Process 0 writes a token file into it; after a barrier every process looks for that file. A
  local path on several hosts (each host its own disk) fails here, at start, instead of later
  with checkpoints scattered over the hosts.
  """
  import jax

  if jax.process_count() == 1:
    return
  directory = paths.as_path(directory, what)
  token = directory / f".bltjax-shared-{shared_token()}"
  if jax.process_index() == 0:
    directory.mkdir(parents=True, exist_ok=True)
    token.write_text(str(jax.process_count()))
  barrier(f"bltjax-shared-write-{token.name}")
  seen = all_true(token.exists())
  barrier(f"bltjax-shared-read-{token.name}")
  if jax.process_index() == 0:
    token.unlink()
  if not all(seen):
    missing = [i for i, s in enumerate(seen) if not s]
    raise NotShared(f"{what} {directory} is not shared: processes {missing} do not see the file "
                    f"process 0 wrote there; give every process the same directory (a shared "
                    f"file system or a gs:// URL)")
  if log is not None:
    log(f"{what} {directory} is shared by all {jax.process_count()} processes")
