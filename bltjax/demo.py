"""`make demo`: train a tiny entropy model and a tiny BLT on real text, report held-out bpb.

Stages (each a function of the shared `DemoState`, run in order by `main`):

  stage_data       pick the corpus (the materialised default from `make data`, else the
                   committed fixture) and measure each held-out domain's order-0 entropy
  stage_entropy    train the entropy model (configs/entropy_tiny.py) -> runs/demo/entropy/export
  stage_calibrate  choose the entropy threshold that gives ~4-byte patches on training text
  stage_blt        train BLT patched online by that entropy model (configs/blt_tiny.py)
                   -> runs/demo/blt/export, a bltjax checkpoint for every `--checkpoint DIR`
  stage_report     held-out bpb per domain next to the unigram entropy; runs/demo/results.json
  stage_decode     greedy cached decoding of held-out prompts: completions, NFEs, bytes/s
  stage_blts       the same prompts by BLT-S self-speculation (k = 8): identical bytes, fewer
                   global calls; NFEs and the bandwidth estimate against AR

To add a stage (e.g. decoding held-out prompts with the exported BLT), write
`def stage_x(st: DemoState) -> None` and append it to `STAGES`; `st.blt_export` is the
checkpoint, `st.data_cfg` the data section, `st.results` what gets reported.

Re-running resumes: finished stages restore their final checkpoint and only re-evaluate
(`--fresh` retrains from scratch).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGET_PATCH = 4.0  # mean patch length the threshold is calibrated for (BLT's release regime)


@dataclasses.dataclass
class DemoState:
  run_dir: Path
  quick: bool = False
  data_cfg: Any = None
  source: str = ""
  unigram: dict[str, float] = dataclasses.field(default_factory=dict)
  entropy_export: Path | None = None
  threshold: float | None = None
  blt_export: Path | None = None
  results: dict[str, Any] = dataclasses.field(default_factory=dict)
  seconds: dict[str, float] = dataclasses.field(default_factory=dict)
  decode_prompts: list[bytes] = dataclasses.field(default_factory=list)
  decode_ar: list[Any] = dataclasses.field(default_factory=list)  # stage_decode's generations


def _load_config(name: str):
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _demo_train(c, st: DemoState, steps: int):
  # Sized for ~5 minutes in all on 2 CPU cores: 128-byte rows, batch 16.
  c.train.update(steps=steps if not st.quick else max(10, steps // 20), seq_len=128,
                 batch_size=16, warmup_steps=min(30, steps // 10), eval_every=0,
                 eval_windows=24, ckpt_every=100, log_every=25)
  c.data = st.data_cfg
  return c


def _say(msg: str) -> None:
  print(f"\n== {msg}", flush=True)


def stage_data(st: DemoState) -> None:
  """The materialised corpus if `make data` ran, else the committed fixture; unigram entropy."""
  from bltjax.data import corpus, pipeline
  from bltjax.data.stats import unigram_entropy_bits

  st.source = corpus.default_source()
  default_ready = st.source == "default"
  st.data_cfg = pipeline.default_data_config(source=st.source)
  _say(f"data: source={st.source} "
       f"({'data/ from `make data`' if default_ready else 'tests/fixtures/corpus'})")
  # Order-0 entropy of exactly the bytes that held-out bpb is computed on.
  from bltjax import train as T
  from bltjax.train_config import resolve

  c = _demo_train(_load_config("entropy_tiny"), st, 1)
  r = resolve(c, 1)
  for dom, batches in T.eval_sets(r).items():
    scored = [b["ids"][b["score"] & (b["ids"] >= 4)] - 4 for b in batches]
    st.unigram[dom] = unigram_entropy_bits(np.concatenate(scored))
    print(f"  held-out {dom:14s} {sum(map(len, scored)):7d} bytes  "
          f"order-0 entropy {st.unigram[dom]:.3f} bits/byte")


def stage_entropy(st: DemoState) -> None:
  """Trains the byte-level entropy model that will place BLT's patch boundaries."""
  from bltjax import train as T

  _say("training the entropy model (configs/entropy_tiny.py)")
  c = _demo_train(_load_config("entropy_tiny"), st, 600)
  out = T.train_and_evaluate(c, st.run_dir / "entropy")
  st.entropy_export = Path(out["export"])
  st.results["entropy_model"] = {k.removeprefix("eval/"): v for k, v in out["eval"].items()}


