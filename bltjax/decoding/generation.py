"""One entry point for every decoding method: `generate(params, cfg, prompts, method=...)`.

The methods (arXiv 2412.09871 for BLT, arXiv 2605.08044 for the fast ones) register here by
name, with the check that refuses a checkpoint they cannot decode and the options they take:

  ar     cached autoregressive BLT (greedy or sampled)
  blts   BLT-S self-speculation (greedy, byte-identical to ar greedy)
  bltd   BLT-D block diffusion (BLT-D weights; greedy or sampled values)
  bltdv  BLT-DV: diffusion drafts verified causally (BLT-D weights; greedy)

`decode.py`, the evaluation suites and the benchmarks call `generate`; nothing outside this
module dispatches on the method name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bltjax import multihost
from bltjax.config import BOS_ID, EOS_ID, OFFSET, BLTConfig, encode_prompt, ids_to_bytes
from bltjax.decoding import ar, bltd, bltdv, blts, engine, options, runloop, sampling
from bltjax.decoding.options import BLOCK_LATENTS, RULE_DEFAULTS, Options
from bltjax.modeling import model, sharding


@dataclasses.dataclass
class Generation:
  """One prompt's result: ids, why it stopped, the paper's counters and the passes that ran."""

  new_ids: list[int]  # without the EOS or stop string that ended it
  reason: str  # eos | length | stop | context
  nfe_dec: int  # decoder NFEs as the paper counts them (arXiv 2605.08044 Eq. 8)
  nfe_enc_global: int  # local encoder + global NFEs as the paper counts them
  prefill_patches: int
  passes: dict[str, int] = dataclasses.field(default_factory=dict)  # executed, per stack
  cycles: int = 0  # verifications (blts, bltdv), blocks (bltd), bytes (ar)
  drafted: int = 0
  accepted: int = 0
  agree: int = 0

  @property
  def data(self) -> bytes:
    return ids_to_bytes(self.new_ids)

  @property
  def nfe(self) -> dict[str, int]:
    """The paper's two counters (Eq. 8) and, outside them, the passes of every stack
    (docs/nfe.md)."""
    return {"decoder": self.nfe_dec, "encoder_global": self.nfe_enc_global,
            "passes": dict(self.passes)}

  @property
  def acceptance(self) -> float:
    """(a) accepted draft bytes / drafted bytes."""
    return self.accepted / max(self.drafted, 1)

  @property
  def agreement(self) -> float:
    """(b) position-wise agreement of draft and verifier over all drafted positions."""
    return self.agree / max(self.drafted, 1)


@dataclasses.dataclass(frozen=True)
class Method:
  """Everything a caller needs of one decoding method; nothing outside this record switches on
  a method's name."""

  name: str
  summary: str
  check: Callable[[BLTConfig], None]  # refuses a checkpoint (ValueError naming the config key)
  cycle: Callable[..., Any]  # one `runloop` cycle
  static: Callable[[BLTConfig, Options], tuple[int, Any]]  # (max_q, the cycle's static options)
  check_options: Callable[[Options], None] = lambda opt: None  # ValueError naming the option
  window: Callable[[BLTConfig, Options], int] | None = None  # speculation: positions verified
  blocks: bool = False  # reports per-block statistics (BLT-D)
  open_latent: bool = False  # the prefill also computes the open patch's latent

  @property
  def info(self) -> options.MethodInfo:
    """Labels, options, defaults: the jax-free part of the record (`options.INFO`)."""
    return options.info(self.name)

  def program(self, cfg: BLTConfig, opt: Options) -> tuple[int, Any, bool]:
    """(max_q, the cycle's static options, sampled): what its compiled programs depend on
    besides shapes (greedy programs carry no probability tensors)."""
    return (*self.static(cfg, opt), opt.temperature > 0)


def _rule(name: str, opt: Options) -> tuple[str, str]:
  return opt.rule or RULE_DEFAULTS[name], opt.eb_rule


