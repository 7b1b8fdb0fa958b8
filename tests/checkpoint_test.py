"""Checkpoints: iterator resume, restore onto another mesh, SIGTERM / kill -9 mid-run, export."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bltjax import weights
from bltjax.data import pipeline
from bltjax.modeling import model
from bltjax.training import checkpoint, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import tiny_train_config  # noqa: E402

CONFIG = str(ROOT / "tests" / "tiny_train_config.py") + ":blt"


def _state_for(tr: train.Trainer, seed: int = 0):
  params = tiny_train_config.random_params(tr.cfg, train.TRAINABLE[tr.r.train.task], seed)
  params = jax.device_put(params, tr.state_shardings["params"])
  opt = jax.jit(tr.tx.init, out_shardings=tr.state_shardings["opt_state"])(params)
  return {"params": params, "opt_state": opt, "step": jnp.int32(5)}


def test_data_iterator_resume_is_deterministic(tmp_path):
  c = tiny_train_config.get_config("blt")
  kw = dict(seq_len=32, batch_size=4, seed=7, process_index=0, process_count=1)
  it = pipeline.make_train_iterator(c.data, **kw)
  for _ in range(5):
    next(it)
  ck = checkpoint.TrainCheckpointer(tmp_path / "ck", async_save=True)
  ck.save(5, {"x": jnp.arange(3)}, it)
  expected = [next(it) for _ in range(3)]  # the run goes on while the save completes
  ck.wait()
  fresh = pipeline.make_train_iterator(c.data, **kw)
  state = ck.restore(5, checkpoint.abstract_tree({"x": jnp.arange(3)}), fresh)
  ck.close()
  np.testing.assert_array_equal(state["x"], np.arange(3))
  for want in expected:
    got = next(fresh)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_restore_onto_a_different_mesh_and_device_count(tmp_path):
  c = tiny_train_config.get_config("blt")
  c.mesh.shape = (1, 8, 1)
  src = train.Trainer.create(c, tmp_path)
  state = _state_for(src)
  with checkpoint.TrainCheckpointer(tmp_path / "ck") as ck:
    ck.save(5, state, wait=True)
  host = jax.device_get(state)
  for shape, devices in (((2, 2, 2), jax.devices()), ((1, 2, 1), jax.devices()[:2])):
    c.mesh.shape = shape
    dst = train.Trainer.create(c, tmp_path, devices=devices)
    with checkpoint.TrainCheckpointer(tmp_path / "ck") as ck:
      got = ck.restore(ck.latest_step(), dst.abstract_state)
    assert int(got["step"]) == 5
    leaves = jax.tree_util.tree_leaves_with_path(got)
    for (path, a), b, sh in zip(leaves, jax.tree.leaves(host),
                                jax.tree.leaves(dst.state_shardings)):
      assert a.sharding.is_equivalent_to(sh, a.ndim), path
      assert len(a.sharding.device_set) == len(devices)
      np.testing.assert_array_equal(np.asarray(a), b, err_msg=str(path))


def test_preemption_guard_sets_flag_on_sigterm():
  with checkpoint.PreemptionGuard() as guard:
    assert guard.requested is None
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    assert guard.requested == signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) is not guard._handle


# ------------------------------------------------------------------------------------------------
# Killed and restarted runs end with the parameters of an uninterrupted one.


def _env(cache: pathlib.Path) -> dict[str, str]:
  env = dict(os.environ)
  env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             # Less LLVM optimisation: these runs are short, compiling dominates them.
             XLA_FLAGS="--xla_force_host_platform_device_count=8 "
                       "--xla_backend_optimization_level=0")
  return env


def _cmd(workdir: pathlib.Path, *extra: str) -> list[str]:
  return [sys.executable, str(ROOT / "train.py"), f"--config={CONFIG}", f"--workdir={workdir}",
          "--config.train.steps=12", "--config.train.ckpt_every=4", "--config.train.eval_windows=0",
          *extra]


def _logged_steps(workdir: pathlib.Path) -> list[int]:
  f = workdir / "metrics.jsonl"
  if not f.exists():
    return []
  return [json.loads(line)["step"] for line in f.read_text().splitlines() if line.strip()]


def _start_and_wait(cmd, env, until, timeout=240) -> subprocess.Popen:
  p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  t0 = time.time()
  while not until():
    if p.poll() is not None:
      raise AssertionError(f"run ended before the interruption point:\n{p.stdout.read()}")
    if time.time() - t0 > timeout:
      p.kill()
      raise AssertionError("timed out waiting for the interruption point")
    time.sleep(0.05)
  return p


def _final_params(workdir: pathlib.Path):
  _, params = weights.load_checkpoint(workdir / "export")
  return jax.device_get(params)


def test_sigterm_and_kill9_then_restart_match_uninterrupted(tmp_path):
  cache = tmp_path / "jax_cache"
  env = _env(cache)
  ref = subprocess.run(_cmd(tmp_path / "ref"), env=env, capture_output=True, text=True,
                       timeout=600)
  assert ref.returncode == 0, ref.stdout + ref.stderr
  run = tmp_path / "run"
  slow = "--config.train.step_delay_s=0.4"

  # SIGTERM mid-run: the guard saves the current step and the process exits cleanly.
  p = _start_and_wait(_cmd(run, slow), env, lambda: max(_logged_steps(run), default=0) >= 5)
  p.send_signal(signal.SIGTERM)
  out = p.communicate(timeout=120)[0]
  assert p.returncode == 0, out
  saved = sorted(int(d.name) for d in (run / "checkpoints").iterdir() if d.name.isdigit())
  preempted_at = saved[-1]
  assert preempted_at % 4 != 0 and 5 <= preempted_at < 12, (saved, out)
  assert not (run / "export").exists()

  # Restart, then kill -9 after the step-8 checkpoint and at least one later step: the work
  # since that checkpoint is lost and redone.
  p = _start_and_wait(_cmd(run, slow), env,
                      lambda: (run / "checkpoints" / "8").is_dir()
                      and max(_logged_steps(run), default=0) >= 10)
  p.kill()
  p.communicate(timeout=60)
  assert p.returncode == -signal.SIGKILL

  done = subprocess.run(_cmd(run), env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout + done.stderr
  assert "resumed from" in done.stdout + done.stderr
  steps = _logged_steps(run)
  assert steps.count(9) == 2 and steps[-1] == 12  # step 9 ran, was lost, and ran again

  want, got = _final_params(tmp_path / "ref"), _final_params(run)
  assert set(got) == set(model.BLT_KEYS)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b, err_msg=str(path))  # bit-exact: same program, same data
  meta = weights.load_metadata(run / "export")["meta"]
  assert meta["task"] == "blt" and meta["step"] == 12


def test_nonfinite_loss_stops_the_run(tmp_path):
  c = tiny_train_config.get_config("entropy")
  c.data.source = "synthetic"
  c.train.update(steps=3, lr=1e30, warmup_steps=0, clip_norm=1e30, eval_windows=0,
                 ckpt_every=0, export=False)
  with pytest.raises(FloatingPointError, match="non-finite loss"):
    train.train_and_evaluate(c, tmp_path, log=lambda *a: None)
  recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert recs[-1]["event"] == "nan"
