"""The decoding methods' names and options, declared once and jax-free (so `--help` stays fast):
`Options` (what `generation.generate` takes), `add_args` (the command-line flags decode.py and
`python -m bltjax.eval` share), `from_args` and `check_args`.

Defaults are the paper's (arXiv 2605.08044 §4.2 and §5); docs/cli.md lists the flags.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any

RULES = ("confidence", "entropy", "one_step")
EB_RULES = ("sum_minus_max", "cumulative")
BLOCK_LATENTS = ("partial_last_patch", "force_boundary")  # docs/choices.md
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Options:
  """Method options (the defaults are the paper's, arXiv 2605.08044 §4.2 and §5)."""

  draft_k: int = 8  # blts: bytes drafted per verification (at most)
  draft_tau: float = 0.0  # blts: stop drafting after a byte whose max probability is below it
  rule: str | None = None  # bltd/bltdv: confidence | entropy | one_step (None: per method)
  alpha: float = 0.7  # confidence threshold
  gamma: float = 1.5  # entropy bound (nats)
  eb_rule: str = "sum_minus_max"  # | cumulative
  block_latent: str = "partial_last_patch"  # bltd: | force_boundary
  temperature: float = 0.0  # 0 = greedy
  top_k: int = 0
  top_p: float = 1.0


_FIELDS = tuple(f.name for f in dataclasses.fields(Options))


@dataclasses.dataclass(frozen=True)
class MethodInfo:
  """What a caller without jax needs of one method (the CLI, the report); generation's `Method`
  adds the programs. Callers read these fields, never the method's name."""

  name: str
  label: str  # the paper's name on a model; {z}: the block size (BLT-D-16)
  short: str  # the family's name in tables and legends
  options: tuple[str, ...] = ()  # the `Options` fields of its own (beyond sampling)
  rule_default: str | None = None  # block denoising: the default commit rule
  sweep: str | None = None  # the option its curve sweeps: "draft_k" (BLT-S) or "alpha" (BLT-D)
  verify_passes: int = 0  # decoder passes per cycle besides denoising steps (BLT-DV verifies)
  sample_rule: str | None = None  # the only commit rule it samples under (BLT-DV: one_step)
  style: tuple[str, str] = ("k", "*")  # figure colour and marker
  baseline: bool = False  # the method every other one is compared with (speed, bandwidth)

  @property
  def denoises(self) -> bool:
    return self.rule_default is not None

  def rule(self, s: Mapping[str, Any]) -> str | None:
    """The commit rule a run used (block methods), `s` the options as a run records them."""
    return (s.get("rule") or self.rule_default) if self.denoises else None

  def swept(self, s: Mapping[str, Any]) -> float | int | None:
    """The value of the option its curve sweeps (α only under the confidence rule)."""
    if self.sweep == "alpha" and self.rule(s) != "confidence":
      return None
    return s.get(self.sweep) if self.sweep else None

  def setting(self, s: Mapping[str, Any]) -> str:
    """A run's method settings in a few characters (`s`: the options as a run records them)."""
    if self.sweep == "draft_k":
      out = f"k={s.get('draft_k')}"
    elif self.denoises:
      rule = self.rule(s)
      out = {"confidence": f"conf α={s.get('alpha')}", "entropy": f"EB γ={s.get('gamma')}",
             "one_step": "one-step"}.get(rule, rule)
      if rule == "entropy" and s.get("eb_rule", Options.eb_rule) != Options.eb_rule:
        out += f" ({s['eb_rule']})"
      if s.get("block_latent", Options.block_latent) != Options.block_latent:
        out += f", {s['block_latent']}"
    else:
      out = "AR"
    if s.get("temperature"):
      out += f", T={s['temperature']}"
    return out


_BLOCK_OPTIONS = ("rule", "alpha", "gamma", "eb_rule")
INFO: dict[str, MethodInfo] = {m.name: m for m in (
  # cached autoregressive BLT
  MethodInfo("ar", "BLT", "AR", baseline=True),
  # self-speculation (greedy: ar greedy's bytes, sampled: ar's distribution)
  MethodInfo("blts", "BLT-S", "BLT-S", ("draft_k", "draft_tau"), sweep="draft_k",
             style=("tab:blue", "o")),
  # block diffusion (BLT-D weights)
  MethodInfo("bltd", "BLT-D-{z}", "BLT-D", _BLOCK_OPTIONS + ("block_latent",),
             rule_default="confidence", sweep="alpha", style=("tab:red", "s")),
  # diffusion drafts verified causally (BLT-D weights)
  # (sampled: speculative sampling needs each draft's distribution given the drafts before it,
  # which only the one-step rule keeps)
  MethodInfo("bltdv", "BLT-DV-{z}", "BLT-DV", _BLOCK_OPTIONS, rule_default="entropy",
             verify_passes=1, sample_rule="one_step", style=("tab:green", "^")),
)}
METHODS = tuple(INFO)
RULE_DEFAULTS = {m.name: m.rule_default for m in INFO.values() if m.denoises}


def info(method: str) -> MethodInfo:
  """The method's record; a name this version does not know (an older run) gets a plain one."""
  return INFO.get(method) or MethodInfo(method, method, method)


def label(method: str, block_size: int | None = None) -> str:
  """The paper's name of a method on a model: BLT, BLT-S, BLT-D-Z, BLT-DV-Z."""
  return info(method).label.format(z=block_size)


def setting_label(method: str, s: Mapping[str, Any]) -> str:
  """A run's method settings in a few characters (`s`: the options as a run records them)."""
  return info(method).setting(s)


def check(method: str, opt: Options) -> tuple[str, str] | None:
  """The first option of `opt` that `method` refuses, as (Options field, problem); None if fine.
  The one home of these checks: `generation.check` raises them, `check_args` names the flag."""
  m = info(method)
  if "draft_k" in m.options and opt.draft_k < 1:
    return "draft_k", f"must be positive (the draft window), got {opt.draft_k}"
  if not 0 <= opt.draft_tau <= 1:
    return "draft_tau", f"must be in [0, 1], got {opt.draft_tau}"
  if opt.block_latent != Options.block_latent and "block_latent" not in m.options:
    with_it = " | ".join(x.name for x in INFO.values() if "block_latent" in x.options)
    return "block_latent", f"{opt.block_latent} applies to {with_it} only"
  return None


def add_args(ap: argparse.ArgumentParser | argparse._ArgumentGroup, *, greedy_note: str = ""
             ) -> None:
  """The method, its options, sampling, seed and precision flags (`Options` + seed, dtype,
  exact)."""
  d = Options()
  ap.add_argument("--method", default="ar", choices=METHODS)
  ap.add_argument("--draft-k", type=int, default=d.draft_k,
                  help="blts: bytes the local decoder drafts per verification (4, 8, 16 in the "
                  "paper)")
  ap.add_argument("--draft-tau", type=float, default=d.draft_tau,
                  help="blts: stop drafting after a byte whose probability is below this "
                  "(0 = always draft --draft-k bytes)")
  ap.add_argument("--rule", default=None, choices=RULES,
                  help="bltd/bltdv: positions committed per denoising step (default: "
                  + ", ".join(f"{v} for {k}" for k, v in RULE_DEFAULTS.items()) + ")")
  ap.add_argument("--alpha", type=float, default=d.alpha, help="confidence threshold")
  ap.add_argument("--gamma", type=float, default=d.gamma, help="entropy bound (nats)")
  ap.add_argument("--eb-rule", default=d.eb_rule, choices=EB_RULES)
  ap.add_argument("--block-latent", default=d.block_latent, choices=BLOCK_LATENTS,
                  help="bltd: the block's latent when it starts mid-patch (docs/choices.md)")
  ap.add_argument("--temperature", type=float, default=d.temperature,
                  help="0 = greedy" + greedy_note)
  ap.add_argument("--top-p", type=float, default=d.top_p)
  ap.add_argument("--top-k", type=int, default=d.top_k)
  ap.add_argument("--seed", type=int, default=0, help="each row samples from its own key "
                  "(seed, id), so its output never depends on its batch")
  ap.add_argument("--dtype", default=None, choices=DTYPES,
                  help="weights, compute and cache dtype (default: the checkpoint's); bfloat16 "
                  "computes in bf16, so blts/bltdv may differ from ar in a few bytes (--exact)")
  ap.add_argument("--exact", action="store_true",
                  help="fp32 compute and caches over the weights as loaded (bf16 weights are "
                  "upcast at each matmul): blts and bltdv greedy give ar greedy's bytes")


def from_args(a: argparse.Namespace) -> Options:
  return Options(**{k: getattr(a, k) for k in _FIELDS})


def check_args(a: argparse.Namespace) -> str | None:
  """The first flag combination no method accepts, as a message naming the flag; None if fine."""
  if err := check(a.method, from_args(a)):
    return f"--{err[0].replace('_', '-')} {err[1]}"
  if a.temperature < 0:
    return f"--temperature must be >= 0, got {a.temperature}"
  return None


__all__ = ["METHODS", "INFO", "MethodInfo", "RULES", "RULE_DEFAULTS", "EB_RULES", "BLOCK_LATENTS",
           "DTYPES", "Options", "info", "label", "setting_label", "check", "add_args",
           "from_args", "check_args"]