def calibrate_threshold(export: Path, data_cfg: Any, target: float, batches: int = 8,
                        seq_len: int = 128, batch_size: int = 16) -> tuple[float, float]:
  """θ with P(H > θ) = 1 / target on training text: a start follows each such byte
  (arXiv 2412.09871 §2.3), so patches average ~`target` bytes (§4.3 picks θ for a target patch
  size).

  Returns:
    (θ, the mean patch length it gives on those batches, forced starts included).
  """
  import jax
  import jax.numpy as jnp

  from bltjax import losses, model, weights
  from bltjax.data import pipeline

  cfg, params = weights.load_checkpoint(export)
  it = pipeline.make_train_iterator(data_cfg, seq_len=seq_len, batch_size=batch_size, seed=123,
                                    process_index=0, process_count=1)
  data = [next(it) for _ in range(batches)]
  ent = jax.jit(lambda p, b: model.entropies(p, cfg, b["ids"], losses.lengths_of(b["valid"]),
                                             b["doc_ids"]))
  hs = [np.asarray(ent(params, {k: jnp.asarray(v) for k, v in b.items()}))[b["valid"]]
        for b in data]
  theta = float(np.quantile(np.concatenate(hs), 1.0 - 1.0 / target))
  cfg = cfg.replace(patcher=dataclasses.replace(cfg.patcher, mode="entropy", threshold=theta))
  starts = jax.jit(lambda p, b: losses.train_patch_starts(p, cfg, b))
  n_tok = n_patch = 0
  for b in data:
    s = np.asarray(starts(params, {k: jnp.asarray(v) for k, v in b.items()}))
    n_tok += int(b["valid"].sum())
    n_patch += int(s[:, :-1][b["valid"]].sum())
  return theta, n_tok / max(n_patch, 1)


def stage_calibrate(st: DemoState) -> None:
  _say(f"calibrating the entropy threshold for ~{TARGET_PATCH:g}-byte patches")
  theta, mean_len = calibrate_threshold(st.entropy_export, st.data_cfg, TARGET_PATCH)
  st.threshold = theta
  st.results["patcher"] = {"threshold": theta, "mean_patch_len_train": mean_len}
  print(f"  threshold {theta:.4f} nats -> mean patch {mean_len:.2f} bytes on training text "
        "(starts after EOS forced, max_patch_length 16)")


def stage_blt(st: DemoState) -> None:
  """Trains BLT with patches from the frozen entropy model, computed inside the jitted step."""
  from bltjax import train as T

  _say("training BLT (configs/blt_tiny.py), entropy patching online")
  c = _demo_train(_load_config("blt_tiny"), st, 500)
  c.model.patcher.update(mode="entropy", threshold=st.threshold)
  c.train.entropy_checkpoint = str(st.entropy_export)
  out = T.train_and_evaluate(c, st.run_dir / "blt")
  st.blt_export = Path(out["export"])
  st.results["blt"] = {k.removeprefix("eval/"): v for k, v in out["eval"].items()}


def stage_report(st: DemoState) -> None:
  _say("held-out bits per byte (lower is better)")
  ent, blt = st.results.get("entropy_model", {}), st.results.get("blt", {})
  print(f"  {'domain':14s} {'order-0':>8s} {'entropy LM':>11s} {'BLT':>7s} {'BLT patch':>9s}")
  for dom, h0 in st.unigram.items():
    patch = blt.get(f"{dom}/mean_patch_len", math.nan)
    print(f"  {dom:14s} {h0:8.3f} {ent.get(f'{dom}/bpb', math.nan):11.3f} "
          f"{blt.get(f'{dom}/bpb', math.nan):7.3f} {patch:9.2f}")
  mean_h0 = float(np.mean(list(st.unigram.values()))) if st.unigram else math.nan
  print(f"  {'mean':14s} {mean_h0:8.3f} {ent.get('mean_bpb', math.nan):11.3f} "
        f"{blt.get('mean_bpb', math.nan):7.3f}")
  st.results.update(source=st.source, unigram_bits=st.unigram, seconds=st.seconds,
                    blt_export=str(st.blt_export), entropy_export=str(st.entropy_export))
  (st.run_dir / "results.json").write_text(json.dumps(st.results, indent=2) + "\n")
  print(f"\n  BLT checkpoint: {st.blt_export}  (e.g. python -m bltjax.score --checkpoint "
        f"{st.blt_export} --file FILE)\n  results: {st.run_dir / 'results.json'}")


