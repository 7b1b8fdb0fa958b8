"""The papers' pipeline end to end at one scale: entropy model, BLT, BLT-D-Z, every suite x method.

  python -m bltjax.reproduce --scale tiny|small|1b --workdir DIR [--dry-run] [--fresh]
                             [--blt-weights DIR] [--limit SUITE=N ...] [--block-sizes 4,8,16]

Stages (each resumes: a finished training run restores its final checkpoint, an evaluation run
with --resume skips what it already wrote):

  data        the `make data` corpus when built, else the committed fixture; order-0 entropy of
              every held-out domain
  entropy     the byte-level entropy model (arXiv 2412.09871 §2.3)
  calibrate   θ with P(H > θ) = 1/4 on training text: ~4-byte patches (§4.3)
  blt         BLT, patched online by the frozen entropy model
  bltd-Z      BLT-D with blocks of Z bytes, started from the BLT's weights (`train.init_from_blt`,
              arXiv 2605.08044 §4; docs/bltd.md)
  heldout     held-out bits per byte of each model next to the order-0 entropy
  eval        `bltjax.eval` suites: likelihood suites (bpb, mc) once per model; generation suites
              (translation, humaneval) with AR and BLT-S on the BLT, AR, BLT-D and BLT-DV on each
              BLT-D (AR on a BLT-D gives the report's per-checkpoint baseline); the `gen` suite's
              grid (`gen_plan`: every method and setting at each temperature, scored under the BLT)
  samples     continuations of held-out prompts (read from the gen runs when there are any)
  report      `bltjax.report` over every evaluation run -> DIR/report/report.md + PNGs, and the
              `generation` rows of DIR/results.json (`report.generation_rows`)

`tiny` is what `make demo` runs (two CPU cores, ~15 minutes). `small` and `1b` are for
accelerators: `--dry-run` prints their plan (configs, steps, bytes, parameters, memory) without
running anything. `--blt-weights DIR` (e.g. `python -m bltjax.convert --from hf facebook/blt-1b
DIR`) skips the entropy and BLT pretraining and starts the BLT-D runs from those weights.

Longer than 600 lines: one stage table and the plan of every scale; the stages share one state
and resume logic that splitting would scatter.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bltjax.decoding import options

REPO = Path(__file__).resolve().parents[1]
TARGET_PATCH = 4.0  # mean patch length θ is calibrated for (BLT's release regime)
GENERATE = ("translation", "humaneval")
LIKELIHOOD = ("bpb", "mc")
GEN = "gen"  # generative quality per method and setting (bltjax/eval/gen.py)


class UsageError(Exception):
  """A bad option, file or directory: one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run: a configs/*.py file and what this scale changes in it."""

  config: str
  steps: int
  seq_len: int
  batch_size: int
  lr: float
  warmup: int
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # dotted key -> value


@dataclasses.dataclass(frozen=True)
class Scale:
  name: str
  needs: str  # hardware, in words
  entropy: Run
  blt: Run
  bltd: Run  # the BLT-D fine-tune (its config is `blt`'s with diffusion.block_size = Z)
  block_sizes: tuple[int, ...]
  limits: dict[str, int | None]  # suite -> --limit (None: the whole suite; 0: skipped)
  max_new: dict[str, int]  # generation suite -> --max-new-bytes
  eval_batch: int
  draft_k: int = 8
  est_s: dict[str, float] = dataclasses.field(default_factory=dict)  # stage -> seconds (ETA)
  # The gen suite's grid (arXiv 2605.08044's trade-offs): every method at each temperature
  # (0 = greedy), BLT-S at each k, BLT-D one-step and confidence decoding at each α.
  temperatures: tuple[float, ...] = (1.0, 0.7, 0.0)
  draft_ks: tuple[int, ...] = (4, 8, 16)
  alphas: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)
  gen_max_new: int = 128
  prompt_bytes: int = 64
  gen_batch: int = 16


SCALES = {
  "tiny": Scale(
    name="tiny", needs="2 CPU cores, 4 GB RAM; ~15 minutes (`make demo`)",
    entropy=Run("entropy_tiny", 400, 256, 16, 6e-3, 50),
    # Rows of 8: at this size more updates beat bigger batches byte for byte (held-out mean
    # 2.93 vs 3.14 bits/byte for the same 2 M bytes, hash tables of 8191 vs 4099 rows too).
    blt=Run("blt_tiny", 1000, 256, 8, 6e-3, 60),
    # BLT-D-8: the block stream starts from nothing (MASK inputs, no block ever seen), so it gets
    # the BLT's learning rate; 32 blocks per row (of ~66 patches) halve the step. 200 steps: at
    # 100 the causal path has not recovered from the high rate (held-out 3.224 vs the BLT's
    # 2.934); at 100-250 the masked NLL stays near the order-0 entropy (docs/demo.md, "BLT-D").
    bltd=Run("blt_tiny", 200, 256, 8, 6e-3, 20,
             {"model.diffusion.max_blocks": 32, "model.diffusion.stratified_t": True}),
    # Task suites (translation, HumanEval, MC) need models far larger than a CPU demo trains
    # (BLEU 0, MC at chance): the demo runs the gen suite instead; held-out bpb comes from the
    # training runs' own evaluation (the heldout stage).
    block_sizes=(8,), limits={"bpb": 0, "mc": 0, "translation": 0, "humaneval": 0, "gen": 16},
    max_new={"translation": 96, "humaneval": 128}, eval_batch=8,
    est_s={"data": 5, "entropy": 150, "calibrate": 5, "blt": 370, "bltd": 150, "heldout": 1,
           "eval": 250, "samples": 1, "report": 3}),
  "small": Scale(
    name="small", needs="one accelerator with >= 16 GB (e.g. a T4/L4 GPU or TPU v4-8 core); "
    "about an hour; ~20 M non-hash parameters (configs/bench_20m.py)",
    entropy=Run("entropy_tiny", 5_000, 1024, 64, 3e-3, 200,
                {"model.entropy.dim": 256, "model.entropy.n_layers": 4}),
    blt=Run("bench_20m", 20_000, 1024, 64, 1e-3, 1000,
            {"model.patcher.mode": "entropy", "model.patcher.max_patch_length": 16}),
    bltd=Run("bench_20m", 5_000, 1024, 64, 5e-4, 200,
             {"model.patcher.mode": "entropy", "model.patcher.max_patch_length": 16}),
    block_sizes=(4, 8, 16), limits={"bpb": None, "mc": None, "translation": 200, "humaneval": None,
                                    "gen": 64},
    max_new={"translation": 512, "humaneval": 512}, eval_batch=32,
    est_s={"entropy": 600, "blt": 2400, "bltd": 1800, "eval": 1800}),
  "1b": Scale(
    name="1b", needs="a TPU v5p-64 / 8 x H100-80GB class pod for pretraining (BLT-1B at 8k bytes "
    "with fsdp 8: ~48 GiB per device with remat; docs/benchmarks.md 'Training memory'); with "
    "--blt-weights "
    "(converted facebook/blt-1b) only the BLT-D fine-tunes and the evaluation run (8 accelerators "
    "of >= 40 GB)",
    entropy=Run("entropy_100m", 100_000, 8192, 64, 1e-3, 500),
    blt=Run("blt_1b", 100_000, 8192, 256, 4e-4, 2000),
    bltd=Run("blt_1b", 20_000, 8192, 256, 1e-4, 500),
    block_sizes=(4, 8, 16), limits={"bpb": None, "mc": None, "translation": None,
                                    "humaneval": None, "gen": 128},
    max_new={"translation": 512, "humaneval": 512}, eval_batch=64),
}


@dataclasses.dataclass
class State:
  scale: Scale
  workdir: Path
  blt_weights: Path | None = None
  data_cfg: Any = None
  source: str = ""
  unigram: dict[str, float] = dataclasses.field(default_factory=dict)
  entropy_export: Path | None = None
  threshold: float | None = None
  max_patches: int = 0  # the BLT runs' patch budget (0: the auto rule)
  blt_export: Path | None = None
  bltd_exports: dict[int, Path] = dataclasses.field(default_factory=dict)
  results: dict[str, Any] = dataclasses.field(default_factory=dict)
  seconds: dict[str, float] = dataclasses.field(default_factory=dict)
  cpu_seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # this process's CPU
  runs: list[str] = dataclasses.field(default_factory=list)
  t0: float = 0.0


# ------------------------------------------------------------------------------------------------
# Configs.


def load_config(name: str):
  path = REPO / "configs" / f"{name}.py"
  if not path.is_file():  # an installed bltjax: the copy that ships as package data
    path = Path(__file__).resolve().parent / "_configs" / f"{name}.py"
  if not path.is_file():
    raise UsageError(f"{path}: no such config file")
  from bltjax.training.train_config import load_config_file

  return load_config_file(path)


def run_config(run: Run, data_cfg: Any = None, *, task: str = "blt", block_size: int = 0,
               progress: bool = True):
  """`run.config` with this scale's steps, shapes, optimiser and overrides."""
  from bltjax.config import ConfigError
  from bltjax.training import train_config

  c = load_config(run.config)
  for k, v in run.overrides.items():
    try:
      train_config.set_key(c, k, v)
    except ConfigError as e:
      raise UsageError(str(e)) from None
  c.train.update(task=task, steps=run.steps, seq_len=run.seq_len, batch_size=run.batch_size,
                 lr=run.lr, warmup_steps=run.warmup, progress=progress)
  if block_size:
    c.model.diffusion.block_size = block_size
  if data_cfg is not None:
    c.data = data_cfg
  return c


def _small_cpu(c) -> None:
  # CPU runs: evaluate once at the end on few windows, checkpoint once (orbax saves are slow).
  c.train.update(eval_every=0, eval_windows=16, ckpt_every=0, log_every=50,
                 async_checkpoint=False, tensorboard=False)


# ------------------------------------------------------------------------------------------------
# Progress.


def _say(st: State, stage: str, msg: str) -> None:
  est = st.scale.est_s
  done = sum(est.get(_kind(s), 0) for s in st.seconds)
  total = sum(est.get(_kind(s), 0) for s in _stage_names(st))
  spent = time.time() - st.t0
  eta = ""
  if est and total:
    # This machine's speed against the estimates; a resumed stage takes seconds, so never
    # promise faster than them.
    ratio = max(1.0, spent / done) if done else 1.0
    left = max(0.0, ratio * (total - done))
    eta = f"  [{spent:.0f}s elapsed, ETA ~{left / 60:.1f} min]"
  print(f"\n== {stage}: {msg}{eta}", flush=True)


def _kind(stage: str) -> str:
  return "bltd" if stage.startswith("bltd-") else stage


def _stage_names(st: State) -> list[str]:
  names = ["data"]
  if st.blt_weights is None:
    names += ["entropy", "calibrate", "blt"]
  names += [f"bltd-{z}" for z in st.scale.block_sizes]
  return names + ["heldout", "eval", "samples", "report"]


# ------------------------------------------------------------------------------------------------
# Stages.


def stage_data(st: State) -> None:
  """The materialised corpus if `make data` ran, else the committed fixture; unigram entropy."""
  import numpy as np

  from bltjax.data import corpus, pipeline
  from bltjax.data.stats import unigram_entropy_bits
  from bltjax.training import train as T
  from bltjax.training.train_config import resolve

  st.source = corpus.default_source()
  st.data_cfg = pipeline.default_data_config(source=st.source)
  _say(st, "data", f"source={st.source} "
       f"({'data/ from `make data`' if st.source == 'default' else 'tests/fixtures/corpus'})")
  c = run_config(st.scale.entropy, st.data_cfg, task="entropy")
  _small_cpu(c)
  for dom, batches in T.eval_sets(resolve(c, 1)).items():
    # Order-0 entropy of exactly the bytes that held-out bpb is computed on.
    scored = [b["ids"][b["score"] & (b["ids"] >= 4)] - 4 for b in batches]
    st.unigram[dom] = unigram_entropy_bits(np.concatenate(scored))
    print(f"  held-out {dom:14s} {sum(map(len, scored)):7d} bytes  "
          f"order-0 entropy {st.unigram[dom]:.3f} bits/byte")


def _train(st: State, c, name: str) -> dict[str, Any]:
  from bltjax.training import train as T

  out = T.train_and_evaluate(c, st.workdir / name)
  st.results[name] = {k.removeprefix("eval/"): v for k, v in out["eval"].items()}
  st.results[name]["steps"] = int(out["step"])
  return out


def stage_entropy(st: State) -> None:
  """The byte-level entropy model that places BLT's patch boundaries."""
  r = st.scale.entropy
  _say(st, "entropy", f"training the entropy model (configs/{r.config}.py, {r.steps} steps of "
       f"{r.batch_size} x {r.seq_len} bytes)")
  c = run_config(r, st.data_cfg, task="entropy")
  _small_cpu(c)
  st.entropy_export = Path(_train(st, c, "entropy")["export"])


def calibrate_threshold(export: Path, data_cfg: Any, target: float, batches: int = 8,
                        seq_len: int = 128, batch_size: int = 16) -> tuple[float, float, int]:
  """θ with P(H > θ) = 1 / target on training text: a start follows each such byte
  (arXiv 2412.09871 §2.3), so patches average ~`target` bytes (§4.3 picks θ for a target patch
  size).

  Returns:
    (θ, the mean patch length it gives on those batches, forced starts included, and the most
    patches any of their rows of `seq_len` ids holds).
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  from bltjax import weights
  from bltjax.data import pipeline
  from bltjax.modeling import model
  from bltjax.training import losses

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
  n_tok = n_patch = most = 0
  for b in data:
    s = np.asarray(starts(params, {k: jnp.asarray(v) for k, v in b.items()}))
    per_row = (s[:, :-1] & b["valid"]).sum(axis=1)
    n_tok += int(b["valid"].sum())
    n_patch += int(per_row.sum())
    most = max(most, int(per_row.max()))
  return theta, n_tok / max(n_patch, 1), most


def patch_budget(most: int, seq_len: int) -> int:
  """`train.max_patches` from the most patches a calibration row held, plus 1/8 slack.

  The auto budget assumes 2-byte patches (ceil((S + 1) / 2) + 1 slots); at ~4-byte patches half
  of the global model's slots, the pooling queries and BLT-D's blocks (one per slot) would be
  padding. A rarer, longer row is cut at a patch boundary (`truncated_frac` reports it).
  """
  return min(seq_len + 1, most + -(-most // 8) + 1)


def stage_calibrate(st: State) -> None:
  _say(st, "calibrate", f"entropy threshold for ~{TARGET_PATCH:g}-byte patches")
  seq_len = st.scale.blt.seq_len
  theta, mean_len, most = calibrate_threshold(st.entropy_export, st.data_cfg, TARGET_PATCH,
                                              seq_len=seq_len)
  st.threshold, st.max_patches = theta, patch_budget(most, seq_len)
  st.results["patcher"] = {"threshold": theta, "mean_patch_len_train": mean_len,
                           "max_patches": st.max_patches}
  print(f"  θ = {theta:.4f} nats -> mean patch {mean_len:.2f} bytes on training text; at most "
        f"{most} patches per {seq_len}-id row -> train.max_patches = {st.max_patches}")


def _blt_like(st: State, r: Run, block_size: int = 0):
  c = run_config(r, st.data_cfg, block_size=block_size)
  c.model.patcher.update(mode="entropy", threshold=st.threshold)
  c.train.update(entropy_checkpoint=str(st.entropy_export), max_patches=st.max_patches)
  if st.scale.name == "tiny":
    _small_cpu(c)
  return c


def stage_blt(st: State) -> None:
  r = st.scale.blt
  _say(st, "blt", f"training BLT (configs/{r.config}.py at this scale's geometry, {r.steps} "
       f"steps of {r.batch_size} x {r.seq_len} bytes), entropy patching online")
  st.blt_export = Path(_train(st, _blt_like(st, r), "blt")["export"])
  print(f"  held-out mean {st.results['blt']['mean_bpb']:.3f} bits/byte")


def stage_bltd(st: State, z: int) -> None:
  r = st.scale.bltd
  _say(st, f"bltd-{z}", f"training BLT-D-{z} from the BLT's weights ({r.steps} steps, blocks of "
       f"{z} bytes)")
  if st.blt_weights is not None:
    c = run_config(r, st.data_cfg, block_size=z)
    c.model.update(_model_section(st.blt_weights))
    c.model.diffusion.block_size = z
    c.train.entropy_checkpoint = str(st.blt_weights)
    init = st.blt_weights
  else:
    c, init = _blt_like(st, r, block_size=z), st.blt_export
  c.train.init_from_blt = str(init)
  out = _train(st, c, f"bltd-{z}")
  st.bltd_exports[z] = Path(out["export"])
  print(f"  held-out mean (causal path) {st.results[f'bltd-{z}']['mean_bpb']:.3f} bits/byte")


def _model_section(path: Path) -> dict[str, Any]:
  """The `model` section of a checkpoint's config, for a run that fine-tunes its weights."""
  from bltjax import weights

  try:
    return weights.load_config(path).to_dict()
  except (weights.CheckpointError, OSError) as e:
    raise UsageError(f"--blt-weights: {e}") from e


def stage_heldout(st: State) -> None:
  _say(st, "heldout", "held-out bits per byte (lower is better)")
  names = [n for n in ("entropy", "blt", *[f"bltd-{z}" for z in st.scale.block_sizes])
           if n in st.results]
  print(f"  {'domain':14s} {'order-0':>8s} " + " ".join(f"{n:>9s}" for n in names))
  for dom, h0 in st.unigram.items():
    cells = " ".join(f"{st.results[n].get(f'{dom}/bpb', math.nan):9.3f}" for n in names)
    print(f"  {dom:14s} {h0:8.3f} {cells}")
  mean_h0 = sum(st.unigram.values()) / max(len(st.unigram), 1)
  cells = " ".join(f"{st.results[n].get('mean_bpb', math.nan):9.3f}" for n in names)
  print(f"  {'mean':14s} {mean_h0:8.3f} {cells}")
  if "blt" in st.results:
    lens = [st.results["blt"].get(f"{dom}/mean_patch_len", math.nan) for dom in st.unigram]
    print(f"  BLT mean patch {sum(lens) / max(len(lens), 1):.2f} bytes (mean over domains)")
  _write_results(st)


def stage_samples(st: State, prompt_bytes: int = 64, new_bytes: int = 96) -> None:
  """Continuations of one held-out prompt per domain: from the gen suite's runs when the plan
  has them (no extra decoding), else greedy AR on the BLT and BLT-D on a BLT-D."""
  from bltjax import data, weights
  from bltjax.decoding import generation

  gen_runs = [r for r in st.runs if Path(r).name.startswith(f"{GEN}-")]
  if gen_runs:
    return _gen_samples(st, gen_runs)
  _say(st, "samples", "greedy continuations of held-out prompts")
  prompts, names = [], []
  for dom in data.heldout_domains(st.data_cfg):
    doc = next(iter(data.make_eval_iterator(st.data_cfg, domain=dom, add_eos=False,
                                            max_docs=1)))
    cut = data.ids_to_bytes(doc["ids"])[:prompt_bytes]
    prompts.append(cut[:len(cut.decode("utf-8", "ignore").encode())])  # whole characters
    names.append(dom)
  models = []
  if st.blt_export is not None:
    models.append(("BLT", st.blt_export, _method(lambda m: m.baseline)))
  if st.bltd_exports:
    z = max(st.bltd_exports)
    models.append((f"BLT-D-{z}", st.bltd_exports[z], _method(lambda m: m.sweep == "alpha")))
  show = lambda b: b.decode("utf-8", "replace").replace("\n", "\\n")  # noqa: E731
  out = {}
  for label, path, method in models:
    cfg, params = weights.load_checkpoint(path)
    t = time.perf_counter()
    res = generation.generate(params, cfg, prompts, method=method, max_new=new_bytes)
    dt = time.perf_counter() - t
    print(f"  {label} ({method}, {dt:.1f}s with compilation):")
    for dom, p, r in zip(names, prompts, res, strict=True):
      print(f"    [{dom}] {show(p)}\u2192{show(r.data)}")
    out[label] = [{"domain": d, "prompt": p.decode("utf-8", "replace"),
                   "completion": r.data.decode("utf-8", "replace")}
                  for d, p, r in zip(names, prompts, res, strict=True)]
  st.results["samples"] = out
  _write_results(st)


def _gen_samples(st: State, runs: list[str]) -> None:
  """Prints and stores one continuation per domain of a few gen runs: AR and BLT-D at the
  highest α, at the lowest sampling temperature and greedy."""
  from bltjax.eval.runner import EXAMPLES, read_records

  sc = st.scale
  t_low = min((t for t in sc.temperatures if t), default=0.0)
  a_hi = f"a{max(sc.alphas):g}" if sc.alphas else "onestep"
  base, blocks = _method(lambda m: m.baseline), _method(lambda m: m.sweep == "alpha")
  want = [f"{GEN}-BLT-{base}-{_tname(t)}" for t in (t_low, 0.0)]
  want += [f"{GEN}-BLT-D-{z}-{blocks}-{a_hi}-{_tname(t)}" for z in sc.block_sizes
           for t in (t_low, 0.0)]
  _say(st, "samples", "continuations of held-out prompts (from the gen runs): "
       + ", ".join(want))
  show = lambda b: b.replace("\n", "\\n")  # noqa: E731
  out = {}
  for name in want:
    path = next((Path(r) for r in runs if Path(r).name == name), None)
    if path is None:
      continue
    recs, seen = [], set()
    for r in read_records(path / EXAMPLES):
      if r["group"] not in seen:
        seen.add(r["group"])
        recs.append(r)
    print(f"  {name}:")
    for r in recs:
      print(f"    [{r['group']}] {show(r['prompt'])}\u2192{show(r['completion'])}")
    out[name] = [{"domain": r["group"], "prompt": r["prompt"], "completion": r["completion"],
                  "gen_bpb": r["bpb"]} for r in recs]
  st.results["samples"] = out
  _write_results(st)


def eval_plan(st: State) -> list[tuple[str, str, Path, str, list[str]]]:
  """[(run name, model label, checkpoint, suite, bltjax.eval argv tail)] for every suite x
  method at this scale."""
  sc = st.scale
  # (label, checkpoint, BLT-D weights): the denoising methods need them (options.INFO).
  models = []
  blt = st.blt_export or st.blt_weights or st.workdir / "blt" / "export"
  models.append(("BLT", blt, False))
  for z in sc.block_sizes:
    models.append((f"BLT-D-{z}", st.bltd_exports.get(z, st.workdir / f"bltd-{z}" / "export"),
                   True))
  base = _method(lambda m: m.baseline)
  plan = []
  for suite in (*LIKELIHOOD, *GENERATE):
    limit = sc.limits.get(suite)
    if limit == 0:
      continue
    for label, ckpt, blocks in models:
      # generation: the model's own methods and the baseline; likelihoods: the baseline
      methods = [m.name for m in options.INFO.values() if m.baseline or m.denoises == blocks]
      for m in (methods if suite in GENERATE else (base,)):
        tail = ["--suite", suite, "--method", m, "--name", label,
                "--batch-size", str(sc.eval_batch)]
        if limit:
          tail += ["--limit", str(limit)]
        if suite in GENERATE:
          tail += ["--max-new-bytes", str(sc.max_new[suite]), "--draft-k", str(sc.draft_k)]
        if suite == "bpb" and sc.name == "tiny":
          tail += ["--max-doc-bytes", "4096", "--window", "1024"]
        plan.append((f"{suite}-{label}-{m}", label, ckpt, suite, tail))
  if sc.limits.get(GEN) != 0:
    plan += gen_plan(st, models, blt)
  return plan


def gen_plan(st: State, models, reference: Path) -> list[tuple[str, str, Path, str, list[str]]]:
  """The gen suite's runs: each model's methods at each setting and temperature, every
  generation scored under the BLT (the AR reference)."""
  sc = st.scale
  out = []
  for label, ckpt, blocks in models:
    # The baseline (AR) runs on the BLT only: the BLT-D rows compare with the BLT's AR sampling
    # (the BLT-D's causal path is the BLT fine-tuned; its held-out bpb is in the heldout stage).
    methods = [m for m in options.INFO.values() if m.denoises == blocks]
    for t in sc.temperatures:
      for m in methods:
        for tag, extra in _gen_settings(sc, m, t):
          out.append((f"gen-{label}-{tag}-{_tname(t)}", label, ckpt, GEN,
                      _gen_tail(sc, label, m.name, t, reference, extra)))
  return out


def _gen_settings(sc: Scale, m: options.MethodInfo, t: float) -> list[tuple[str, list[str]]]:
  """(run tag, bltjax.eval flags) of one method's points in the gen sweep at temperature t: the
  values its record sweeps (draft windows; one-step and each α of the confidence rule), else its
  defaults, under its `sample_rule` when it samples."""
  if m.sweep == "draft_k":
    return [(f"{m.name}-k{k}", ["--draft-k", str(k)]) for k in sc.draft_ks]
  if m.sweep == "alpha":
    return [(f"{m.name}-onestep", ["--rule", "one_step"])] + [
      (f"{m.name}-a{a:g}", ["--rule", "confidence", "--alpha", str(a)]) for a in sc.alphas]
  return [(m.name, ["--rule", m.sample_rule] if t and m.sample_rule else [])]


def _method(pred) -> str:
  """The name of the first method (`options.INFO`'s order) whose record satisfies `pred`."""
  return next(m.name for m in options.INFO.values() if pred(m))


def _tname(t: float) -> str:
  return f"T{t:g}" if t else "greedy"


def _gen_tail(sc: Scale, label: str, method: str, t: float, reference: Path,
              extra: list[str]) -> list[str]:
  tail = ["--suite", GEN, "--method", method, "--name", label, "--batch-size",
          str(sc.gen_batch), "--max-new-bytes", str(sc.gen_max_new), "--prompt-bytes",
          str(sc.prompt_bytes), "--temperature", f"{t:g}", "--reference", str(reference), *extra]
  if sc.limits.get(GEN):
    tail += ["--limit", str(sc.limits[GEN])]
  return tail


def stage_eval(st: State) -> None:
  from bltjax.eval.__main__ import main as eval_main

  plan = eval_plan(st)
  _say(st, "eval", f"{len(plan)} evaluation runs (bltjax.eval; suites "
       f"{sorted({p[3] for p in plan})})")
  t0 = time.time()
  for i, (name, _, ckpt, _, tail) in enumerate(plan):
    out = st.workdir / "eval" / name
    left = (time.time() - t0) / i * (len(plan) - i) if i else math.nan
    print(f"  [{i + 1}/{len(plan)}] {name}" + (f" (eval ETA ~{left:.0f}s)" if i else ""),
          flush=True)
    argv = ["--checkpoint", str(ckpt), "--output", str(out), "--quiet", *tail]
    if (out / "results.json").is_file():
      argv.append("--resume")
    rc = eval_main(argv)
    if rc != 0:
      raise RuntimeError(f"bltjax.eval {' '.join(argv)} exited with {rc}")
    st.runs.append(str(out))


def stage_report(st: State) -> None:
  from bltjax import report

  out = st.workdir / "report"
  _say(st, "report", f"tables and figures -> {out}")
  runs = [report.load_run(r) for r in st.runs]
  path = report.write_report(runs, out)
  st.results["generation"] = report.generation_rows(runs)
  text = path.read_text()
  print(text.split("## Figures")[0].split("\n", 2)[-1].rstrip())
  print(f"\n  report: {path}  (figures: {', '.join(p.name for p in sorted(out.glob('*.png')))})")
  st.results["report"] = str(path)


def _write_results(st: State) -> None:
  st.results.update(scale=st.scale.name, source=st.source, unigram_bits=st.unigram,
                    seconds=st.seconds, cpu_seconds=st.cpu_seconds, threshold=st.threshold,
                    max_patches=st.max_patches,
                    entropy_export=st.entropy_export and str(st.entropy_export),
                    blt_export=st.blt_export and str(st.blt_export),
                    bltd_exports={z: str(p) for z, p in st.bltd_exports.items()})
  (st.workdir / "results.json").write_text(json.dumps(st.results, indent=2, default=str) + "\n")


# ------------------------------------------------------------------------------------------------
# Plan and driver.


def describe(st: State) -> str:
  """The plan, one line per stage: configs, steps, bytes, parameters, memory, evaluation runs."""
  from bltjax import config as C
  from bltjax.training.train_config import resolve

  sc = st.scale
  lines = [f"bltjax.reproduce --scale {sc.name} --workdir {st.workdir}", f"needs: {sc.needs}"]

  def train_line(stage: str, r: Run, task: str, z: int = 0) -> str:
    c = run_config(r, task=task, block_size=z, progress=False)
    c.model.patcher.mode = "static"  # resolving needs no entropy export
    try:
      res = resolve(c, 1)
    except ValueError as e:
      raise UsageError(f"configs/{r.config}.py at --scale {sc.name}: {e}") from e
    n = C.num_params(res.model)
    n_train = n["entropy"] if task == "entropy" else n["total"] - n["entropy"]
    state_gib = n_train * 16 / 2**30  # fp32 params + grads + Adam m, v
    tokens = r.steps * r.batch_size * r.seq_len
    over = ", ".join(f"{k}={v}" for k, v in r.overrides.items())
    return (f"  {stage:10s} configs/{r.config}.py{' + ' + over if over else ''}"
            f"{f' + diffusion.block_size={z}' if z else ''}: {r.steps} steps x {r.batch_size} x "
            f"{r.seq_len} bytes = {tokens / 1e6:.1f} M bytes, lr {r.lr:g}; {n_train / 1e6:.1f} M "
            f"trainable params, ~{state_gib:.2f} GiB of fp32 params + Adam state")

  lines.append("stages:")
  lines.append("  data       `make data` corpus (else the committed fixture); order-0 entropy")
  if st.blt_weights is None:
    lines.append(train_line("entropy", sc.entropy, "entropy"))
    lines.append(f"  calibrate  θ for ~{TARGET_PATCH:g}-byte patches on training text")
    lines.append(train_line("blt", sc.blt, "blt"))
  else:
    lines.append(f"  (entropy, blt: skipped; weights from {st.blt_weights})")
  for z in sc.block_sizes:
    lines.append(train_line(f"bltd-{z}", sc.bltd, "blt", z) + " (init_from_blt)")
  lines.append("  heldout    held-out bpb per domain; samples: greedy continuations")
  plan = eval_plan(st)
  lines.append(f"  eval       {len(plan)} runs of python -m bltjax.eval:")
  for name, _, ckpt, _, tail in plan:
    lines.append(f"    {name:28s} --checkpoint {ckpt} {' '.join(tail)}")
  w = st.workdir
  lines.append(f"  report     python -m bltjax.report {w}/eval/* --out {w}/report")
  if sc.est_s:
    lines.append(f"estimated time on an idle 2-core CPU: ~{sum(sc.est_s.values()) / 60:.0f} min")
  return "\n".join(lines)


def _parse_limits(items: list[str], scale: Scale) -> dict[str, int | None]:
  limits = dict(scale.limits)
  for it in items:
    suite, _, n = it.partition("=")
    if suite not in limits or not n.strip().isdigit():
      raise UsageError(f"--limit {it}: expected SUITE=N with SUITE in {sorted(limits)} (0 skips)")
    limits[suite] = int(n)
  return limits


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, exit status 2
    self.exit(2, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
  ap = _Parser(prog="python -m bltjax.reproduce", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--scale", required=True, choices=sorted(SCALES))
  ap.add_argument("--workdir", required=True, help="runs, exports, eval runs and report go here")
  ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
  ap.add_argument("--fresh", action="store_true", help="delete WORKDIR first")
  ap.add_argument("--blt-weights", default=None,
                  help="a bltjax BLT checkpoint with its entropy model: skip pretraining")
  ap.add_argument("--limit", action="append", default=[], metavar="SUITE=N",
                  help="examples per suite (bpb: documents per domain); 0 skips the suite")
  ap.add_argument("--block-sizes", default=None, help="BLT-D block sizes, e.g. 4,8,16")
  ap.add_argument("--steps-scale", type=float, default=1.0,
                  help="multiply every training run's steps (e.g. 0.02 for a smoke run)")
  return ap


def build_state(a) -> State:
  sc = SCALES[a.scale]
  changes: dict[str, Any] = {"limits": _parse_limits(a.limit, sc)}
  if a.block_sizes:
    try:
      changes["block_sizes"] = tuple(int(z) for z in a.block_sizes.split(","))
    except ValueError as e:
      raise UsageError(f"--block-sizes {a.block_sizes}: expected integers like 4,8,16") from e
    if any(z < 1 for z in changes["block_sizes"]):
      raise UsageError(f"--block-sizes {a.block_sizes}: must be positive")
  if a.steps_scale != 1.0:
    if not a.steps_scale > 0:
      raise UsageError(f"--steps-scale {a.steps_scale}: must be positive")
    for k in ("entropy", "blt", "bltd"):
      r = getattr(sc, k)
      steps = max(2, round(r.steps * a.steps_scale))
      changes[k] = dataclasses.replace(r, steps=steps, warmup=min(r.warmup, steps // 2))
  sc = dataclasses.replace(sc, **changes)
  blt_weights = None
  if a.blt_weights:
    blt_weights = Path(a.blt_weights).absolute()
    _model_section(blt_weights)  # a one-line error now rather than after the data stage
  return State(scale=sc, workdir=Path(a.workdir).absolute(), blt_weights=blt_weights)


def run(st: State) -> State:
  """Runs every stage of `st.scale` in order (each resumes from what WORKDIR already holds)."""
  from absl import logging

  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  st.workdir.mkdir(parents=True, exist_ok=True)
  st.t0 = time.time()
  steps: list[tuple[str, Any]] = [("data", stage_data)]
  if st.blt_weights is None:
    steps += [("entropy", stage_entropy), ("calibrate", stage_calibrate), ("blt", stage_blt)]
  steps += [(f"bltd-{z}", lambda s, z=z: stage_bltd(s, z)) for z in st.scale.block_sizes]
  steps += [("heldout", stage_heldout), ("eval", stage_eval), ("samples", stage_samples),
            ("report", stage_report)]
  for name, fn in steps:
    t, c = time.time(), time.process_time()
    fn(st)
    st.seconds[name] = round(time.time() - t, 1)
    st.cpu_seconds[name] = round(time.process_time() - c, 1)
    _write_results(st)
  total = time.time() - st.t0
  # CPU seconds (all threads) next to wall seconds: on a shared machine the wall time grows with
  # the other load, the CPU time much less.
  print(f"\ndone in {total:.0f}s ({total / 60:.1f} min): "
        + ", ".join(f"{k} {v:.0f}s" for k, v in st.seconds.items())
        + f"\nCPU seconds: {sum(st.cpu_seconds.values()):.0f} ("
        + ", ".join(f"{k} {v:.0f}" for k, v in st.cpu_seconds.items()) + ")", flush=True)
  st.results["total_seconds"] = round(total, 1)
  _write_results(st)
  return st


def main(argv: list[str] | None = None) -> int:
  a = parser().parse_args(argv)
  try:
    st = build_state(a)
    if a.dry_run:
      print(describe(st))
      return 0
    if a.fresh and st.workdir.exists():
      shutil.rmtree(st.workdir)
    run(st)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
