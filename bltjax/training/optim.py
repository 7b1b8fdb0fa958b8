"""Optimiser (arXiv 2412.09871 §4.8): AdamW after global-norm clipping, linear warm-up + cosine, and
gradient accumulation as a `lax.scan` over microbatches.

Weight decay is masked off norm scales, embeddings and hash tables (a project choice: the paper
does not say; docs/choices.md): those are lookups or gains, and decaying them towards 0 only
fights the loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from bltjax.training.train_config import TrainConfig

# Leaf names (last path key) that never get weight decay.
NO_DECAY_LEAVES = ("scale", "embedding")


def lr_schedule(peak_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
                ) -> optax.Schedule:
  """0 -> peak over `warmup_steps` (linear), then cosine to peak * min_ratio at `total_steps`."""
  warmup_steps = min(warmup_steps, total_steps)
  decay_steps = max(1, total_steps - warmup_steps)
  cosine = optax.cosine_decay_schedule(peak_lr, decay_steps, alpha=min_ratio)
  if warmup_steps == 0:
    return cosine
  # Step 0 already trains at peak/warmup, not 0: a zero-lr first step would be wasted compute.
  warm = optax.linear_schedule(peak_lr / warmup_steps, peak_lr, warmup_steps - 1) \
    if warmup_steps > 1 else optax.constant_schedule(peak_lr)
  return optax.join_schedules([warm, cosine], [warmup_steps])


def decay_mask(params: Any) -> Any:
  """True where weight decay applies: every leaf except norm scales and embedding tables."""

  def keep(path, _):
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", str(last)))
    return name not in NO_DECAY_LEAVES

  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(tc: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Clip by global norm, then AdamW with the masked decay; returns (tx, schedule)."""
  sched = lr_schedule(tc.lr, tc.warmup_steps, tc.steps, tc.min_lr_ratio)
  tx = optax.chain(
    optax.clip_by_global_norm(tc.clip_norm),
    optax.adamw(sched, b1=tc.b1, b2=tc.b2, eps=tc.eps, weight_decay=tc.weight_decay,
                mask=decay_mask, mu_dtype=jnp.dtype(tc.mu_dtype)),
  )
  return tx, sched


LossFn = Callable[[Any, Any, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict[str, Any]]]


def is_sum_metric(name: str, weight_key: str = "weight") -> bool:
  """Counts and sums add across microbatches/devices; everything else is a per-target mean."""
  return name == weight_key or name.startswith("n_") or name.endswith("_sum")


def split_microbatches(batch: dict[str, jax.Array], n: int, constrain: Callable | None = None
                       ) -> dict[str, jax.Array]:
  """[B, ...] -> [n, B/n, ...] so that every microbatch spans all data shards.

  Row r goes to microbatch r % n: with the batch axis split contiguously over devices, taking
  strided rows keeps each microbatch evenly spread instead of landing on 1/n of the devices.
  """

  def one(x):
    b = x.shape[0]
    y = x.reshape(b // n, n, *x.shape[1:]).swapaxes(0, 1)
    return constrain(y) if constrain is not None else y

  return jax.tree.map(one, batch)


@dataclasses.dataclass(frozen=True)
class RowGradient:
  """A lookup table whose gradient is accumulated row by row.

  `path` names the table leaf in the parameter tree; `ids(microbatch)` the ids the microbatch
  reads; `gather(table, ids)` the rows, `scatter_add(acc, ids, rows_grad)` its transpose. The
  rows are gathered before the gradient and stand in for the table in the differentiated
  parameters (the model reads a leaf of rank `table.ndim + 1` as rows already gathered); their
  gradient is then scattered into the accumulator itself. Autodiff's gradient of a lookup is a
  table-sized scatter into zeros that XLA need not fuse into the accumulator's add.
  """
  path: tuple[str, ...]
  ids: Callable[[dict[str, jax.Array]], jax.Array]
  gather: Callable[[jax.Array, jax.Array], jax.Array]
  scatter_add: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _get(tree: Any, path: tuple[str, ...]) -> Any:
  for k in path:
    tree = tree[k]
  return tree


def _set(tree: Any, path: tuple[str, ...], value: Any) -> Any:
  if not path:
    return value
  return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


def accumulate_gradients(loss_fn: LossFn, params: Any, batch: dict[str, jax.Array],
                         rng: jax.Array, n_micro: int, constrain: Callable | None = None,
                         weight_key: str = "weight", rows: RowGradient | None = None
                         ) -> tuple[jax.Array, dict[str, Any], Any]:
  """Loss, metrics and gradients of the whole batch from `n_micro` scanned microbatches
  (`gradient_sums`, then `normalize`; arguments as there)."""
  sums = gradient_sums(loss_fn, params, batch, rng, n_micro, constrain, weight_key, rows)
  return normalize(*sums, params, weight_key)


def normalize(loss_sum: jax.Array, metric_sums: dict[str, Any], grad_sums: Any,
              weight: jax.Array, params: Any, weight_key: str = "weight"
              ) -> tuple[jax.Array, dict[str, Any], Any]:
  """`gradient_sums`' weighted sums -> (loss, metrics, gradients in the parameters' dtypes)."""
  denom = jnp.maximum(weight, 1e-9)
  grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grad_sums, params)
  metrics = {k: (v if is_sum_metric(k, weight_key) else v / denom)
             for k, v in metric_sums.items()}
  return loss_sum / denom, metrics, grads


