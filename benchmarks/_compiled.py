"""A compiled program's memory and cost figures as plain dicts, shared by the benchmarks that
compile (tpu_compile.py, hash_lookup_tpu.py, loop_structure.py). No side effects on import (not
run by `make bench`: the leading underscore)."""

from __future__ import annotations


def memory(compiled) -> dict[str, int]:
  ma = compiled.memory_analysis()
  out = dict(argument=ma.argument_size_in_bytes, output=ma.output_size_in_bytes,
             alias=ma.alias_size_in_bytes, temp=ma.temp_size_in_bytes,
             generated_code=ma.generated_code_size_in_bytes)
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  # Host memory the program holds (train.offload_optimizer's moments): not part of the HBM peak.
  out["host_argument"] = getattr(ma, "host_argument_size_in_bytes", 0)
  out["host_temp"] = getattr(ma, "host_temp_size_in_bytes", 0)
  return out


def cost(compiled) -> dict[str, float]:
  ca = compiled.cost_analysis()
  if isinstance(ca, list | tuple):  # older JAX: one dict per program
    ca = ca[0] if ca else {}
  ca = ca or {}
  out = dict(flops=float(ca.get("flops", 0.0)),
             bytes_accessed=float(ca.get("bytes accessed", 0.0)))
  opt = float(ca.get("optimal_seconds", -1.0))
  out["optimal_seconds"] = opt if opt > 0 else None  # negative = not valid (loops)
  return out
