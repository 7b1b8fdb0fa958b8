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

import contextlib
import inspect
import os
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator

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


def _client():
  """JAX's coordination-service client (None with one process)."""
  from jax._src import distributed  # no public handle on the client in JAX 0.10-0.12

  return getattr(distributed.global_state, "client", None)


_COUNTER = [0]  # rounds of this process; the same sequence on every process names each round


def _timeout_ms() -> int:
  # Long: process 0 may be building the data set or writing an export meanwhile. A dead process
  # ends the wait much sooner, through the heartbeat (module doc).
  return int(float(os.environ.get("BLTJAX_BARRIER_TIMEOUT_S", "3600")) * 1000)


def barrier(name: str) -> None:
  """All processes wait here (a no-op with one process).

  Uses the coordination service, not a device collective: XLA:CPU's gloo gives up after 30 s
  when one process reaches a collective later than another (e.g. while process 0 builds data).
  """
  import jax

  if jax.process_count() == 1:
    return
  client = _client()
  if client is None:  # pragma: no cover - a multi-process backend without jax.distributed
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
    return
  _COUNTER[0] += 1  # a barrier id is used once; every process counts the same sequence
  client.wait_at_barrier(f"bltjax/{name}/{_COUNTER[0]}", _timeout_ms())


def _gather(name: str, value: str) -> list[str]:
  """Every process's `value` (in process order), through the coordination service's store."""
  import jax

  client, i, n = _client(), jax.process_index(), jax.process_count()
  client.key_value_set(f"bltjax/{name}/{i}", value)
  return [client.blocking_key_value_get(f"bltjax/{name}/{j}", _timeout_ms()) for j in range(n)]


def all_true(flag: bool, name: str = "all_true") -> list[bool]:
  """Every process's `flag` (in process order); [flag] with one process."""
  import jax

  if jax.process_count() == 1:
    return [bool(flag)]
  _COUNTER[0] += 1
  return [v == "1" for v in _gather(f"{name}/{_COUNTER[0]}", "1" if flag else "0")]


def shared_token() -> str:
  """A random hex string that process 0 draws and every process receives."""
  import jax

  token = uuid.uuid4().hex[:16]
  if jax.process_count() == 1:
    return token
  _COUNTER[0] += 1
  key = f"bltjax/token/{_COUNTER[0]}"
  client = _client()
  if jax.process_index() == 0:
    client.key_value_set(key, token)
    return token
  return client.blocking_key_value_get(key, _timeout_ms())


def first_call_barrier(fn: Callable, name: str) -> Callable:
  """`fn` (a jitted function), compiled ahead of its first call, then a barrier, then run.

  With several processes, the first run of a program with cross-process collectives sets up a
  gloo context, which fails when the processes arrive more than 30 s apart; compiling times
  differ between processes (a loaded machine, a compilation-cache hit on one only). The barrier
  lines them up after compiling. One process: `fn` itself.
  """
  import jax

  if jax.process_count() == 1:
    return fn
  compiled = None

  def call(*args):
    nonlocal compiled
    if compiled is None:
      compiled = fn.lower(*args).compile()
      barrier(f"compiled/{name}")
    return compiled(*args)

  return call


def run_in_lockstep(fn: Callable, name: str, dynamic: dict, static: dict):
  """`fn(**dynamic, **static)` for a jitted `fn` over devices of several processes: compiled
  ahead (AOT compilations are cached, so a later call with the same shapes only waits), then a
  barrier, then run. Same reason as `first_call_barrier`: gloo gives up when the processes reach
  a program's collectives more than 30 s apart, and compile times differ between processes."""
  compiled = fn.lower(**dynamic, **static).compile()
  barrier(f"compiled/{name}")
  return compiled(**dynamic)


@contextlib.contextmanager
def fail_fast(expected: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
  """An exception in one of several processes ends that process at once (exit 1).

  `expected` exceptions (errors every process meets alike, such as a bad config) pass through
  to the caller's one-line error.

  A normal exit waits at `jax.distributed`'s shutdown barrier for every process, while the others
  wait for this one in a barrier or a collective: both would sit there for minutes. Ending with
  `os._exit` stops the heartbeats instead, and the others stop after the heartbeat timeout.
  """
  try:
    yield
  except (SystemExit, *expected):
    raise
  except BaseException:
    if "jax" in sys.modules:
      import jax

      if jax.process_count() > 1:
        traceback.print_exc()
        print(f"error: process {jax.process_index()} failed (above); ending it now, the other "
              "processes stop when its heartbeats stop", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    raise


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
  barrier(f"shared-write-{token.name}")
  seen = all_true(token.exists(), "shared")
  if jax.process_index() == 0:
    token.unlink()
  if not all(seen):
    missing = [i for i, s in enumerate(seen) if not s]
    raise NotShared(f"{what} {directory} is not shared: processes {missing} do not see the file "
                    f"process 0 wrote there; give every process the same directory (a shared "
                    f"file system or a gs:// URL)")
  if log is not None:
    log(f"{what} {directory} is shared by all {jax.process_count()} processes")
