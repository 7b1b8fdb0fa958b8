"""One device mesh (data, fsdp, tensor) and the logical-axis rules that place arrays on it.

Parameters and activations carry *logical* axis names (`model.logical_axes`); a single
`ShardingRules` table maps each name to mesh axes (docs/architecture.md, sharding).
`logical_to_sharding` turns a tree of logical `PartitionSpec`s into `NamedSharding`s, checking
that no mesh axis appears twice in one spec. Given shapes, it also fits each spec to its array: a
dimension that a mesh axis does not divide (the 500002-row hash tables on 8 devices) hands that
axis to another, divisible dimension of the same array (the table's width), else leaves it
replicated there. jit out/in shardings must divide evenly, so this is what makes released
geometries shardable on any mesh.

Parameters are created sharded from birth by `model.init_sharded` (`jax.eval_shape(init)` ->
shardings -> `jax.jit(init, out_shardings=...)`); no host ever holds a full copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bltjax.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = str | tuple[str, ...] | None


@dataclasses.dataclass(frozen=True)
class ShardingRules:
  """Logical axis name -> mesh axes (a name, a tuple of names, or None = replicated)."""

  batch: MeshAxes = ("data", "fsdp")  # training rows (`batch_sharding`)
  embed: MeshAxes = "fsdp"
  # Local models (encoder, decoder, entropy model) too: replicated, their params, Adam moments
  # and grads cost 2.6 GiB per device at 1B (docs/benchmarks.md, training memory).
  embed_local: MeshAxes = "fsdp"
  embed_cross: MeshAxes = "tensor"  # k·D projections: split like an FFN width
  heads: MeshAxes = "tensor"
  kv_heads: MeshAxes = "tensor"
  head_dim: MeshAxes = None
  mlp: MeshAxes = "tensor"
  vocab: MeshAxes = None
  hash_tables: MeshAxes = None
  hash_vocab: MeshAxes = ("fsdp", "tensor")  # the largest tensors; lookups only
  cache_batch: MeshAxes = ("data", "fsdp")  # decoding state rows (`engine.state_logical_axes`)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any] | None) -> ShardingRules:
    """Overrides from a config section (`mesh.rules`); unknown names fail with their key."""
    if not d:
      return cls()
    known = {f.name for f in dataclasses.fields(cls)}
    kw = {}
    for name, axes in dict(d).items():
      if name not in known:
        raise ConfigError(f"mesh.rules.{name}: unknown logical axis (known: {sorted(known)})")
      if isinstance(axes, list):
        axes = tuple(axes)
      for a in _as_tuple(axes):
        if a not in MESH_AXES:
          raise ConfigError(f"mesh.rules.{name}: unknown mesh axis {a!r} (mesh: {MESH_AXES})")
      kw[name] = axes
    return cls(**kw)

  def mesh_axes(self, logical: str | tuple[str, ...] | None) -> tuple[str, ...]:
    """The mesh axes of a logical axis; a tuple names a merged dimension (major first)."""
    if logical is None:
      return ()
    if isinstance(logical, tuple):
      return tuple(a for name in logical for a in self.mesh_axes(name))
    if not hasattr(self, logical):
      raise KeyError(f"no sharding rule for logical axis {logical!r}")
    return _as_tuple(getattr(self, logical))


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
  if axes is None:
    return ()
  if isinstance(axes, str):
    return (axes,)
  return tuple(axes)


# ------------------------------------------------------------------------------------------------
# Mesh.


def resolve_mesh_shape(shape: Sequence[int], n_devices: int, key: str = "mesh.shape"
                       ) -> tuple[int, int, int]:
  """Fills one -1 entry so the product equals `n_devices`; errors name the config key."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(MESH_AXES):
    raise ConfigError(f"{key}: needs {len(MESH_AXES)} sizes {MESH_AXES}, got {shape}")
  if shape.count(-1) > 1:
    raise ConfigError(f"{key}: at most one axis may be -1 (fill), got {shape}")
  if any(s == 0 or s < -1 for s in shape):
    raise ConfigError(f"{key}: sizes must be positive or -1, got {shape}")
  fixed = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if n_devices % fixed:
      raise ConfigError(f"{key}: {shape} cannot fill {n_devices} devices "
                        f"({n_devices} is not divisible by {fixed})")
    shape = tuple(n_devices // fixed if s == -1 else s for s in shape)
  if math.prod(shape) != n_devices:
    raise ConfigError(f"{key}: product of {dict(zip(MESH_AXES, shape))} is {math.prod(shape)}, "
                      f"but there are {n_devices} devices")
  return shape  # type: ignore[return-value]


def parse_mesh_arg(text: str, key: str = "--mesh") -> tuple[int, ...]:
  """A mesh shape from the command line: sizes in (data, fsdp, tensor) order ("1,1,-1") or named
  sizes ("tensor=4", "fsdp=2,tensor=-1"; unnamed axes are 1). Sizes are checked later against
  the device count (`resolve_mesh_shape`)."""
  parts = [x.strip() for x in text.split(",") if x.strip()]

  def size(x: str) -> int:
    try:
      return int(x)
    except ValueError:
      raise ConfigError(f"{key}: expected sizes like 1,1,-1 or tensor=4, got {text!r}") from None

  if not parts or not all("=" in x for x in parts):
    return tuple(size(x) for x in parts)
  named: dict[str, int] = {}
  for x in parts:
    name, value = (y.strip() for y in x.split("=", 1))
    if name not in MESH_AXES:
      raise ConfigError(f"{key}: unknown mesh axis {name!r} in {text!r} (axes: {MESH_AXES})")
    if name in named:
      raise ConfigError(f"{key}: mesh axis {name!r} given twice in {text!r}")
    named[name] = size(value)
  return tuple(named.get(a, 1) for a in MESH_AXES)


def make_mesh(shape: Sequence[int] = (1, -1, 1), devices: Sequence[Any] | None = None,
              key: str = "mesh.shape") -> Mesh:
  """The (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes)."""
  n = len(devices) if devices is not None else jax.device_count()
  shape = resolve_mesh_shape(shape, n, key)
  kw = {} if devices is None else {"devices": devices}
  # Auto axes (not the 0.9+ Explicit default): BLT's pooling/gathers would need annotations
  # everywhere in Explicit mode; XLA propagates from the input/param shardings instead.
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), **kw)


