"""Batch decoding CLI: `python decode.py --checkpoint DIR --method ar --input in.jsonl ...`.

Input lines: {"id": ..., "prompt": "text"} or {"id": ..., "prompt_b64": "..."} (arbitrary bytes).
Output lines (written and flushed as each batch finishes): id, completion (UTF-8, invalid bytes
replaced), completion_b64, new_bytes, stop_reason, nfe {decoder, encoder_global, passes},
est_bandwidth_gb, seconds (the batch's wall time, shared by its rows); `--method blts` and
`bltdv` add `speculation` {window, cycles, bytes_per_cycle, acceptance (accepted / drafted draft
bytes), agreement (position-wise draft = verifier)}, `bltd` adds `blocks` {block_size, blocks,
bytes_per_block, decoder_steps_per_block}. A malformed input line is
reported on stderr and as an error record {"id", "line", "error"}; the other lines still decode.
Each row samples from its own key (seed, id), so its output never depends on its batch.

Several processes (`--num-processes`/`--process-id`/`--coordinator-address`, or a cluster that
JAX detects): each decodes its share of the rows into a shard next to --output, and process 0
folds the shards into --output in input order (`bltjax.decoding.decode_shards`; docs/multihost.md).
With `--mesh ... --mesh-over all`, one mesh spans every process's devices instead (one model split
across hosts): every process runs every row in lockstep and process 0 writes --output.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from bltjax.decoding import options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(prog="decode.py", description=__doc__.splitlines()[0])
  ap.add_argument("--checkpoint", required=True, help="bltjax checkpoint directory")
  options.add_args(ap)
  ap.add_argument("--input", required=True, help="prompts JSONL")
  ap.add_argument("--output", required=True, help="results JSONL (appended with --resume)")
  ap.add_argument("--max-new-bytes", type=int, default=256)
  ap.add_argument("--batch-size", type=int, default=8)
  ap.add_argument("--stop", nargs="*", default=[], help="stop strings (cut from the completion)")
  ap.add_argument("--resume", action="store_true", help="skip ids already in --output")
  ap.add_argument("--max-context", type=int, default=8192,
                  help="bytes of prompt + generation one row may hold")
  ap.add_argument("--truncate-left", action="store_true",
                  help="left-truncate prompts longer than the context instead of failing them")
  ap.add_argument("--mesh", default=None,
                  help="sharded decoding: the mesh as data,fsdp,tensor sizes (e.g. 1,1,-1) or "
                  "named sizes (e.g. tensor=4; unnamed axes 1): weights and the decode state "
                  "(rows over data x fsdp, heads over tensor)")
  ap.add_argument("--mesh-over", default="host", choices=("host", "all"),
                  help="several processes: 'host' = each process a mesh over its own devices, "
                  "decoding its share of the rows; 'all' = one mesh over every process's devices "
                  "(one model across hosts): every process runs every row, process 0 writes")
  ap.add_argument("--coordinator-address", default=None,
                  help="several processes: host:port of process 0 (docs/multihost.md)")
  ap.add_argument("--num-processes", type=int, default=None, help="several processes: how many")
  ap.add_argument("--process-id", type=int, default=None, help="several processes: this one")
  ap.add_argument("--heartbeat-timeout", type=int, default=None,
                  help="seconds before the others stop when one process dies (default 100)")
  a = ap.parse_args(argv)
  for key in ("max_new_bytes", "batch_size", "max_context"):
    if getattr(a, key) <= 0:
      ap.error(f"--{key.replace('_', '-')} must be positive")
  if a.max_new_bytes >= a.max_context:
    ap.error("--max-new-bytes must be smaller than --max-context")
  if msg := options.check_args(a):
    ap.error(msg)
  if a.mesh_over == "all" and not a.mesh:
    ap.error("--mesh-over all needs --mesh (e.g. --mesh tensor=-1)")
  return a


def read_prompts(path: Path, done_ids: set[str], quiet: bool = False
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """Returns (rows to decode, error records) in file order; never raises on a bad line."""
  rows, errors = [], []
  with open(path, encoding="utf-8", errors="surrogateescape") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        rec = json.loads(line)
        if not isinstance(rec, dict) or "id" not in rec:
          raise ValueError("expected an object with an 'id'")
        if "prompt_b64" in rec:
          data = base64.b64decode(rec["prompt_b64"], validate=True)
        elif isinstance(rec.get("prompt"), str):
          data = rec["prompt"].encode("utf-8", errors="surrogateescape")
        else:
          raise ValueError("expected 'prompt' (string) or 'prompt_b64'")
      except (ValueError, binascii.Error) as e:
        rid = rec.get("id") if isinstance(locals().get("rec"), dict) else None
        errors.append({"id": rid, "line": lineno, "error": f"{where}: {e}"})
        if not quiet:
          print(f"error: {where}: {e}", file=sys.stderr)
        continue
      key = json.dumps(rec["id"])
      if key in done_ids:
        continue
      rows.append({"id": rec["id"], "prompt": data, "line": lineno, "where": where})
  return rows, errors


def done_ids_of(path: Path) -> set[str]:
  """Ids with a result in `path` or in shards a killed multi-process run left next to it (a
  line cut by a crash does not count: that id is decoded again)."""
  from bltjax import paths  # noqa: PLC0415
  from bltjax.decoding import decode_shards  # noqa: PLC0415

  return decode_shards.done_ids(paths.as_path(path))


def row_seed(seed: int, rid: Any) -> int:
  return zlib.crc32(json.dumps([seed, rid]).encode()) & 0x7FFFFFFF


class _Discard:
  """The output of a process that does not write (--mesh-over all, process > 0)."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def write(self, text: str) -> None:
    pass

  def flush(self) -> None:
    pass


