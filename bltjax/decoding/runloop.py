"""The generation loop every method shares: its state, its arguments, the one stop rule.

A method is a `cycle(params, cfg, g, ctx, opts) -> g`: it proposes a window of ids per row (one
sampled byte, x0 and drafts, a denoised block), runs the engine, and hands the window to `take`,
which commits ids up to the method's limit, cut at the first stop event, exactly as byte-by-byte
decoding would stop: EOS, a stop string, the byte budget, or a global cache too full for the
next byte's patch ("context"). `loop` repeats cycles in one `lax.while_loop` until every row is
done and returns only ids and counters (the caches never leave the device).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bltjax.config import OFFSET, BLTConfig
from bltjax.decoding import engine

STOP_NONE, STOP_EOS, STOP_LENGTH, STOP_STRING, STOP_CONTEXT = 0, 1, 2, 3, 4
STOP_NAMES = {STOP_NONE: "none", STOP_EOS: "eos", STOP_LENGTH: "length", STOP_STRING: "stop",
              STOP_CONTEXT: "context"}
MAX_STOPS, MAX_STOP_LEN = 8, 32


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class GenState:
  state: engine.State
  out: jax.Array  # [B, max_new + max_q] generated ids
  n_new: jax.Array  # [B]
  done: jax.Array  # [B] bool
  reason: jax.Array  # [B] int32
  nfe_dec: jax.Array  # [B] decoder NFEs as the paper counts them (arXiv 2605.08044 Eq. 8)
  nfe_enc_global: jax.Array  # [B] encoder + global NFEs as the paper counts them
  passes: jax.Array  # [B, 4] passes each row took part in (engine.PASSES order)
  cycles: jax.Array  # [B] verifications (BLT-S, BLT-DV) or blocks (BLT-D); steps (AR)
  drafted: jax.Array  # [B] draft bytes proposed
  accepted: jax.Array  # [B] draft bytes accepted (d_j == y_j prefix)
  agree: jax.Array  # [B] draft positions equal to the verifier's byte, anywhere in the window
  carry_tok: jax.Array  # [B] a byte already drawn for position n (speculative sampling's
  carry: jax.Array  # [B] bool   correction byte), committed by the next cycle when `carry`
  step: jax.Array  # scalar


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoopArgs:
  """The per-call arrays of a loop (traced, so one compilation serves every value), and whether
  any row samples (static: greedy programs carry no probability tensors;
  bltjax/decoding/sampling.py)."""

  budget: jax.Array  # [B] byte budgets (<= max_new)
  keys: jax.Array  # [B] per-row PRNG keys
  temperature: jax.Array  # [B]
  top_k: jax.Array  # [B]
  top_p: jax.Array  # [B]
  stop_ids: jax.Array  # [MAX_STOPS, MAX_STOP_LEN] right-aligned
  stop_len: jax.Array  # [MAX_STOPS]
  eos: jax.Array  # scalar: the EOS id, or -1 (EOS is an ordinary byte)
  alpha: jax.Array  # scalar: BLT-D confidence threshold
  gamma: jax.Array  # scalar: entropy bound
  tau: jax.Array  # scalar: BLT-S stops drafting after a byte whose max probability is below it
  sampled: bool = dataclasses.field(default=False, metadata={"static": True})


def stop_arrays(stops: tuple[bytes, ...]) -> tuple[jax.Array, jax.Array]:
  """Stop strings as fixed-shape id arrays (so the loop compiles once whatever the stops)."""
  if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_LEN for s in stops):
    raise ValueError(f"stops: at most {MAX_STOPS} strings of at most {MAX_STOP_LEN} bytes")
  ids = np.zeros((MAX_STOPS, MAX_STOP_LEN), np.int32)
  lens = np.zeros((MAX_STOPS,), np.int32)
  for i, s in enumerate(st for st in stops if st):
    ids[i, MAX_STOP_LEN - len(s):] = [c + OFFSET for c in s]  # right-aligned
    lens[i] = len(s)
  return jnp.asarray(ids), jnp.asarray(lens)


def stop_hit(out_BxN, n_new_B, stop_ids_NxL, stop_len_N):
  """Whether the first n_new ids of a row end with one of the stop strings."""
  ln = stop_ids_NxL.shape[1]
  padded = jnp.pad(out_BxN, ((0, 0), (ln, 0)))
  win_BxL = jax.vmap(lambda o, i: jax.lax.dynamic_slice(o, (i,), (ln,)))(padded, n_new_B)
  tail = jnp.arange(ln)[None, :] >= (ln - stop_len_N)[:, None]  # [N, L] compared positions
  eq_BxNxL = (win_BxL[:, None, :] == stop_ids_NxL[None]) | ~tail[None]
  hit_BxN = jnp.all(eq_BxNxL, axis=-1) & (stop_len_N[None] > 0) & (
    n_new_B[:, None] >= stop_len_N[None])
  return jnp.any(hit_BxN, axis=-1)


def write_out(out_BxN, n_new_B, ids_BxQ, write_BxQ):
  """ids at n_new + j (masked writes dropped)."""
  q = ids_BxQ.shape[1]
  idx = jnp.where(write_BxQ, n_new_B[:, None] + jnp.arange(q)[None], out_BxN.shape[1])
  return jax.vmap(lambda o, i, t: o.at[i].set(t, mode="drop"))(out_BxN, idx, ids_BxQ)


def ends_generation(out_BxN, count_B, id_B, budget_B, ctx: LoopArgs):
  """Does committing id as byte number `count` (out holding it) end the row: (eos, stop string,
  budget), in that order of precedence."""
  eos = id_B == ctx.eos  # eos = -1: EOS is an ordinary byte (benchmarks)
  hit = ~eos & stop_hit(out_BxN, count_B, ctx.stop_ids, ctx.stop_len)
  full = ~eos & ~hit & (count_B >= budget_B)
  return eos, hit, full


def take(g: GenState, ids_BxQ, limit_B, closed_before_BxQ, ctx: LoopArgs
         ) -> tuple[GenState, jax.Array, jax.Array]:
  """Commits ids 0..limit of a window for active rows, cut at the first stop event (checked per
  id: EOS, a stop string, the budget, then the global cache); advances out / n_new / done /
  reason / cycles / step. Returns (g, a, running): a = index of the last committed id; running =
  active rows that go on (their engine state must advance by a + 1)."""
  q = ids_BxQ.shape[1]
  pmax = engine.global_slots(g.state)
  active = ~g.done
  jj = jnp.arange(q)[None]
  out = write_out(g.out, g.n_new, ids_BxQ, active[:, None] & (jj <= limit_B[:, None]))
  # Every window position at once (one vectorised check, not Q unrolled copies of it).
  eos_j, hit_j, full_j = jax.vmap(
    lambda j, x: ends_generation(out, g.n_new + j + 1, x, ctx.budget, ctx), in_axes=(0, 1),
    out_axes=1)(jnp.arange(q), ids_BxQ)
  ctx_j = (closed_before_BxQ >= pmax - 1) & ~eos_j & ~hit_j & ~full_j
  ev_j = (eos_j | hit_j | full_j | ctx_j) & (jj <= limit_B[:, None])
  stop = active & jnp.any(ev_j, axis=1)
  a = jnp.where(stop, jnp.argmax(ev_j, axis=1), limit_B).astype(jnp.int32)
  at_a = lambda x: jnp.take_along_axis(x, a[:, None], axis=1)[:, 0]  # noqa: E731
  reason = g.reason
  for flag, code in ((ctx_j, STOP_CONTEXT), (full_j, STOP_LENGTH), (hit_j, STOP_STRING),
                     (eos_j, STOP_EOS)):
    reason = jnp.where(stop & at_a(flag), code, reason)
  ai = active.astype(jnp.int32)
  g = dataclasses.replace(g, out=out, n_new=g.n_new + ai * (a + 1), done=g.done | stop,
                          reason=reason, cycles=g.cycles + ai, step=g.step + 1)
  return g, a, active & ~stop


def count(g: GenState, active_B, *, dec=0, enc_global=0, passes=None, drafted=0, accepted=0,
          agree=0) -> GenState:
  """Adds per-row counters for the rows in `active_B`."""
  ai = active_B.astype(jnp.int32)
  p = g.passes if passes is None else g.passes + ai[:, None] * passes
  return dataclasses.replace(
    g, nfe_dec=g.nfe_dec + ai * dec, nfe_enc_global=g.nfe_enc_global + ai * enc_global,
    passes=p, drafted=g.drafted + ai * drafted, accepted=g.accepted + ai * accepted,
    agree=g.agree + ai * agree)


def init(state: engine.State, budget_B, max_new: int, max_q: int) -> GenState:
  b = budget_B.shape[0]
  z = lambda: jnp.zeros((b,), jnp.int32)  # noqa: E731
  return GenState(state=state, out=jnp.zeros((b, max_new + max_q), jnp.int32), n_new=z(),
                  done=budget_B <= 0,
                  reason=jnp.where(budget_B <= 0, STOP_LENGTH, STOP_NONE).astype(jnp.int32),
                  nfe_dec=z(), nfe_enc_global=z(), passes=jnp.zeros((b, len(engine.PASSES)),
                                                                     jnp.int32),
                  cycles=z(), drafted=z(), accepted=z(), agree=z(), carry_tok=z(),
                  carry=jnp.zeros((b,), bool), step=jnp.zeros((), jnp.int32))


@functools.partial(jax.jit, static_argnames=("cfg", "cycle", "max_new", "max_q", "opts"),
                   donate_argnames=("state",))
def loop(params, cfg: BLTConfig, state: engine.State, ctx: LoopArgs, *, cycle, max_new: int,
         max_q: int, opts: Any):
  """`cycle` until every row is done. The final GenState keeps the engine state on the device
  (in the donated buffers); callers fetch ids and counters only."""
  cfg = engine.decoding_config(cfg)
  return jax.lax.while_loop(lambda g: (g.step < max_new) & ~jnp.all(g.done),
                            lambda g: cycle(params, cfg, g, ctx, opts),
                            init(state, ctx.budget, max_new, max_q))


__all__ = ["GenState", "LoopArgs", "STOP_NAMES", "stop_arrays", "stop_hit", "take", "count",
           "init", "loop", "write_out",
           "ends_generation"]