@contextlib.contextmanager
def use_mesh(mesh: Mesh) -> Iterator[Mesh]:
  """Context manager making `mesh` current: `jax.set_mesh` (>= 0.7) or the older `use_mesh`."""
  if hasattr(jax, "set_mesh"):
    with jax.set_mesh(mesh):
      yield mesh
  else:  # pragma: no cover - older JAX
    with jax.sharding.use_mesh(mesh):
      yield mesh


def data_axes_size(mesh: Mesh, rules: ShardingRules = ShardingRules()) -> int:
  """How many ways the batch dimension is split."""
  return math.prod(mesh.shape[a] for a in rules.mesh_axes("batch"))


# ------------------------------------------------------------------------------------------------
# Logical -> physical.


def logical_to_physical(spec: P, rules: ShardingRules, shape: Sequence[int] | None = None,
                        mesh: Mesh | None = None) -> P:
  """Maps one logical `PartitionSpec` to mesh axes.

  Args:
    spec: logical names per dimension (None = replicated).
    rules: the rules table.
    shape: the array's shape; with `mesh`, mesh axes that do not divide their dimension move to
      another dimension they divide (largest first), else are dropped (replicated).
    mesh: needed with `shape` for the axis sizes.

  Returns:
    A physical `PartitionSpec` (built with `P(...)`; tuples no longer compare equal to it).

  Raises:
    ValueError: a mesh axis would appear twice in the spec.
  """
  dims = [list(rules.mesh_axes(name)) for name in spec]
  used = [a for d in dims for a in d]
  dup = sorted({a for a in used if used.count(a) > 1})
  if dup:
    raise ValueError(f"sharding rules map {spec} onto mesh axes {dup} more than once")
  if shape is not None and mesh is not None:
    if len(shape) != len(dims):
      raise ValueError(f"spec {spec} has {len(dims)} dims, array shape is {tuple(shape)}")
    spare = []
    for i, d in enumerate(dims):
      kept = []
      for a in d:
        if shape[i] % (math.prod(mesh.shape[b] for b in kept) * mesh.shape[a]) == 0:
          kept.append(a)
        else:
          spare.append(a)
      dims[i] = kept
    # Re-home the axes a dimension could not take, onto the largest dims that still divide.
    for a in spare:
      for i in sorted(range(len(dims)), key=lambda j: -shape[j]):
        if shape[i] % (math.prod(mesh.shape[b] for b in dims[i]) * mesh.shape[a]) == 0:
          dims[i].append(a)
          break
  return P(*[None if not d else (d[0] if len(d) == 1 else tuple(d)) for d in dims])


