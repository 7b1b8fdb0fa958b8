"""Shared pytest setup: 8 fake CPU devices, fast compilation and strict numerics, set before JAX is
imported."""

import os

# Must run before anything imports jax: the backend reads these once at initialisation.
# Unoptimised LLVM code generation: the suite's time is mostly compiling small programs that run
# a few times (about a third less CPU time); subprocesses the tests start inherit the flags.
_flags = os.environ.get("XLA_FLAGS", "")
for _flag in ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0"):
  if _flag.split("=")[0] not in _flags:
    _flags += " " + _flag
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops each test module's compiled programs when it ends: XLA:CPU maps memory for every
  executable, and one process running the whole suite otherwise approaches the kernel's
  vm.max_map_count (65,530 by default), where compilation crashes."""
  yield
  jax.clear_caches()