def _check_blocks(name: str):
  """Rule and block-latent checks; sampling under the method's `sample_rule` only."""
  info = options.info(name)

  def check_options(opt: Options) -> None:
    bltd.BlockRule(_rule(name, opt)[0], opt.alpha, opt.gamma, opt.eb_rule)
    if opt.block_latent not in BLOCK_LATENTS:
      raise ValueError(f"block_latent: unknown {opt.block_latent!r} "
                       f"({' | '.join(BLOCK_LATENTS)})")
    rule = info.sample_rule
    if rule and opt.temperature > 0 and _rule(name, opt)[0] != rule:
      raise ValueError(f"temperature: sampled {info.short} needs --rule {rule} "
                       "(speculative sampling needs each draft's distribution given the drafts "
                       "before it; the confidence and entropy rules unmask out of order)")
  return check_options


METHODS: dict[str, Method] = {
  "ar": Method("ar", "cached autoregressive BLT", engine.check_supported, ar.cycle,
               static=lambda cfg, opt: (1, None)),
  "blts": Method("blts", "BLT-S self-speculation (= ar: greedy bytes, sampled distribution)",
                 engine.check_supported, blts.cycle,
                 static=lambda cfg, opt: (opt.draft_k + 1, opt.draft_k),
                 window=lambda cfg, opt: opt.draft_k),
  "bltd": Method("bltd", "BLT-D block diffusion", bltd.check_supported, bltd.cycle,
                 static=lambda cfg, opt: (cfg.diffusion.block_size,
                                          (_rule("bltd", opt), opt.block_latent)),
                 check_options=_check_blocks("bltd"), blocks=True, open_latent=True),
  "bltdv": Method("bltdv", "BLT-DV diffusion drafts + causal verification", bltd.check_supported,
                  bltdv.cycle,
                  static=lambda cfg, opt: (cfg.diffusion.block_size + 1, _rule("bltdv", opt)),
                  check_options=_check_blocks("bltdv"),
                  window=lambda cfg, opt: cfg.diffusion.block_size),
}


def method(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f"method: unknown {name!r} ({' | '.join(METHODS)})")
  return METHODS[name]


def check(name: str, cfg: BLTConfig, opt: Options = Options()) -> None:
  """Refuses (ValueError) a method/checkpoint/option combination before any work is done."""
  m = method(name)
  if err := options.check(name, opt):
    raise ValueError(f"{err[0]}: {err[1]}")
  m.check_options(opt)
  m.check(cfg)


def bucket(n: int, minimum: int = 16) -> int:
  """Next power of two >= n (and >= minimum)."""
  return max(minimum, 1 << (max(1, n) - 1).bit_length())