def _is_spec(x: Any) -> bool:
  return isinstance(x, P)


def logical_to_sharding(spec_tree: Any, mesh: Mesh, rules: ShardingRules = ShardingRules(),
                        shapes: Any = None) -> Any:
  """Tree of logical `PartitionSpec`s -> tree of `NamedSharding`s on `mesh`.

  Args:
    spec_tree: e.g. `model.logical_axes(cfg)`.
    mesh: the device mesh.
    rules: logical -> mesh axes.
    shapes: optional matching tree of arrays / `ShapeDtypeStruct`s; enables the divisibility fit.
  """
  if shapes is None:
    return jax.tree.map(lambda s: NamedSharding(mesh, logical_to_physical(s, rules)), spec_tree,
                        is_leaf=_is_spec)
  return jax.tree.map(
    lambda s, x: NamedSharding(mesh, logical_to_physical(s, rules, x.shape, mesh)),
    spec_tree, shapes, is_leaf=_is_spec)


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: ShardingRules = ShardingRules()
                   ) -> NamedSharding:
  """Leading batch axis split over the data axes, everything else replicated."""
  return NamedSharding(mesh, logical_to_physical(P("batch", *([None] * (ndim - 1))), rules))


def constrain_rows(x: jax.Array, rules: ShardingRules = ShardingRules()) -> jax.Array:
  """x with its leading (row) axis over the batch mesh axes of the current mesh, the rest whole.

  An anchor for XLA's sharding propagation inside the model: with the local models' weights
  split over fsdp on their width, XLA otherwise shards the byte activations' width the same way
  and gathers all rows on every device (8x the local stacks' activations and compute at fsdp 8;
  docs/benchmarks.md, training memory). Identity without a current mesh, or when the rows do not
  divide.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  axes = tuple(a for a in rules.mesh_axes("batch") if a in mesh.axis_names)
  n = math.prod(mesh.shape[a] for a in axes)
  if n == 1 or x.shape[0] % n:
    return x
  return jax.lax.with_sharding_constraint(x, P(axes, *([None] * (x.ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def spans_processes(mesh: Mesh | None) -> bool:
  """Whether `mesh` holds devices of other processes (a model split across hosts)."""
  return mesh is not None and any(d.process_index != jax.process_index()
                                  for d in mesh.devices.flat)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Host values (the same on every process) as arrays replicated over `mesh`.

  A jitted program over devices of several processes takes no single-device arrays: each
  process places its identical copy on its own devices of the mesh. PRNG key arrays go through
  their raw data.
  """
  rep = replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(jax.device_put(np.asarray(jax.random.key_data(x)), rep),
                                      impl=jax.random.key_impl(x))
    return jax.device_put(np.asarray(x), rep)

  return jax.tree.map(put, tree)


def to_host(tree: Any, mesh: Mesh | None = None) -> Any:
  """numpy copies of a tree of arrays; over a mesh that spans processes, every process gets the
  whole of each array (`process_allgather`), not only its own shards."""
  if spans_processes(mesh):
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def shard_bytes_per_device(abstract_tree: Any) -> dict[Any, int]:
  """Bytes each device would hold for a tree of sharded `ShapeDtypeStruct`s (memory planning)."""
  out: dict[Any, int] = {}
  for x in jax.tree.leaves(abstract_tree):
    shard = x.sharding.shard_shape(x.shape)
    nbytes = int(np.prod(shard)) * np.dtype(x.dtype).itemsize
    for d in x.sharding.device_set:
      out[d] = out.get(d, 0) + nbytes
  return out
