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

import dataclasses
from collections.abc import Callable
from typing import Any

from bltjax.config import BLTConfig


@dataclasses.dataclass(frozen=True)
class Options:
  """Method options (the defaults are the paper's, arXiv 2605.08044 §4.2 and §5)."""

  draft_k: int = 8  # blts: bytes drafted per verification
  rule: str | None = None  # bltd/bltdv: confidence | entropy | one_step (None: per method)
  alpha: float = 0.7  # confidence threshold
  gamma: float = 1.5  # entropy bound (nats)
  eb_rule: str = "sum_minus_max"  # | cumulative
  block_latent: str = "partial_last_patch"  # bltd: | force_boundary
  temperature: float = 0.0  # 0 = greedy
  top_k: int = 0
  top_p: float = 1.0


RULE_DEFAULTS = {"bltd": "confidence", "bltdv": "entropy"}


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  summary: str
  check: Callable[[BLTConfig], None]  # raises ValueError naming the config key
  run: Callable[..., list[Any]]
  sampling: bool  # accepts temperature > 0
  stats: str | None  # "speculation" | "blocks" | None: the per-record statistics it reports


def _ar(params, cfg, prompts, opt: Options, **kw):
  from bltjax import decoding  # noqa: PLC0415

  sc = decoding.SamplingConfig(opt.temperature, opt.top_k, opt.top_p)
  return decoding.generate(params, cfg, prompts, sc=sc, **kw)


def _blts(params, cfg, prompts, opt: Options, seeds=None, **kw):
  from bltjax import speculative  # noqa: PLC0415

  del seeds  # greedy only
  return speculative.generate(params, cfg, prompts, k=opt.draft_k, **kw)


def _block(method: str):
  def run(params, cfg, prompts, opt: Options, seeds=None, **kw):
    from bltjax import block_decoding, decoding  # noqa: PLC0415

    rule = block_decoding.BlockRule(opt.rule or RULE_DEFAULTS[method], opt.alpha, opt.gamma,
                                    opt.eb_rule)
    sc = decoding.SamplingConfig(opt.temperature, opt.top_k, opt.top_p)
    return block_decoding.generate(params, cfg, prompts, method=method, rule=rule,
                                   block_latent=opt.block_latent, sc=sc, seeds=seeds, **kw)
  return run


def _check_causal(cfg: BLTConfig) -> None:
  from bltjax import decoding  # noqa: PLC0415

  decoding.check_supported(cfg)


def _check_block(cfg: BLTConfig) -> None:
  from bltjax import block_decoding  # noqa: PLC0415

  block_decoding.check_supported(cfg)


METHODS: dict[str, Method] = {
  "ar": Method("ar", "cached autoregressive BLT", _check_causal, _ar, True, None),
  "blts": Method("blts", "BLT-S self-speculation (= ar greedy)", _check_causal, _blts, False,
                 "speculation"),
  "bltd": Method("bltd", "BLT-D block diffusion", _check_block, _block("bltd"), True, "blocks"),
  "bltdv": Method("bltdv", "BLT-DV diffusion drafts + causal verification", _check_block,
                  _block("bltdv"), False, "speculation"),
}


def method(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f"method: unknown {name!r} ({' | '.join(METHODS)})")
  return METHODS[name]


def check(name: str, cfg: BLTConfig, opt: Options = Options()) -> None:
  """Refuses (ValueError) a method/checkpoint/option combination before any work is done."""
  m = method(name)
  if opt.temperature > 0 and not m.sampling:
    raise ValueError(f"temperature: --method {name} verifies by exact greedy match; use 0")
  if opt.block_latent != "partial_last_patch" and name != "bltd":
    raise ValueError("block_latent: force_boundary applies to bltd only")
  if name == "blts" and opt.draft_k < 1:
    raise ValueError(f"draft_k: must be >= 1, got {opt.draft_k}")
  m.check(cfg)


def generate(params, cfg: BLTConfig, prompts: list[bytes], *, method: str, max_new: int,
             options: Options = Options(), stops: tuple[bytes, ...] = (),
             seeds: list[int] | None = None, **kw) -> list[Any]:
  """Generates for a batch of prompts with the named method; one record per prompt with
  `data` (bytes), `reason`, the NFE counters and the method's statistics.

  Extra keyword arguments (`budgets`, `max_patches`, `patch_cap`, `batch_bucket`,
  `stop_at_eos`) go to the engine.
  """
  check(method, cfg, options)
  return METHODS[method].run(params, cfg, prompts, options, max_new=max_new, stops=stops,
                             seeds=seeds, **kw)


def stats(name: str, g: Any, cfg: BLTConfig, opt: Options = Options()) -> dict[str, Any]:
  """The method's per-record statistics (what `decode.py` writes next to the NFEs)."""
  kind = method(name).stats
  n_out = len(g.new_ids) + (g.reason == "eos")
  if kind == "speculation":
    return {"speculation": {
      "window": opt.draft_k if name == "blts" else cfg.diffusion.block_size,
      "cycles": g.cycles, "bytes_per_cycle": round(n_out / max(g.cycles, 1), 4),
      "acceptance": round(g.acceptance, 4), "agreement": round(g.agreement, 4)}}
  if kind == "blocks":
    return {"blocks": {"block_size": cfg.diffusion.block_size, "blocks": g.cycles,
                       "bytes_per_block": round(n_out / max(g.cycles, 1), 4),
                       "decoder_steps_per_block": round(g.nfe_dec / max(g.cycles, 1), 4)}}
  return {}


__all__ = ["Options", "Method", "METHODS", "method", "check", "generate", "stats"]