def stage_decode(st: DemoState, prompt_bytes: int = 64, new_bytes: int = 96) -> None:
  """Greedy cached decoding of held-out prompts with the trained BLT (one batch)."""
  from bltjax import data, generation, nfe, weights

  _say("decoding held-out prompts with the trained BLT (greedy, cached)")
  cfg, params = weights.load_checkpoint(st.blt_export)
  prompts, names = [], []
  for dom in data.heldout_domains(st.data_cfg):
    doc = next(iter(data.make_eval_iterator(st.data_cfg, domain=dom, add_eos=False,
                                            max_docs=1)))
    body = data.ids_to_bytes(doc["ids"])
    cut = body[:prompt_bytes]
    prompts.append(cut[:len(cut.decode("utf-8", "ignore").encode())])  # whole characters
    names.append(dom)
  generation.generate(params, cfg, prompts, method="ar", max_new=new_bytes)  # compile once
  t = time.perf_counter()
  res = generation.generate(params, cfg, prompts, method="ar", max_new=new_bytes)
  dt = time.perf_counter() - t
  counts = nfe.param_counts(params)
  total = sum(len(r.new_ids) for r in res)
  out = []
  for dom, p, r in zip(names, prompts, res, strict=True):
    show = lambda b: b.decode("utf-8", "replace").replace("\n", "\\n")  # noqa: E731
    print(f"  [{dom}] {show(p)!s}\u2192{show(r.data)}")
    print(f"      {len(r.new_ids)} bytes, stop={r.reason}, NFE decoder={r.nfe_dec} "
          f"encoder+global={r.nfe_enc_global}, est. bandwidth "
          f"{nfe.bandwidth_gb(r.nfe_dec, r.nfe_enc_global, counts) * 1e3:.3f} MB")
    out.append({"domain": dom, "completion": r.data.decode("utf-8", "replace"),
                "nfe_decoder": r.nfe_dec, "nfe_encoder_global": r.nfe_enc_global})
  print(f"  {total} bytes in {dt:.2f}s = {total / dt:.0f} bytes/s (batch {len(prompts)})")
  st.results["decode"] = {"samples": out, "bytes_per_s": total / dt}
  st.decode_prompts, st.decode_ar = prompts, res


def stage_blts(st: DemoState, k: int = 8, new_bytes: int = 96) -> None:
  """BLT-S on stage_decode's prompts: byte-identical output, NFEs and bandwidth against AR."""
  from bltjax import generation, nfe, weights

  _say(f"BLT-S self-speculative decoding of the same prompts (draft window k = {k})")
  cfg, params = weights.load_checkpoint(st.blt_export)
  res = generation.generate(params, cfg, st.decode_prompts, method="blts", max_new=new_bytes,
                            options=generation.Options(draft_k=k))
  same = all(a.new_ids == b.new_ids for a, b in zip(st.decode_ar, res, strict=True))
  counts = nfe.param_counts(params)
  tot = lambda rs, f: sum(getattr(r, f) for r in rs)  # noqa: E731
  bw = lambda rs: nfe.bandwidth_gb(  # noqa: E731
    tot(rs, "nfe_dec"), tot(rs, "nfe_enc_global"), counts)
  n = sum(len(r.new_ids) + (r.reason == "eos") for r in res)
  print(f"  identical to greedy AR: {'yes' if same else 'NO'}; {n / tot(res, 'cycles'):.2f} bytes "
        f"per verification, acceptance {tot(res, 'accepted') / tot(res, 'drafted'):.3f}")
  print(f"  NFEs decoder {tot(res, 'nfe_dec')} (AR {tot(st.decode_ar, 'nfe_dec')}), "
        f"encoder+global {tot(res, 'nfe_enc_global')} "
        f"(AR {tot(st.decode_ar, 'nfe_enc_global')}); est. "
        f"bandwidth {bw(res) / bw(st.decode_ar):.2f}x AR")
  st.results["blts"] = {"k": k, "identical_to_ar": same, "cycles": tot(res, "cycles"),
                        "nfe_dec": tot(res, "nfe_dec"),
                        "nfe_enc_global": tot(res, "nfe_enc_global"),
                        "bandwidth_vs_ar": bw(res) / bw(st.decode_ar)}
  (st.run_dir / "results.json").write_text(json.dumps(st.results, indent=2) + "\n")


STAGES: list[Callable[[DemoState], None]] = [stage_data, stage_entropy, stage_calibrate,
                                             stage_blt, stage_report, stage_decode, stage_blts]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m bltjax.demo", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run_dir", default=str(REPO / "runs" / "demo"))
  parser.add_argument("--fresh", action="store_true", help="delete previous demo runs first")
  parser.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
  args = parser.parse_args(argv)
  from absl import logging

  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  st = DemoState(run_dir=Path(args.run_dir).absolute(), quick=args.quick)
  if args.fresh and st.run_dir.exists():
    shutil.rmtree(st.run_dir)
  st.run_dir.mkdir(parents=True, exist_ok=True)
  t0 = time.time()
  for stage in STAGES:
    t = time.time()
    stage(st)
    st.seconds[stage.__name__] = round(time.time() - t, 1)
  print(f"\ndemo done in {time.time() - t0:.0f}s ({st.seconds})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
