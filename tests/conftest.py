"""Shared pytest setup: 8 fake CPU devices and strict numerics, set before JAX is imported."""

import os

# Must run before anything imports jax: the backend reads these once at initialisation.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_numpy_rank_promotion", "raise")