def gradient_sums(loss_fn: LossFn, params: Any, batch: dict[str, jax.Array],
                  rng: jax.Array, n_micro: int, constrain: Callable | None = None,
                  weight_key: str = "weight", rows: RowGradient | None = None
                  ) -> tuple[jax.Array, dict[str, Any], Any, jax.Array]:
  """Weighted sums (loss, metrics, fp32 gradients) over `n_micro` scanned microbatches and the
  total weight; `normalize` divides. Kept apart so that a program may return the accumulator
  itself (train.SplitStep: no second gradient-sized buffer for the quotient).

  Each microbatch's mean loss is weighted by its `metrics[weight_key]` (the number of scored
  targets) when present, so the result equals one pass over the full batch, not a mean of means.
  Metrics are combined the same way (they are per-target means) except counts and sums
  (`is_sum_metric`: `weight_key`, `n_*`, `*_sum`), which add up.

  Args:
    loss_fn: the loss contract `loss_fn(params, batch, rng) -> (loss, metrics)` (cfg bound).
    params: differentiated parameters.
    batch: arrays with a leading batch axis divisible by n_micro.
    rng: folded with the microbatch index.
    n_micro: number of microbatches (1 = plain value_and_grad).
    constrain: optional sharding constraint for each [n, B/n, ...] array.
    weight_key: metrics entry holding the microbatch's target count.
    rows: a table whose gradient is scattered row by row (`RowGradient`), or None.
  """
  if rows is not None:
    table = _get(params, rows.path)

    def row_grads(fn):
      """fn's (value, grads) with the table's rows gathered first and its gradient scattered
      into `acc` (zeros for one pass): grads then hold `acc` plus this microbatch's rows."""

      def run(p, mb, r, acc):
        ids = rows.ids(mb)
        (value, grads) = fn(_set(p, rows.path, rows.gather(table, ids)), mb, r)
        return value, _set(grads, rows.path,
                           rows.scatter_add(acc, ids, _get(grads, rows.path)))

      return run

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if n_micro == 1:  # sums of one, weight 1: `normalize` leaves them as they are
    if rows is not None:
      acc = jnp.zeros(table.shape, jnp.float32)
      (loss, metrics), grads = row_grads(grad_fn)(params, batch, rng, acc)
      grads = _set(grads, rows.path, _get(grads, rows.path).astype(table.dtype))
    else:
      (loss, metrics), grads = grad_fn(params, batch, rng)
    return loss, metrics, grads, jnp.float32(1.0)

  def weighted_loss(p, mb, r):
    # The microbatch's weight (its target count, not a function of p) scales the loss, so its
    # gradients come out weighted and are added to the carry as they are: `acc + scatter(0, ..)`
    # of the hash tables' gradient can then become an in-place scatter into the accumulator
    # (XLA's simplifier), where `acc + w * scatter(..)` needs a dense table-sized temporary.
    loss, metrics = loss_fn(p, mb, r)
    w = jax.lax.stop_gradient(metrics.get(weight_key, jnp.float32(1.0)).astype(jnp.float32))
    return w * loss, (loss, metrics, w)

  weighted_grad_fn = jax.value_and_grad(weighted_loss, has_aux=True)
  micro = split_microbatches(batch, n_micro, constrain)
  # Shapes of one microbatch's outputs: the scan carry must be fixed up front.
  one = jax.tree.map(lambda x: x[0], micro)
  (_, m_shape), _ = jax.eval_shape(grad_fn, params, one, rng)
  zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), t)  # noqa: E731

  def body(carry, xs):
    i, mb = xs
    g_acc, m_acc, w_acc = carry
    r = jax.random.fold_in(rng, i)
    if rows is None:
      (_, (loss, metrics, w)), grads = weighted_grad_fn(params, mb, r)
      g_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), g_acc, grads)
    else:  # the table's entry already holds the accumulator with this microbatch scattered in
      acc = _get(g_acc, rows.path)
      (_, (loss, metrics, w)), grads = row_grads(weighted_grad_fn)(params, mb, r, acc)
      g_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32),
                           _set(g_acc, rows.path, jnp.zeros((), jnp.float32)),
                           _set(grads, rows.path, jnp.zeros((), jnp.float32)))
      g_acc = _set(g_acc, rows.path, _get(grads, rows.path))
    metrics = dict(metrics, loss=loss)
    m_acc = {k: m_acc[k] + (v if is_sum_metric(k, weight_key) else w * v)
             for k, v in metrics.items()}
    return (g_acc, m_acc, w_acc + w), None

  m0 = zeros(dict(m_shape, loss=jax.ShapeDtypeStruct((), jnp.float32)))
  carry = (zeros(params), m0, jnp.float32(0.0))
  (g_sum, m_sum, w_sum), _ = jax.lax.scan(body, carry, (jnp.arange(n_micro), micro))
  loss_sum = m_sum.pop("loss")
  return loss_sum, m_sum, g_sum, w_sum
