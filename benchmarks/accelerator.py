"""One prepared accelerator run: the machine, exactness, the decoding table, HF and training.

Made for a single call on a lent GPU (docs/gpu_run.md: the command, the wheels to carry); runs
anywhere JAX runs. Sections, each time-boxed inside a global budget, each failure caught and
recorded, the JSON rewritten after every section and every table row:

  environment   device, JAX/jaxlib/CUDA versions; HBM bandwidth of a device copy (bytes read +
                written / time: the roofline's bandwidth) and the bf16 matmul peak (N^3)
  exactness     greedy BLT-S and BLT-DV against AR, byte for byte, on the table's geometry and
                prompts, batch 1: exact mode as decode.py --exact runs it (bf16 weights,
                fp32 compute and caches, fp32 matmuls at "highest" precision: XLA:GPU's
                default fp32 dot is TF32), warm-ups included, and the default bf16 mode
                (bf16 weights and compute, default precision)
  table_b1 / table_b64   benchmarks/fast_decode.py's table (`fast_decode.table`, the same code
                as on CPU) on configs/blt_1b.py geometry, random bf16 weights, entropy
                threshold calibrated to 4-byte patches: bytes/s, x AR, Eq. 8 ratio, counted
                weight-bytes ratio, roofline efficiency against the measured HBM bandwidth,
                BLT-S projected at the paper's bytes per verification
  hf            transformers' BltForCausalLM.generate (use_cache=False) on the same geometry and
                weights (bltjax.convert.hf.save_hf), bf16, batch 1: bytes/s and bltjax AR / HF
  train         the Trainer's step (benchmarks/train_long_rows.run: random entropy model,
                synthetic rows) on configs/blt_1b.py at 8,192 bytes per row: bytes/s, MFU
                (benchmarks/train_throughput.model_flops over the step's patch slots, against
                the measured bf16 peak), device memory (memory_stats; compiled peak)
  table_7b_b1   configs/blt_7b.py at batch 1 (AR, BLT-D-16, BLT-S k=8) if time is left

Then the targets, each printed as met / not met / not measured from this run's own figures.

  bash benchmarks/accelerator.sh                      # on the GPU: writes $OUT/accelerator.*
  python benchmarks/accelerator.py --smoke --out DIR  # CPU, tiny configs, seconds (make test)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Sizes of the full run and of the CPU smoke run.
FULL = dict(
  budget_s=420.0, config="configs/blt_1b.py", config_7b="configs/blt_7b.py", prompt_bytes=64,
  max_new=256, prompts_b1=4, batch_big=64, exact_k=8, exact_z=8, hf_new=64,
  train_config="configs/blt_1b.py", train_seq=8192, train_rows=2, train_steps=4,
  copy_bytes=4 << 30, matmul_n=8192, global_rows="1,16", min_7b_s=75.0, calib=(8, 2048),
  warm_threads=4,
  # Priority order: what the targets need first; a section's deadline drops the tail.
  methods_b1=["ar", "bltd:16:one_step", "blts:8", "bltdv:8:one_step", "bltdv:16:one_step",
              "blts:4", "blts:16", "bltd:4:one_step", "bltd:8:one_step",
              "bltd:16:confidence:0.99", "bltd:4:confidence:0.99", "bltd:8:confidence:0.99"],
  methods_big=["ar", "bltd:16:one_step", "blts:8", "bltdv:8:one_step", "bltdv:16:one_step",
               "bltd:8:one_step", "bltd:4:one_step", "blts:4", "blts:16"],
  methods_7b=["ar", "bltd:16:one_step", "blts:8"])
SMOKE = dict(
  budget_s=3600.0, config="configs/blt_tiny.py", config_7b=None, prompt_bytes=24, max_new=8,
  prompts_b1=2, batch_big=2, exact_k=4, exact_z=4, hf_new=4, train_config="configs/blt_tiny.py",
  train_seq=64, train_rows=1, train_steps=2, copy_bytes=8 << 20, matmul_n=256, global_rows="",
  min_7b_s=0.0, calib=(1, 128), warm_threads=2,
  methods_b1=["ar", "blts:4", "bltd:4:one_step", "bltdv:4:one_step"], methods_big=["ar"],
  methods_7b=[])
# Each section's share of the budget; a section ends by the cumulative mark (time a section
# leaves unused goes to the later ones). table_7b_b1 gets what is left.
SHARES = dict(environment=0.04, model=0.04, exactness=0.2, table_b1=0.22, table_big=0.12, hf=0.12,
              train=0.26, table_7b_b1=0.0)


class Run:
  """Shared state: options, the log, the JSON, the random model and the measured machine."""

  def __init__(self, a: argparse.Namespace, size: dict):
    self.a, self.size = a, size
    self.t0 = time.monotonic()
    self.out = Path(a.out)
    self.out.mkdir(parents=True, exist_ok=True)
    self.json_path = self.out / "accelerator.json"
    self.result = {"smoke": a.smoke, "budget_s": size["budget_s"], "sizes": size,
                   "sections": {}, "targets": []}
    self.model = None  # (cfg, params, source, Variants) of size["config"]
    self.hbm = None  # bytes/s
    self.peak = None  # bf16 FLOP/s
    self.current = ""  # the section running

  def log(self, msg: str) -> None:
    for line in str(msg).splitlines():
      print(f"[{time.monotonic() - self.t0:7.1f}s] {line}", flush=True)

  def save(self) -> None:
    self.result["elapsed_s"] = round(time.monotonic() - self.t0, 1)
    tmp = self.json_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(self.result, indent=1, default=_jsonable) + "\n")
    tmp.replace(self.json_path)

  def prompts(self, n: int, length: int | None = None) -> list[bytes]:
    from benchmarks.decode_throughput import prompts  # the committed fixture text

    return prompts(n, length or self.size["prompt_bytes"])

  def random_model(self, config: str):
    from benchmarks import fast_decode

    cfg, params, source = fast_decode.random_model(config, 0, 4.0,
                                                   self.prompts(*self.size["calib"]), "bfloat16")
    return cfg, params, source, fast_decode.Variants(params, cfg, True)

  def main_model(self):
    if self.model is None:
      self.log(f"random bf16 weights in {self.size['config']}'s geometry, calibrating ...")
      self.model = self.random_model(self.size["config"])
      self.log(self.model[2])
    return self.model


def _jsonable(x):
  try:
    return float(x)
  except (TypeError, ValueError):
    return str(x)


def _median_seconds(f, args, repeats: int) -> float:
  from benchmarks.fast_decode import median_seconds

  return median_seconds(f, args, repeats)


# ------------------------------------------------------------------------------------------------
# Sections. Each returns a dict (its status is added by the caller).


def environment(run: Run, deadline: float) -> dict:
  import jax
  import jax.numpy as jnp
  import jaxlib

  del deadline
  dev = jax.devices()[0]
  out = dict(platform=dev.platform, device_kind=dev.device_kind, devices=jax.device_count(),
             jax=jax.__version__, jaxlib=jaxlib.__version__, python=sys.version.split()[0],
             xla_flags=os.environ.get("XLA_FLAGS", ""),
             default_matmul_precision=str(getattr(jax.config, "jax_default_matmul_precision",
                                                  "unknown")))
  try:
    out["environment_info"] = jax.print_environment_info(return_string=True)
  except Exception as e:  # noqa: BLE001 (informational only)
    out["environment_info"] = f"unavailable: {e!r}"
  run.log(f"{dev.platform} {dev.device_kind}, jax {jax.__version__}, jaxlib {jaxlib.__version__}")
  # HBM: an elementwise pass over a buffer far larger than any cache; bytes read + written.
  n = run.size["copy_bytes"] // 4
  x = jnp.arange(n, dtype=jnp.float32)
  copy_s = _median_seconds(jax.jit(lambda v: v + 1.0), (x,), 10)
  run.hbm = 2 * n * 4 / copy_s
  del x
  # bf16 matmul peak: N^3, random data.
  m = run.size["matmul_n"]
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (m, m), jnp.bfloat16)
  b = jax.random.normal(kb, (m, m), jnp.bfloat16)
  mm_s = _median_seconds(jax.jit(lambda p, q: p @ q), (a, b), 10)
  run.peak = 2 * m**3 / mm_s
  out.update(copy_bytes=2 * n * 4, copy_ms=copy_s * 1e3, hbm_gb_s=run.hbm / 1e9,
             matmul_n=m, matmul_ms=mm_s * 1e3, bf16_peak_tflop_s=run.peak / 1e12)
  run.log(f"HBM copy {run.hbm / 1e9:.1f} GB/s (read + written, {2 * n * 4 >> 20} MiB); bf16 "
          f"{m}^3 matmul {run.peak / 1e12:.1f} TFLOP/s")
  return out


def model_setup(run: Run) -> dict:
  """The random bf16 model of the exactness section and the tables (and HF), built once."""
  from bltjax.decoding import nfe

  cfg, params, source, _ = run.main_model()
  c = nfe.param_counts(params)
  return dict(config=run.size["config"], source=source, threshold=cfg.patcher.threshold,
              params_enc=c.enc, params_global=c.glob, params_dec=c.dec, params_entropy=c.entropy)


def exactness(run: Run, deadline: float) -> dict:
  """BLT-S and BLT-DV against AR, per prompt at batch 1, in exact and default bf16 modes."""
  import jax

  from benchmarks import fast_decode
  from bltjax.decoding import generation

  cfg, _, _, variants = run.main_model()
  s = run.size
  prompts = run.prompts(s["batch_big"])[:s["prompts_b1"]]  # the table's batch-1 prompts
  specs = [fast_decode.parse_method(m) for m in
           ("ar", f"blts:{s['exact_k']}", f"bltdv:{s['exact_z']}:one_step")]
  out = dict(prompts=len(prompts), max_new=s["max_new"], modes={})
  slowest = 0.0
  # (name, compute dtype, matmul precision): exact mode is `precision.apply(exact=True)`'s.
  modes = (("exact", "float32", "highest"), ("bf16", "bfloat16", None))

  def call(spec, dtype, precision, prompt, budgets=None):
    pz, cz = variants(spec)
    # The precision is part of the compile key and thread-local: set it in the calling thread.
    with jax.default_matmul_precision(precision) if precision else contextlib.nullcontext():
      return generation.generate(pz, cz.replace(dtype=dtype), [prompt], method=spec.name,
                                 max_new=s["max_new"], options=spec.opt, budgets=budgets,
                                 stop_at_eos=False)[0].new_ids

  ready = set()
  if s["warm_threads"] > 1:  # every program of both modes compiled first, a few at a time
    for spec in specs:
      variants(spec)
    ready = fast_decode.warm_concurrently(
      {(spec.name, dt): functools.partial(call, spec, dt, prec, prompts[0], [1])
       for _, dt, prec in modes for spec in specs}, s["warm_threads"], deadline, run.log)

  def mode(name: str, dtype: str, precision: str | None) -> dict | None:
    nonlocal slowest
    res, row = {}, {"compute_dtype": dtype, "matmul_precision": precision or "default"}
    for spec in specs:
      warm = (spec.name, dtype) in ready
      if not warm and time.monotonic() + slowest > deadline:
        row["skipped"] = "time"  # what ran is still compared below
        break
      t = time.monotonic()
      res[spec.name] = [call(spec, dtype, precision, p) for p in prompts]
      if not warm:
        slowest = max(slowest, time.monotonic() - t)
    ar = res.get("ar")
    for spec in specs[1:]:
      got = res.get(spec.name)
      if ar is None or got is None:
        continue
      same = [x == y for x, y in zip(ar, got, strict=True)]
      pre = [fast_decode.common_prefix(x, y) for x, y in zip(ar, got, strict=True)]
      row[f"{spec.name} {spec.label}"] = dict(
        identical=sum(same), of=len(same), all_identical=all(same),
        mean_common_prefix=sum(pre) / len(pre),
        byte_agreement=sum(pre) / max(1, sum(len(x) for x in ar)))
      run.log(f"  {name:14s} {spec.name} {spec.label:14s} identical to AR on {sum(same)}/"
              f"{len(same)} prompts, mean common prefix {sum(pre) / len(pre):.1f} of "
              f"{s['max_new']} B")
    if ar is not None:
      row["ar_bytes"] = [len(x) for x in ar]
      row["_ar"] = ar
    return row

  for name, dtype, precision in modes:
    out["modes"][name] = mode(name, dtype, precision)
  exact = out["modes"]["exact"]
  # How far bf16 compute moves AR's own output from the exact mode's.
  ar_exact, ar_bf16 = exact.get("_ar"), out["modes"]["bf16"].get("_ar")
  if ar_exact and ar_bf16:
    pre = [fast_decode.common_prefix(x, y) for x, y in zip(ar_exact, ar_bf16, strict=True)]
    out["ar_bf16_vs_exact_mean_common_prefix"] = sum(pre) / len(pre)
  for m in out["modes"].values():
    m.pop("_ar", None)
  return out


def table(run: Run, deadline: float, batch: int, config: str | None = None,
          methods: list[str] | None = None, global_rows: str | None = None) -> dict:
  from benchmarks import fast_decode

  s = run.size
  config = config or s["config"]
  if config == s["config"]:
    cfg, params, source, variants = run.main_model()
  else:
    run.log(f"random bf16 weights in {config}'s geometry, calibrating ...")
    cfg, params, source, variants = run.random_model(config)
  prompts = run.prompts(max(batch, s["batch_big"]))[:batch if batch > 1 else s["prompts_b1"]]
  a = fast_decode.parse_args([
    "--random-weights", "--config", config, "--dtype", "bfloat16", "--max-new",
    str(s["max_new"]), "--batch", str(batch), "--methods", ",".join(methods or s["methods_b1"]),
    "--global-rows", s["global_rows"] if global_rows is None else global_rows])
  out = dict(config=config, batch=batch, prompts=len(prompts), max_new=s["max_new"],
             hbm_gb_s=run.hbm / 1e9 if run.hbm else None, rows=[])

  def on_row(row):
    out["rows"].append(row)
    run.save()

  run.result["sections"][run.current] = out  # rows appear in the JSON as they are measured
  fast_decode.table(a, cfg, params, source, prompts, variants=variants, bandwidth=run.hbm,
                    deadline=deadline, warm_threads=s["warm_threads"], on_row=on_row, log=run.log)
  return out


def hf_generate(run: Run, deadline: float) -> dict:
  import torch
  from transformers import BltForCausalLM

  from bltjax.convert import hf
  from bltjax.decoding import generation

  del deadline
  cfg, params, _, _ = run.main_model()
  s = run.size
  device = "cuda" if torch.cuda.is_available() else "cpu"
  with tempfile.TemporaryDirectory() as tmp:
    t = time.monotonic()
    hf.save_hf(Path(tmp) / "hf", params, cfg)
    try:  # transformers 5 names it dtype; 4.x torch_dtype
      model = BltForCausalLM.from_pretrained(Path(tmp) / "hf", dtype=torch.bfloat16)
    except TypeError:
      model = BltForCausalLM.from_pretrained(Path(tmp) / "hf", torch_dtype=torch.bfloat16)
    model = model.to(device).eval()
    run.log(f"HF model converted and loaded on {device} in {time.monotonic() - t:.1f}s")
  prompt = run.prompts(s["batch_big"])[0]
  ids = torch.tensor([generation.encode_prompt(prompt)], device=device)
  kw = dict(do_sample=False, use_cache=False, eos_token_id=2, pad_token_id=0)
  with torch.no_grad():
    model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)  # warm-up
    if device == "cuda":
      torch.cuda.synchronize()
    t = time.perf_counter()
    gen = model.generate(ids, max_new_tokens=s["hf_new"], min_new_tokens=s["hf_new"], **kw)
    if device == "cuda":
      torch.cuda.synchronize()
    dt = time.perf_counter() - t
  n = int(gen.shape[1] - ids.shape[1])
  out = dict(device=device, dtype="bfloat16", batch=1, prompt_bytes=len(prompt), new_bytes=n,
             seconds=dt, hf_bytes_per_s=n / dt, transformers=_version("transformers"),
             torch=torch.__version__)
  ar_row = _row(run, "table_b1", "ar")
  if ar_row:
    out["bltjax_ar_bytes_per_s"] = ar_row["bytes_per_s"]
    out["ratio"] = ar_row["bytes_per_s"] / out["hf_bytes_per_s"]
  run.log(f"HF generate {out['hf_bytes_per_s']:.1f} bytes/s ({n} new bytes); bltjax AR / HF = "
          f"{out.get('ratio', float('nan')):.1f}x (HF timed on {n} bytes: its per-byte cost "
          "grows with the sequence, so this ratio is a lower bound)")
  del model
  if device == "cuda":
    torch.cuda.empty_cache()
  return out


def train_step(run: Run, deadline: float) -> dict:
  import jax
  from absl import logging

  from benchmarks import train_long_rows
  from benchmarks.train_memory import load_config
  from benchmarks.train_throughput import model_flops

  del deadline
  logging.set_verbosity(logging.WARNING)
  s = run.size
  run.model = None  # the decoding weights go before the training state comes
  gc.collect()
  c = load_config(s["train_config"])
  c.train.seq_len, c.train.batch_size, c.train.grad_accum = s["train_seq"], s["train_rows"], 1
  c.train.rows_per_chip = 0
  c.mesh.shape = (1, 1, 1)
  dev = jax.devices()[0]
  before = _memory(dev)
  res, tr = train_long_rows.run(c, s["train_steps"], log=run.log)
  flops = model_flops(tr.cfg, s["train_seq"], tr.r.max_patches, s["train_rows"])
  res.update(config=s["train_config"], model_flops_per_step=flops["total"],
             model_flops_per_s=flops["total"] / res["step_s_median"], memory_before=before,
             memory_after=_memory(dev),
             note="MFU counts the global model over the step's max_patches slots (what runs)")
  if run.peak:
    res["mfu"] = res["model_flops_per_s"] / run.peak
  del tr
  gc.collect()
  run.log(f"train {s['train_config']} {s['train_rows']} x {s['train_seq']} bytes: "
          f"{res['bytes_per_s']:.0f} bytes/s, step {res['step_s_median'] * 1e3:.1f} ms, MFU "
          f"{100 * res.get('mfu', float('nan')):.1f}%, compile {res['compile_s']}s, peak "
          f"{_gib(res['memory_after'].get('peak_bytes_in_use'))} GiB")
  return res


def _memory(dev) -> dict:
  try:
    st = dev.memory_stats() or {}
  except Exception:  # noqa: BLE001 (CPU devices may not report)
    st = {}
  return {k: st[k] for k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit") if k in st}


def _gib(x) -> str:
  return "n/a" if x is None else f"{x / 2**30:.1f}"


def _version(pkg: str) -> str | None:
  try:
    from importlib.metadata import version

    return version(pkg)
  except Exception:  # noqa: BLE001
    return None


def _row(run: Run, section: str, method: str, setting: str | None = None) -> dict | None:
  for r in run.result["sections"].get(section, {}).get("rows", []):
    if r["method"] == method and (setting is None or r["setting"] == setting) and \
       "skipped" not in r:
      return r
  return None


# ------------------------------------------------------------------------------------------------
# Targets, from this run's own figures.


def targets(run: Run) -> list[dict]:
  s = run.size
  big = f"table_b{s['batch_big']}"
  out = []

  def add(name, value, ok):
    out.append(dict(target=name, value=value, met=None if value is None else bool(ok)))

  ar = _row(run, "table_b1", "ar")
  v = ar and ar.get("roofline_efficiency")
  add("AR >= 50% of the HBM roofline at batch 1", v, v is not None and v >= 0.5)
  zmax = "Z=16" if not run.a.smoke else "Z=4"
  d = _row(run, "table_b1", "bltd", f"{zmax} one_step")
  v = d and d.get("x_ar_wall")
  add(f"BLT-D-{zmax[2:]} one-step >= 3x AR bytes/s (batch 1)", v, v is not None and v >= 3)
  d = _row(run, big, "bltd", f"{zmax} one_step")
  v = d and d.get("x_ar_wall")
  add(f"BLT-D-{zmax[2:]} one-step >= 3x AR bytes/s (batch {s['batch_big']})", v,
      v is not None and v >= 3)
  k = 8 if not run.a.smoke else 4
  bs = _row(run, "table_b1", "blts", f"k={k}")
  v = bs and bs.get("projected_x_ar_paper")
  add(f"BLT-S k={k} faster than AR at the paper's bytes per verification", v,
      v is not None and v > 1)
  for sec in ("table_b1", big):
    for r in run.result["sections"].get(sec, {}).get("rows", []):
      if r["method"] == "bltdv" and "skipped" not in r:
        light = r["bytes_ratio"] < 0.5
        add(f"BLT-DV {r['setting']} (batch {r['batch']}) faster than AR where its weight bytes "
            f"< 1/2 AR's (bytes ratio {r['bytes_ratio']:.2f})",
            r["x_ar_wall"], (r["x_ar_wall"] > 1) if light else True)
        if not light:
          out[-1]["met"] = None
          out[-1]["note"] = "not applicable: weight bytes >= 1/2 AR's"
  h = run.result["sections"].get("hf", {})
  add(">= 10x HF generate at batch 1", h.get("ratio"), (h.get("ratio") or 0) >= 10)
  t = run.result["sections"].get("train", {})
  add("training MFU >= 40%", t.get("mfu"), (t.get("mfu") or 0) >= 0.4)
  return out


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--smoke", action="store_true",
                  help="CPU (JAX_PLATFORMS=cpu), tiny configs, a few bytes: checks the script")
  ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs" / "accelerator"),
                  help="directory for accelerator.json (default $OUT, else runs/accelerator)")
  ap.add_argument("--budget-s", type=float, default=None,
                  help="global time budget in seconds (default 420; smoke 3600: a busy CPU "
                       "skips nothing)")
  ap.add_argument("--warm-threads", type=int, default=None,
                  help="programs compiled at a time before a section measures (default 4; smoke "
                       "2; 0 or 1: each right before it runs, so no compile overlaps another's "
                       "autotuning on the device)")
  ap.add_argument("--cpu", action="store_true", help="run the full sizes on a CPU backend too")
  ap.add_argument("--sections", default="",
                  help="comma-separated subset of: " + ", ".join(SHARES))
  a = ap.parse_args(argv)
  if a.smoke:  # before JAX starts: the smoke run is a CPU run whatever the machine
    os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, str(ROOT))
  size = dict(SMOKE if a.smoke else FULL)
  if a.budget_s:
    size["budget_s"] = a.budget_s
  if a.warm_threads is not None:
    size["warm_threads"] = a.warm_threads
  names = list(SHARES)
  if a.sections:
    bad = set(a.sections.split(",")) - set(names)
    if bad:
      ap.error(f"--sections: unknown {sorted(bad)} (known: {names})")
  if not a.smoke and not a.cpu:
    import jax

    if jax.default_backend() == "cpu":  # `make bench` runs every script with no arguments
      print(f"skipped: no accelerator (devices {jax.devices()}; the full run is sized for a GPU; "
            "--smoke checks the script on a CPU, --cpu runs it anyway)")
      return 0
  run = Run(a, size)
  big = f"table_b{size['batch_big']}"
  steps = {
    "environment": lambda d: environment(run, d),
    "model": lambda d: model_setup(run),
    "exactness": lambda d: exactness(run, d),
    "table_b1": lambda d: table(run, d, 1),
    big: lambda d: table(run, d, size["batch_big"], methods=size["methods_big"], global_rows=""),
    "hf": lambda d: hf_generate(run, d),
    "train": lambda d: train_step(run, d),
    "table_7b_b1": lambda d: table(run, d, 1, config=size["config_7b"],
                                   methods=size["methods_7b"], global_rows=""),
  }
  shares = {(big if k == "table_big" else k): v for k, v in SHARES.items()}
  wanted = {(big if k == "table_big" else k) for k in a.sections.split(",") if k} or set(steps)
  end = run.t0 + size["budget_s"]
  mark = run.t0
  run.log(f"budget {size['budget_s']:.0f}s, output {run.json_path}")
  for name, fn in steps.items():
    mark += shares[name] * size["budget_s"]
    deadline = end if name == "table_7b_b1" else min(mark, end)
    run.current = name
    if name not in wanted:
      res = {"status": "skipped: not selected"}
    elif name == "table_7b_b1" and not size["config_7b"]:
      res = {"status": "skipped: not in the smoke run"}
    elif time.monotonic() >= deadline or (name == "table_7b_b1"
                                          and end - time.monotonic() < size["min_7b_s"]):
      res = {"status": "skipped: time"}
    else:
      run.log(f"== {name} (until {deadline - run.t0:.0f}s)")
      t = time.monotonic()
      try:
        res = dict(fn(deadline), status="ok")
      except Exception as e:  # noqa: BLE001 (one broken section must not lose the others)
        res = dict(run.result["sections"].get(name, {}), status="failed", error=repr(e)[:2000],
                   traceback=traceback.format_exc()[-4000:])
        run.log(f"{name} failed: {e!r}"[:2000])
      res["seconds"] = round(time.monotonic() - t, 1)
    run.result["sections"][name] = res
    run.result["targets"] = targets(run)
    run.save()
  run.log("targets (this run's own figures):")
  for t in run.result["targets"]:
    state = "n/a" if "note" in t else {True: "met", False: "NOT met",
                                       None: "not measured"}[t["met"]]
    v = t["value"]
    shown = "-" if v is None else f"{v:.3f}"
    run.log(f"  {state:12s} {t['target']}: {shown}{'  (' + t['note'] + ')' if 'note' in t else ''}")
  run.log(f"wrote {run.json_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