def _fail(msg: str) -> int:
  print(f"error: {msg}", file=sys.stderr)
  return 2


def main(argv: list[str] | None = None) -> int:
  a = parse_args(argv)
  import jax  # noqa: PLC0415 - keep --help fast

  from bltjax import multihost, paths, precision, weights  # noqa: PLC0415
  from bltjax.decoding import decode_shards, generation, nfe  # noqa: PLC0415

  try:
    multihost.maybe_initialize_distributed(a.coordinator_address, a.num_processes, a.process_id,
                                           heartbeat_s=a.heartbeat_timeout)
  except ValueError as e:
    return _fail(str(e))
  pi, pc = jax.process_index(), jax.process_count()
  if pc > 1:
    multihost.log_process("[decode]")
  try:
    out_path = paths.as_path(a.output, "--output")
  except ValueError as e:
    return _fail(str(e))
  # Unusable inputs stop here with one line (exit 2), before the output is touched.
  try:
    with open(a.input, "rb"):
      pass
  except OSError as e:
    return _fail(f"--input {a.input}: {e.strerror or e}")
  try:
    stored_cfg = weights.load_config(a.checkpoint)
  except (weights.CheckpointError, OSError, ValueError) as e:
    return _fail(f"--checkpoint: {e}")
  shardings = mesh = None
  if a.mesh:
    from bltjax.config import ConfigError  # noqa: PLC0415
    from bltjax.modeling import model, sharding  # noqa: PLC0415

    # --mesh-over host: each process decodes its own rows on its own devices; all: one mesh over
    # every device of every process (jax.devices()), every process runs every row in lockstep.
    devices = jax.local_devices() if pc > 1 and a.mesh_over == "host" else None
    where = f"{pc} processes x {jax.local_device_count()}" if devices is None and pc > 1 else ""
    try:
      mesh = sharding.make_mesh(sharding.parse_mesh_arg(a.mesh), devices, key="--mesh")
    except ConfigError as e:
      return _fail(f"{e}{f' ({where} devices, --mesh-over all)' if where else ''}")
    shardings = model.param_shardings(stored_cfg, mesh)
    if pi == 0:
      print(f"[decode] mesh {dict(mesh.shape)} over {mesh.size} devices of "
            f"{len({d.process_index for d in mesh.devices.flat})} process(es)", file=sys.stderr)
  split = a.mesh_over == "host"  # several processes: each decodes its share of the rows
  writes = split or pi == 0  # --mesh-over all: every process has every result; process 0 writes
  if pi == 0:  # shards of a killed run: folded in (--resume) or dropped with the old output
    if a.resume:
      decode_shards.fold(out_path, decode_shards.input_order(paths.as_path(a.input)))
    else:
      for p in [out_path, *decode_shards.shards(out_path)]:
        if p.exists():
          p.unlink()
  multihost.barrier("bltjax-decode-start")
  done = done_ids_of(out_path) if a.resume else set()
  rows, errors = read_prompts(Path(a.input), done, quiet=pi != 0)

  try:
    cfg, params = weights.load_checkpoint(a.checkpoint, dtype=a.dtype, shardings=shardings)
  except (weights.CheckpointError, OSError) as e:
    return _fail(f"--checkpoint: {e}")
  cfg, params = precision.apply(cfg, params, a.dtype, exact=a.exact)  # compute and cache dtype
  opt = options.from_args(a)
  try:  # refuse a checkpoint the method cannot decode before any output is written
    generation.check(a.method, cfg, opt)
  except ValueError as e:
    print(f"error: {a.checkpoint}: --method {a.method}: {e}", file=sys.stderr)
    return 2
  counts = nfe.param_counts(params)
  if mesh is not None:  # what one device holds: less than the model when it is really split
    held = max(sharding.shard_bytes_per_device(params).values())
    total = sum(x.nbytes for x in jax.tree.leaves(params))
    print(f"[decode] process {pi}: weights per device {held} of {total} bytes", file=sys.stderr)
  if mesh is None:  # two matrix-vector products per block input (a fused q|k|v cannot shard)
    from bltjax.modeling import layers  # noqa: PLC0415

    params = layers.fuse_projections(params)
  stops = tuple(s.encode("utf-8") for s in a.stop)
  max_prompt = a.max_context - a.max_new_bytes - 1  # BOS

  ok_rows = []
  for r in rows:
    if len(r["prompt"]) > max_prompt:
      if a.truncate_left:
        r["prompt"] = r["prompt"][-max_prompt:]
      else:
        msg = (f"{r['where']}: prompt of {len(r['prompt'])} bytes exceeds --max-context "
               f"{a.max_context} minus --max-new-bytes {a.max_new_bytes} (use --truncate-left)")
        errors.append({"id": r["id"], "line": r["line"], "error": msg})
        if pi == 0:
          print(f"error: {msg}", file=sys.stderr)
        continue
    ok_rows.append(r)

  from tqdm import tqdm  # noqa: PLC0415

  mine = ok_rows[pi::pc] if split else ok_rows  # this process's share (all rows with one)
  if pi == 0 and errors:
    with paths.LineLog(out_path) as out:
      for e in errors:
        out.write(json.dumps(e) + "\n")
  target = out_path if pc == 1 or not split else decode_shards.shard_path(out_path, pi, pc)
  with (paths.LineLog(target, flush_s=float("inf")) if writes  # flushed after each batch
        else _Discard()) as out:
    bar = tqdm(total=len(mine), unit="prompt", desc=f"decode[{a.method}]", file=sys.stderr,
               disable=pi != 0)
    for i in range(0, len(mine), a.batch_size):
      batch = mine[i:i + a.batch_size]
      t0 = time.perf_counter()
      prompts = [r["prompt"] for r in batch]
      res = generation.generate(params, cfg, prompts, method=a.method,
                                max_new=a.max_new_bytes, options=opt, stops=stops,
                                seeds=[row_seed(a.seed, r["id"]) for r in batch], mesh=mesh)
      dt = time.perf_counter() - t0
      for r, g in zip(batch, res, strict=True):
        rec = {"id": r["id"], "completion": g.data.decode("utf-8", errors="replace"),
               "completion_b64": base64.b64encode(g.data).decode("ascii"),
               "new_bytes": len(g.data), "stop_reason": g.reason,
               "nfe": g.nfe,
               "est_bandwidth_gb": nfe.bandwidth_gb(g.nfe_dec, g.nfe_enc_global, counts),
               "seconds": round(dt, 4)}
        rec.update(generation.stats(a.method, g, cfg, opt))
        out.write(json.dumps(rec) + "\n")
      out.flush()
      bar.update(len(batch))
    bar.close()
  if pc > 1:
    multihost.barrier("bltjax-decode-done")
    if pi == 0 and split:
      decode_shards.fold(out_path, decode_shards.input_order(paths.as_path(a.input)))
    multihost.barrier("bltjax-decode-folded")
  return 1 if errors and not ok_rows else 0


if __name__ == "__main__":
  sys.exit(main())