def prepare(params, cfg: BLTConfig, prompts: list[bytes], *, max_new: int, max_q: int = 1,
            budgets: list[int] | None = None, max_patches: int | None = None,
            patch_cap: int = 512, batch_bucket: bool = True, open_latent: bool = False,
            mesh: jax.sharding.Mesh | None = None
            ) -> tuple[engine.State, np.ndarray, np.ndarray]:
  """Bucketed prefill of a prompt batch: (state, per-row budgets [B], prefill patches [B]).

  Rows are padded to a power-of-two batch (padding rows get budget 0) and prompts to a
  power-of-two length, so a CLI run compiles a handful of programs at most; `max_q` is the most
  positions one cycle writes past the committed ones. With a `mesh`, the batch is padded to a
  multiple of the data x fsdp size and the state is sharded (`engine.state_shardings`).
  """
  engine.check_supported(cfg)
  n_real = len(prompts)
  b = bucket(n_real, 1) if batch_bucket else n_real
  if mesh is not None:  # every device holds whole rows
    b = -(-b // sharding.data_axes_size(mesh)) * sharding.data_axes_size(mesh)
  ids = [encode_prompt(p) for p in prompts] + [[BOS_ID]] * (b - n_real)
  s = bucket(max(len(x) for x in ids))
  arr = np.zeros((b, s), np.int32)
  for i, x in enumerate(ids):
    arr[i, :len(x)] = x
  lengths = np.array([len(x) for x in ids], np.int32)
  if cfg.patcher.max_patch_length is not None:
    patch_cap = min(patch_cap, cfg.patcher.max_patch_length)
  spec = engine.CacheSpec(max_patches=max_patches or bucket(s + max_new + 2),
                          max_len=s + max_new + 1, patch_cap=patch_cap, max_q=max_q)
  if mesh is None:
    st = engine.prefill(params, cfg, jnp.asarray(arr), jnp.asarray(lengths), spec, open_latent)
  else:
    with sharding.use_mesh(mesh):
      arr, lengths = jax.device_put((arr, lengths), (sharding.batch_sharding(mesh, 2),
                                                     sharding.batch_sharding(mesh, 1)))
      if sharding.spans_processes(mesh):
        st = multihost.run_in_lockstep(
          engine.prefill, "prefill", dict(params=params, ids_BxS=arr, lengths_B=lengths),
          dict(cfg=cfg, spec=spec, open_latent=open_latent))
      else:
        st = engine.prefill(params, cfg, arr, lengths, spec, open_latent)
      st = jax.device_put(st, engine.state_shardings(st, mesh))  # the loop keeps these
  if int(jnp.max(st.patch_len)) > patch_cap:
    raise ValueError(f"a prompt has an open patch longer than patch_cap={patch_cap}")
  budget = np.zeros((b,), np.int32)
  budget[:n_real] = budgets if budgets is not None else max_new
  if budget.max() > max_new:
    raise ValueError(f"a row budget exceeds max_new={max_new}")
  return st, budget, np.asarray(sharding.to_host(st.n_closed, mesh))


def trim(toks: list[int], reason: str, stops: tuple[bytes, ...]) -> list[int]:
  """A row's generated ids without the EOS or the stop string that ended it."""
  if reason == "eos":
    return toks[:-1]
  if reason == "stop":
    for sb in stops:
      if sb and ids_to_bytes(toks).endswith(sb):
        return toks[:len(toks) - len(sb)]
  return toks


def generate(params, cfg: BLTConfig, prompts: list[bytes], *, method: str, max_new: int,
             options: Options = Options(), stops: tuple[bytes, ...] = (),
             seeds: list[int] | None = None, budgets: list[int] | None = None,
             max_patches: int | None = None, patch_cap: int = 512, batch_bucket: bool = True,
             stop_at_eos: bool = True, mesh: jax.sharding.Mesh | None = None
             ) -> list[Generation]:
  """Generates for a batch of prompts with the named method: bucketed prefill, then one jitted
  loop for the whole batch; one `Generation` per prompt. `budgets`: per-row byte budgets
  (<= max_new); `seeds`: per-row sampling seeds (a row's output never depends on its batch);
  `mesh`: decode with the state sharded over it (params placed by `model.param_shardings`)."""
  check(method, cfg, options)
  opt = options
  m = METHODS[method]
  max_q, static, sampled = m.program(cfg, opt)
  st, budget, pre = prepare(params, cfg, prompts, max_new=max_new, max_q=max_q, budgets=budgets,
                            max_patches=max_patches, patch_cap=patch_cap,
                            batch_bucket=batch_bucket, open_latent=m.open_latent, mesh=mesh)
  n_real, b = len(prompts), budget.shape[0]
  seeds = list(seeds) if seeds is not None else [0] * n_real
  stop_ids, stop_len = runloop.stop_arrays(stops)
  ctx = runloop.LoopArgs(
    budget=jnp.asarray(budget),
    keys=jnp.stack([jax.random.key(int(x)) for x in seeds + [0] * (b - n_real)]),
    temperature=jnp.full((b,), opt.temperature, jnp.float32),
    top_k=jnp.full((b,), opt.top_k, jnp.int32), top_p=jnp.full((b,), opt.top_p, jnp.float32),
    stop_ids=stop_ids, stop_len=stop_len,
    eos=jnp.asarray(EOS_ID if stop_at_eos else -1, jnp.int32),
    alpha=jnp.asarray(opt.alpha, jnp.float32), gamma=jnp.asarray(opt.gamma, jnp.float32),
    tau=jnp.asarray(opt.draft_tau, jnp.float32), sampled=sampled)
  with sharding.use_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    if sharding.spans_processes(mesh):  # one model across processes
      g = multihost.run_in_lockstep(
        runloop.loop, f"loop-{method}",
        dict(params=params, state=st, ctx=sharding.put_replicated(ctx, mesh)),
        dict(cfg=cfg, cycle=m.cycle, max_new=max_new, max_q=max_q, opts=static))
    else:
      g = runloop.loop(params, cfg, st, ctx, cycle=m.cycle, max_new=max_new,
                       max_q=max_q, opts=static)  # jit keeps the state's input shardings
  g = sharding.to_host(dataclasses.replace(g, state=None), mesh)  # ids, counters: caches stay
  res = []
  for i in range(n_real):
    r = runloop.STOP_NAMES[int(g.reason[i])]
    res.append(Generation(
      trim(g.out[i, :g.n_new[i]].tolist(), r, stops), r, int(g.nfe_dec[i]),
      int(g.nfe_enc_global[i]), int(pre[i]),
      passes={k: int(v) for k, v in zip(engine.PASSES, g.passes[i], strict=True)},
      cycles=int(g.cycles[i]), drafted=int(g.drafted[i]), accepted=int(g.accepted[i]),
      agree=int(g.agree[i])))
  return res


def stats(name: str, g: Any, cfg: BLTConfig, opt: Options = Options()) -> dict[str, Any]:
  """The method's per-record statistics (what `decode.py` writes next to the NFEs)."""
  m = method(name)
  n_out = len(g.new_ids) + (g.reason == "eos")
  if m.window is not None:
    return {"speculation": {
      "window": m.window(cfg, opt), "cycles": g.cycles,
      "bytes_per_cycle": round(n_out / max(g.cycles, 1), 4),
      "acceptance": round(g.acceptance, 4), "agreement": round(g.agreement, 4)}}
  if m.blocks:
    return {"blocks": {"block_size": cfg.diffusion.block_size, "blocks": g.cycles,
                       "bytes_per_block": round(n_out / max(g.cycles, 1), 4),
                       "decoder_steps_per_block": round(g.nfe_dec / max(g.cycles, 1), 4)}}
  return {}


# ----------------------------------------------------------------------------------------------
# Drivers outside the batched loop: one byte at a time, and the full-recompute reference.


def stream(params, cfg: BLTConfig, prompt: bytes, *, max_new: int, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0, seed: int = 0, max_patches: int | None = None):
  """Interactive driver: yields each new byte as it is produced (one jitted step per byte)."""
  st, _, _ = prepare(params, cfg, [prompt], max_new=max_new, max_q=1,
                                max_patches=max_patches, batch_bucket=False)
  key = jax.random.key(seed)
  active = jnp.ones((1,), bool)
  arrs = (jnp.full((1,), temperature, jnp.float32), jnp.full((1,), top_k, jnp.int32),
          jnp.full((1,), top_p, jnp.float32))
  for _ in range(max_new):
    tok = sampling.sample(st.logits, sampling.keys_at(key[None], st.n), *arrs)
    t = int(tok[0])
    if t == EOS_ID:
      return
    if t >= OFFSET:
      yield bytes([t - OFFSET])
    st = engine.step(params, cfg, st, tok, active)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _last_logits(params, cfg, ids_BxS, lengths_B):
  logits = model.forward(params, cfg, ids_BxS, lengths_B=lengths_B)
  return logits[jnp.arange(ids_BxS.shape[0]), lengths_B - 1]


def generate_reference(params, cfg: BLTConfig, prompt: bytes, max_new: int,
                       width: int | None = None) -> list[int]:
  """Greedy decoding that re-patches and re-runs the whole model for every byte (what both
  reference implementations do). `width` fixes the padded length (one compilation)."""
  ids = encode_prompt(prompt)
  s = width or bucket(len(ids) + max_new)
  if s < len(ids) + max_new:
    raise ValueError(f"width {s} < prompt {len(ids)} + max_new {max_new}")
  arr = np.zeros((1, s), np.int32)
  arr[0, :len(ids)] = ids
  n = len(ids)
  out = []
  for _ in range(max_new):
    lg = _last_logits(params, cfg, jnp.asarray(arr), jnp.asarray([n], jnp.int32))
    t = int(jnp.argmax(lg[0]))
    out.append(t)
    if t == EOS_ID:
      break
    arr[0, n] = t
    n += 1
  return out


__all__ = ["Options", "Method", "METHODS", "Generation", "method", "check", "generate",
           "prepare", "trim", "stats", "bucket", "ids_to_bytes",
           "stream", "generate_reference", "encode_prompt"]
