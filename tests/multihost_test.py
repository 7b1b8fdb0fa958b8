"""Several processes on localhost (jax.distributed, coordinator on 127.0.0.1, 2 fake CPU devices
each): training from the real fixture text with async checkpoints, SIGKILL and restart, a lost
process, a workdir the processes do not share, and the export written by all of them.

Every run is a subprocess of `train.py`, as a user would start it on each host.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from bltjax import multihost, score, weights

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "tests" / "tiny_train_config.py")
UNSEEN = ROOT / "tests" / "fixtures" / "corpus" / "moby_dick" / "data.txt"  # held out


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, cache: pathlib.Path, **extra: str) -> dict[str, str]:
  env = dict(os.environ)
  env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                       "--xla_backend_optimization_level=0", **extra)
  return env


class Run:
  """`train.py` as `n` processes (or one), each logging to its own file."""

  def __init__(self, tmp: pathlib.Path, name: str, args: list[str], n: int, devices: int,
               workdirs: list[pathlib.Path] | None = None, **env: str):
    self.logs = [tmp / f"{name}-{i}.log" for i in range(n)]
    port = _free_port()
    cache = tmp.parent / "jax_cache"  # shared by the runs of one test
    self.procs = []
    for i in range(n):
      cmd = [sys.executable, str(ROOT / "train.py"), *args]
      if workdirs:
        cmd.append(f"--workdir={workdirs[i]}")
      if n > 1:
        cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={n}",
                f"--process_id={i}"]
      with open(self.logs[i], "a") as log:
        self.procs.append(subprocess.Popen(cmd, env=_env(devices, cache, **env), stdout=log,
                                           stderr=subprocess.STDOUT, text=True))

  def wait(self, timeout: float = 600) -> list[int]:
    t0 = time.time()
    for p in self.procs:
      try:
        p.wait(timeout=max(1.0, timeout - (time.time() - t0)))
      except subprocess.TimeoutExpired:
        self.kill()
        raise AssertionError(f"timed out:\n{self.output()}") from None
    return [p.returncode for p in self.procs]

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    for p in self.procs:
      p.wait(timeout=60)

  def output(self) -> str:
    return "\n".join(f"--- process {i}\n{log.read_text()}" for i, log in enumerate(self.logs))


def _train_args(task: str, workdir: pathlib.Path | None, *extra: str) -> list[str]:
  args = [f"--config={CONFIG}:{task}", "--config.train.steps=12", "--config.train.ckpt_every=4",
          "--config.train.eval_windows=8", "--config.data.source=fixture",
          # rows: the global batches do not depend on the process count (pipeline.py)
          "--config.data.shard_by=rows", *extra]
  return args + ([f"--workdir={workdir}"] if workdir else [])


def _steps(workdir: pathlib.Path) -> list[int]:
  f = workdir / "metrics.jsonl"
  if not f.exists():
    return []
  return [json.loads(x)["step"] for x in f.read_text().splitlines()
          if x.strip() and "train/loss" in x]


def _wait_for(run: Run, until, timeout: float = 300) -> None:
  t0 = time.time()
  while not until():
    if any(p.poll() is not None for p in run.procs):
      raise AssertionError(f"a process ended before the interruption point:\n{run.output()}")
    if time.time() - t0 > timeout:
      run.kill()
      raise AssertionError(f"timed out waiting for the interruption point:\n{run.output()}")
    time.sleep(0.05)


def _score(export: pathlib.Path) -> float:
  cfg, params = weights.load_checkpoint(export)
  return score.score_bytes(params, cfg, UNSEEN.read_bytes()[:1536], window=256, batch=4)["bpb"]


def _eval_bpb(workdir: pathlib.Path) -> float:
  recs = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["eval/mean_bpb"] for r in recs if "eval/mean_bpb" in r][-1]


def test_cluster_detection_from_the_environment():
  assert multihost.detect_cluster({}) is None
  assert multihost.detect_cluster({"TPU_WORKER_HOSTNAMES": "localhost"}) is None  # one host
  assert multihost.detect_cluster({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}) == "tpu"
  assert multihost.detect_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
  assert multihost.detect_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) == "slurm"
  assert multihost.detect_cluster({"SLURM_NTASKS": "4"}) is None  # outside a job
  assert multihost.detect_cluster({"OMPI_COMM_WORLD_SIZE": "2"}) == "mpi"
  with pytest.raises(ValueError, match="--process_id must be in"):
    multihost.maybe_initialize_distributed("127.0.0.1:1", 2, 5)
  with pytest.raises(ValueError, match="--coordinator_address"):
    multihost.maybe_initialize_distributed(None, 2, 0)
  assert multihost.maybe_initialize_distributed(None, 1, 0) is None  # one process: no init


def test_unshared_workdir_stops_at_start(tmp_path):
  # Two "hosts" that each see their own directory: both stop before training, naming the path.
  dirs = [tmp_path / "host0" / "run", tmp_path / "host1" / "run"]
  run = Run(tmp_path, "unshared", _train_args("entropy", None, "--config.data.source=synthetic"),
            2, 2, workdirs=dirs)
  assert run.wait(300) == [2, 2], run.output()
  for log in run.logs:
    lines = [x for x in log.read_text().splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "is not shared" in lines[0] and "/run" in lines[0], lines
  assert not (dirs[0] / "checkpoints").exists()


@pytest.mark.parametrize("victim", [1, 0])  # a worker, the coordinator
def test_a_lost_process_stops_the_other(tmp_path, victim):
  # The survivor must not wait in a collective forever: the coordination service misses the
  # victim's heartbeats (--heartbeat_timeout 5 s) and ends it with an error that says so.
  work = tmp_path / "lost"
  run = Run(tmp_path, "lost", _train_args(
    "entropy", work, "--config.data.source=synthetic", "--config.train.steps=100000",
    "--config.train.ckpt_every=0", "--config.train.eval_windows=0",
    "--config.train.step_delay_s=0.2", "--heartbeat_timeout=5"), 2, 2)
  _wait_for(run, lambda: max(_steps(work), default=0) >= 3)
  run.procs[victim].send_signal(signal.SIGKILL)
  t0 = time.time()
  rc = run.wait(120)
  took = time.time() - t0
  survivor = 1 - victim
  assert rc[victim] == -signal.SIGKILL
  assert rc[survivor] != 0, run.output()
  assert took < 60, f"process {survivor} took {took:.0f}s to stop"
  log = run.logs[survivor].read_text()
  assert "another task died" in log or "heartbeat" in log, log[-3000:]


def test_blt_two_processes_sigkill_restart_match_uninterrupted_and_one_process(tmp_path):
  one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
  # Reference runs: one process with 4 devices, two processes with 2 each.
  r1 = Run(tmp_path, "one", _train_args("blt", one), 1, 4)
  assert r1.wait() == [0], r1.output()
  r2 = Run(tmp_path, "two", _train_args("blt", two), 2, 2)
  assert r2.wait() == [0, 0], r2.output()
  out = r2.output()
  assert "process 0/2: 2 of 4 devices" in out and "process 1/2: 2 of 4 devices" in out

  # Both processes SIGKILLed after the step-8 checkpoint committed and step 9 ran, restarted.
  slow = "--config.train.step_delay_s=0.3"
  r3 = Run(tmp_path, "killed", _train_args("blt", killed, slow), 2, 2)
  _wait_for(r3, lambda: (killed / "checkpoints" / "8").is_dir()
            and max(_steps(killed), default=0) >= 9)
  r3.kill()
  assert not (killed / "export").exists()
  r4 = Run(tmp_path, "restarted", _train_args("blt", killed), 2, 2)
  assert r4.wait() == [0, 0], r4.output()
  assert "resumed from" in r4.output()
  steps = _steps(killed)
  assert steps.count(9) == 2 and steps[-1] == 12, steps  # step 9 ran, was lost, ran again

  # The export (written by both processes) is complete and equals the uninterrupted run's.
  _, p_two = weights.load_checkpoint(two / "export")
  _, p_killed = weights.load_checkpoint(killed / "export")
  _, p_one = weights.load_checkpoint(one / "export")
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(p_killed), jax.tree.leaves(p_two)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
  assert weights.load_metadata(killed / "export")["meta"]["step"] == 12
  s_one, s_two, s_killed = _score(one / "export"), _score(two / "export"), _score(
    killed / "export")
  assert s_killed == s_two
  np.testing.assert_allclose(s_two, s_one, rtol=1e-4)
  # Held-out evaluation with rows split over the processes equals one process's.
  np.testing.assert_allclose(_eval_bpb(two), _eval_bpb(one), rtol=1e-4)
  np.testing.assert_allclose(_eval_bpb(killed), _eval_bpb(two), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# decode.py with two processes: each decodes its share, process 0 folds the shards.


def _decode(tmp: pathlib.Path, name: str, ckpt, inp, out, n: int, *extra: str) -> Run:
  run = Run.__new__(Run)
  run.logs = [tmp / f"{name}-{i}.log" for i in range(n)]
  port = _free_port()
  run.procs = []
  for i in range(n):
    cmd = [sys.executable, str(ROOT / "decode.py"), "--checkpoint", str(ckpt), "--input",
           str(inp), "--output", str(out), "--max-new-bytes", "24", "--max-context", "128",
           "--batch-size", "1", *extra]
    if n > 1:
      cmd += ["--coordinator-address", f"127.0.0.1:{port}", "--num-processes", str(n),
              "--process-id", str(i), "--heartbeat-timeout", "10"]
    with open(run.logs[i], "a") as log:
      run.procs.append(subprocess.Popen(cmd, env=_env(2, tmp / "jax_cache"), stdout=log,
                                        stderr=subprocess.STDOUT, text=True))
  return run


def _records(path: pathlib.Path) -> list[dict]:
  return [{k: v for k, v in json.loads(x).items() if k != "seconds"}  # wall time differs
          for x in path.read_text().splitlines()]


def test_fold_merges_shards_in_input_order_each_id_once(tmp_path):
  from bltjax import paths
  from bltjax.decoding import decode_shards

  inp = tmp_path / "in.jsonl"
  inp.write_text("\n".join(json.dumps({"id": i, "prompt": "x"}) for i in ["a", 1, "b", 2, 3]))
  out = paths.as_path(tmp_path / "out.jsonl")
  out.write_text(json.dumps({"id": None, "line": 9, "error": "bad"}) + "\n" +
                 json.dumps({"id": "a", "r": 0}) + "\n")
  s0, s1 = decode_shards.shard_path(out, 0, 2), decode_shards.shard_path(out, 1, 2)
  s0.write_text(json.dumps({"id": "b", "r": 2}) + "\n" + json.dumps({"id": 3, "r": 4}) + "\n")
  s1.write_text(json.dumps({"id": "a", "r": 9}) + "\n" + json.dumps({"id": 2, "r": 3}) + "\n"
                + '{"id": 1, "r": ')  # cut by a kill: id 1 is not done
  assert decode_shards.done_ids(out) == {'"a"', '"b"', "2", "3"}
  assert decode_shards.fold(out, decode_shards.input_order(paths.as_path(inp))) == 3
  recs = [json.loads(x) for x in out.read_text().splitlines()]
  assert [r["id"] for r in recs] == [None, "a", "b", 2, 3]  # kept, then input order
  assert recs[1]["r"] == 0 and not decode_shards.shards(out)


@pytest.fixture(scope="module")
def decode_ref(tmp_path_factory):
  """(tmp dir, checkpoint, input with one bad line, its line count, 1-process records)."""
  import dataclasses

  from tests.model_fixtures import median_threshold, tiny_config, tiny_params

  tmp_path = tmp_path_factory.mktemp("decode")
  cfg = tiny_config(window=16)
  params = tiny_params(cfg)
  cfg = cfg.replace(patcher=dataclasses.replace(cfg.patcher,
                                                threshold=median_threshold(params, cfg)))
  ckpt = weights.save_checkpoint(tmp_path / "ckpt", params, cfg)
  words = ["Hello", "The cat", "Once upon", "def f(x):", "Lorem", "And God", "import os", "Yes"]
  lines = [json.dumps({"id": i if i % 3 else f"row{i}", "prompt": w}) for i, w in
           enumerate(words * 2)]
  lines.insert(5, "{not json")  # an error record, written once, first (as with one process)
  inp = tmp_path / "in.jsonl"
  inp.write_text("\n".join(lines) + "\n")
  one = _decode(tmp_path, "one", ckpt, inp, tmp_path / "one.jsonl", 1)
  assert one.wait() == [0], one.output()
  ref = _records(tmp_path / "one.jsonl")
  assert len(ref) == len(lines) and "error" in ref[0]
  return tmp_path, ckpt, inp, len(lines), ref


def test_decode_two_processes_sigkill_resume_match_one(tmp_path, decode_ref):
  _, ckpt, inp, n_lines, ref = decode_ref
  two = _decode(tmp_path, "two", ckpt, inp, tmp_path / "two.jsonl", 2)
  assert two.wait() == [0, 0], two.output()
  assert _records(tmp_path / "two.jsonl") == ref  # same records, same order
  assert not list(tmp_path.glob("two.jsonl.part-*"))

  # SIGKILL both once some results are in the shards; --resume with two processes again.
  out = tmp_path / "killed.jsonl"
  run = _decode(tmp_path, "killed", ckpt, inp, out, 2)
  _wait_for(run, lambda: sum(len(p.read_text().splitlines())
                             for p in tmp_path.glob("killed.jsonl.part-*")) >= 3, timeout=400)
  run.kill()
  left = sum(len(p.read_text().splitlines()) for p in tmp_path.glob("killed.jsonl.part-*"))
  assert 3 <= left < n_lines - 1
  again = _decode(tmp_path, "resumed", ckpt, inp, out, 2, "--resume")
  assert again.wait() == [0, 0], again.output()
  got = [r for r in _records(out) if "error" not in r]
  ids = [json.dumps(r["id"]) for r in got]
  assert len(ids) == len(set(ids)) == n_lines - 1  # each id exactly once
  key = lambda r: json.dumps(r["id"])  # noqa: E731
  assert sorted(got, key=key) == sorted([r for r in ref if "error" not in r], key=key)


def test_decode_one_model_across_two_processes_matches_one(tmp_path, decode_ref):
  # --mesh tensor=4 --mesh-over all: one mesh over both processes' 2 devices each; every weight
  # split over tensor is split across the hosts, the jitted loop runs with cross-process
  # collectives, and process 0 writes the records of the unsharded 1-process run.
  _, ckpt, inp, n_lines, ref = decode_ref
  out = tmp_path / "tp.jsonl"
  run = _decode(tmp_path, "tp", ckpt, inp, out, 2, "--mesh", "tensor=4", "--mesh-over", "all",
                "--batch-size", "16")  # one loop: each step runs collectives between the hosts
  assert run.wait() == [0, 0], run.output()
  log = run.output()
  assert "mesh {'data': 1, 'fsdp': 1, 'tensor': 4} over 4 devices of 2 process(es)" in log, log
  for i in range(2):  # each device holds a part of the weights, not all of them
    held, total = (int(x) for x in re.search(
      rf"process {i}: weights per device (\d+) of (\d+) bytes", log).groups())
    assert held < total, log
  assert _records(out) == ref  # same records, same order: each id once
  assert not list(tmp_path.glob("tp.jsonl.part-*"))

  # A mesh that does not cover every device of every process stops both with one line.
  bad = _decode(tmp_path, "bad", ckpt, inp, tmp_path / "bad.jsonl", 2, "--mesh", "tensor=2",
                "--mesh-over", "all")
  assert bad.wait(300) == [2, 2], bad.output()
  for log in bad.logs:
    err = [x for x in log.read_text().splitlines() if x.startswith("error:")]
    assert err == ["error: --mesh: product of {'data': 1, 'fsdp': 1, 'tensor': 2} is 2, but "
                   "there are 4 devices (2 processes x 2 devices, --mesh-over all)"], err
  assert not (tmp_path / "bad.jsonl").exists()


@pytest.mark.slow  # three more BLT-D compilations across processes (~5 min on 2 loaded cores)
def test_bltd_two_processes_sigkill_restart_match_one_process(tmp_path):
  bltd = "--config.model.diffusion.block_size=4"  # BLT-D loss (arXiv 2605.08044) on the tiny BLT
  one, killed = tmp_path / "one", tmp_path / "killed"
  r1 = Run(tmp_path, "one", _train_args("blt", one, bltd), 1, 4)
  assert r1.wait() == [0], r1.output()
  r3 = Run(tmp_path, "killed", _train_args("blt", killed, bltd, "--config.train.step_delay_s=0.3"),
           2, 2)
  _wait_for(r3, lambda: (killed / "checkpoints" / "4").is_dir()
            and max(_steps(killed), default=0) >= 5)
  r3.kill()
  r4 = Run(tmp_path, "restarted", _train_args("blt", killed, bltd), 2, 2)
  assert r4.wait() == [0, 0], r4.output()
  assert "resumed from" in r4.output() and _steps(killed)[-1] == 12
  cfg = weights.load_config(killed / "export")
  assert cfg.diffusion is not None and cfg.diffusion.block_size == 4
  np.testing.assert_allclose(_score(killed / "export"), _score(one / "export"), rtol=1e-4)
  np.testing.assert_allclose(_eval_bpb(killed), _eval_bpb(one), rtol=1e-4)
