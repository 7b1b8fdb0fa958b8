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

# ar: cached autoregressive BLT; blts: self-speculation (greedy: ar greedy's bytes, sampled: ar's
# distribution); bltd: block diffusion (BLT-D weights); bltdv: diffusion drafts verified causally.
METHODS = ("ar", "blts", "bltd", "bltdv")
RULES = ("confidence", "entropy", "one_step")
RULE_DEFAULTS = {"bltd": "confidence", "bltdv": "entropy"}  # methods that denoise blocks
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
_LABELS = {"ar": "BLT", "blts": "BLT-S", "bltd": "BLT-D-{z}", "bltdv": "BLT-DV-{z}"}


def label(method: str, block_size: int | None = None) -> str:
  """The paper's name of a method on a model: BLT, BLT-S, BLT-D-Z, BLT-DV-Z."""
  return _LABELS.get(method, method).format(z=block_size)


def setting_label(method: str, s: Mapping[str, Any]) -> str:
  """A run's method settings in a few characters (`s`: the options as a run records them)."""
  if method == "ar":
    out = "AR"
  elif method == "blts":
    out = f"k={s.get('draft_k')}"
  else:
    rule = s.get("rule") or RULE_DEFAULTS.get(method, "confidence")
    out = {"confidence": f"conf α={s.get('alpha')}", "entropy": f"EB γ={s.get('gamma')}",
           "one_step": "one-step"}.get(rule, rule)
    if rule == "entropy" and s.get("eb_rule", Options.eb_rule) != Options.eb_rule:
      out += f" ({s['eb_rule']})"
    if s.get("block_latent", Options.block_latent) != Options.block_latent:
      out += f", {s['block_latent']}"
  if s.get("temperature"):
    out += f", T={s['temperature']}"
  return out


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
  if a.method == "blts" and a.draft_k < 1:
    return "--draft-k must be positive"
  if a.block_latent != Options.block_latent and a.method != "bltd":
    return "--block-latent force_boundary applies to --method bltd only"
  if a.temperature < 0:
    return f"--temperature must be >= 0, got {a.temperature}"
  return None


__all__ = ["METHODS", "RULES", "RULE_DEFAULTS", "EB_RULES", "BLOCK_LATENTS", "DTYPES", "Options",
           "label", "setting_label", "add_args", "from_args", "check_args"]
