"""bf16 end to end (bltjax/precision.py): the precision modes set weights, compute and cache
dtypes; bf16-compute training tracks fp32; every decoding method runs in bf16; exact mode (fp32
compute over bf16 weights) keeps BLT-S and BLT-DV greedy byte-identical to AR greedy.

Tolerances from bf16's unit roundoff u = 2^-8 (8 significand bits, round to nearest: relative
error <= 2^-9 per rounding, 2^-8 between two roundings). A tiny stack rounds each activation a
few tens of times; independent errors add in quadrature, so one logit drifts by a few u: logits
within 5e-2 relative norm. The loss is a mean over ~250 targets, which averages those errors
down by ~sqrt(250): within 1e-3 relative (measured 3.6e-5 over 4 Adam steps). Gradients round in
the backward as often again and are not averaged as much: within 5e-2 relative norm per leaf
(~13u; measured at most 1.4e-2). Bits per byte under bf16 weights *and* compute (the weights'
rounding changes the model): within 2e-2. fp32 differs by ~1e-6.
"""

import base64
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bltjax import precision, score
from bltjax import weights as weights_io
from bltjax.decoding import decode, engine, generation
from bltjax.decoding.generation import Options
from bltjax.modeling import model
from bltjax.training import losses, optim, train
from bltjax.training.train_config import resolve
from tests import tiny_train_config
from tests.model_fixtures import PROMPTS, bltd_setup

LOSS_RTOL, LOGIT_RTOL, GRAD_RTOL, BPB_RTOL = 1e-3, 5e-2, 5e-2, 2e-2
MAX_NEW = 24


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _cache_dtypes(state) -> set:
  return {state.enc.k[0].dtype, state.dec.k[0].dtype, state.glob_k[0].dtype, state.lat_k.dtype,
          state.patch_k.dtype, state.pend_k.dtype}


def test_precision_modes_set_weight_compute_and_cache_dtypes():
  cfg, params = bltd_setup()
  same_cfg, same = precision.apply(cfg, params)
  assert same_cfg is cfg and same is params  # no flag: the checkpoint as stored
  spec = engine.CacheSpec(max_patches=8, max_len=32, patch_cap=8, max_q=1)
  for dtype, exact, compute in (("bfloat16", False, jnp.bfloat16),
                                ("bfloat16", True, jnp.float32),
                                ("float32", False, jnp.float32)):
    c, p = precision.apply(cfg, params, dtype, exact=exact)
    assert c.param_dtype == dtype and c.dtype == jnp.dtype(compute).name
    assert {x.dtype for x in jax.tree.leaves(p)} == {jnp.dtype(dtype)}
    st = engine.empty_state(p, c, 2, spec)
    assert _cache_dtypes(st) == {jnp.dtype(compute)}
    assert st.logits.dtype == jnp.float32 and st.H_last.dtype == jnp.float32
    assert st.ent.k[0].dtype == jnp.float32  # the entropy model computes in fp32 always
  # The benchmark's spelling of exact mode: bf16 params, cfg.dtype replaced by float32.
  c16, p16 = precision.apply(cfg, params, "bfloat16")
  assert precision.apply(cfg, params, "bfloat16", exact=True)[0] == dataclasses.replace(
    c16, dtype="float32")
  with pytest.raises(ValueError, match="dtype"):
    precision.apply(cfg, params, "int8")


def _dot_operand_dtypes(fn, *args) -> set:
  """(dtype, shape) of both operands of every dot_general in fn's jaxpr (sub-jaxprs included)."""
  seen = set()

  def subs(v):  # jaxprs nested in an equation's params (jit, scan, cond, custom_vjp, remat)
    if isinstance(v, (list, tuple)):
      for x in v:
        yield from subs(x)
    elif hasattr(v, "eqns"):
      yield v
    elif hasattr(getattr(v, "jaxpr", None), "eqns"):
      yield v.jaxpr

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        seen.add(tuple((str(v.aval.dtype), v.aval.shape) for v in eqn.invars))
      for sub in subs(list(eqn.params.values())):
        walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return seen


def test_bf16_compute_training_tracks_fp32():
  """fp32 params, model.dtype=bfloat16: the loss's matmuls read bf16, its logits and loss are
  fp32; loss and gradients stay within bf16's precision of the fp32 run, and a few Adam steps
  learn alike."""
  r = resolve(tiny_train_config.get_config("blt"), 8)
  params = jax.tree.map(jnp.asarray, tiny_train_config.random_params(r.model, model.BLT_KEYS))
  rows = train._SyntheticRows(0, 32)
  batches = [{k: jnp.asarray(np.stack([rows.row(i, j)[k] for j in range(8)]))
              for k in rows.row(0, 0)} for i in range(4)]
  tx, _ = optim.make_optimizer(r.train)

  def run(cfg):
    loss_fn = train.get_loss_fn(cfg, "blt", r.max_patches)

    def loss(p, b):
      return loss_fn(p, cfg, dict(b, start=losses.train_patch_starts(p, cfg, b)), None)[0]

    @jax.jit
    def step(p, o, b):
      val, g = jax.value_and_grad(loss)(p, b)
      u, o = tx.update(g, o, p)
      return optax.apply_updates(p, u), o, val, g

    p, o, vals, grads = params, tx.init(params), [], []
    for b in batches:
      p, o, val, g = step(p, o, b)
      vals.append(float(val))
      grads.append(g)
    return loss, np.array(vals), grads[0]  # the first step's: both runs at the same params

  _, l32, g32 = run(r.model)
  cfg16 = r.model.replace(dtype="bfloat16")
  loss16, l16, g16 = run(cfg16)
  # Structure: every matmul of the forward reads bf16 operands (its output may be fp32: scores,
  # logits); the backward never runs an fp32 x fp32 matmul. Its only fp32 operands are the
  # cotangents of fp32 outputs (attention scores, logits), which XLA upcasts the other to.
  fwd = _dot_operand_dtypes(loss16, params, batches[0])
  assert fwd and all({dt for dt, _ in o} == {"bfloat16"} for o in fwd), fwd
  bwd = _dot_operand_dtypes(jax.value_and_grad(loss16), params, batches[0])
  assert len(bwd) > len(fwd) and all("bfloat16" in {dt for dt, _ in o} for o in bwd), bwd
  logits = jax.eval_shape(lambda p, b: model.forward(p, cfg16, b["ids"]), params, batches[0])
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(l16))
  np.testing.assert_allclose(l16, l32, rtol=LOSS_RTOL, err_msg=f"{l16} vs {l32}")
  assert l16[-1] < l16[0] and l32[-1] < l32[0]  # both learn the bigram chain
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g16), jax.tree.leaves(g32)):
    assert a.dtype == jnp.float32, path  # gradients in the params' dtype
    assert _rel(a, b) < GRAD_RTOL, (jax.tree_util.keystr(path), _rel(a, b))


@pytest.fixture(scope="module")
def decoded():
  """Greedy ids of every method over the tests' tiny BLT-D in the default bf16 mode."""
  c, p = precision.apply(*bltd_setup(), "bfloat16")
  return {m: [g.new_ids for g in generation.generate(p, c, PROMPTS, method=m, max_new=MAX_NEW,
                                                     options=Options(draft_k=4),
                                                     stop_at_eos=False)]
          for m in ("ar", "blts", "bltd", "bltdv")}


def test_bf16_logits_match_fp32_compute():
  """The same bf16 weights and patches: bf16-compute logits are within bf16's precision of
  fp32-compute ones (the exact mode's), and the cached prefill's next-byte logits too."""
  cfg, params = bltd_setup()
  c16, p16 = precision.apply(cfg, params, "bfloat16")
  c32 = dataclasses.replace(c16, dtype="float32")
  ids = jnp.asarray([[1] + [b + 4 for b in PROMPTS[2][:60]]], jnp.int32)
  start = model.patch(p16, c32, ids)
  l16 = model.forward(p16, c16, ids, start)
  l32 = model.forward(p16, c32, ids, start)
  assert l16.dtype == jnp.float32
  assert _rel(l16, l32) < LOGIT_RTOL, _rel(l16, l32)
  spec = engine.CacheSpec(max_patches=64, max_len=96, patch_cap=64, max_q=1)
  n = jnp.asarray([ids.shape[1]], jnp.int32)
  s16 = engine.prefill(p16, c16, ids, n, spec)
  s32 = engine.prefill(p16, c32, ids, n, spec)
  assert _cache_dtypes(s16) == {jnp.dtype(jnp.bfloat16)}
  assert _rel(s16.logits, s32.logits) < LOGIT_RTOL


def test_every_method_decodes_in_bf16(decoded):
  """AR, BLT-S, BLT-D and BLT-DV all decode in bf16 compute (bf16 caches) to MAX_NEW ids."""
  for m in ("ar", "blts", "bltd", "bltdv"):
    assert [len(x) for x in decoded[m]] == [MAX_NEW] * len(PROMPTS), m
    assert all(0 <= i < 260 for x in decoded[m] for i in x), m


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  """The tiny BLT-D saved in fp32."""
  cfg, params = bltd_setup()
  path = tmp_path_factory.mktemp("ckpt") / "tiny_bltd"
  weights_io.save_checkpoint(path, params, cfg)
  return path


def test_exact_mode_blts_and_bltdv_equal_ar(ckpt, tmp_path, monkeypatch):
  """decode.py --dtype bfloat16 --exact: bf16 weights and fp32 compute reach `generate`, and
  BLT-S and BLT-DV write AR greedy's bytes."""
  seen = []
  real = generation.generate

  def spy(params, cfg, *a, **kw):
    seen.append((cfg.param_dtype, cfg.dtype, {x.dtype for x in jax.tree.leaves(params)}))
    return real(params, cfg, *a, **kw)

  monkeypatch.setattr(generation, "generate", spy)
  inp = tmp_path / "in.jsonl"
  inp.write_text("".join(json.dumps({"id": i, "prompt_b64": base64.b64encode(p).decode()}) + "\n"
                         for i, p in enumerate(PROMPTS)))
  got = {}
  for m in ("ar", "blts", "bltdv"):
    out = tmp_path / f"{m}.jsonl"
    assert decode.main(["--checkpoint", str(ckpt), "--input", str(inp), "--output", str(out),
                        "--method", m, "--max-new-bytes", str(MAX_NEW), "--max-context", "256",
                        "--draft-k", "4", "--dtype", "bfloat16", "--exact"]) == 0
    got[m] = [json.loads(x)["completion_b64"] for x in out.read_text().splitlines()]
  assert len(seen) == 3 and all(s == ("bfloat16", "float32", {jnp.dtype(jnp.bfloat16)})
                                for s in seen), seen
  assert len(got["ar"]) == len(PROMPTS) and any(got["ar"])
  assert got["blts"] == got["ar"] and got["bltdv"] == got["ar"]


def test_score_cli_bf16(ckpt, tmp_path, capsys):
  """score --dtype bfloat16: the same bits per byte as fp32 within bf16's precision."""
  f = tmp_path / "text.txt"
  f.write_bytes(PROMPTS[2])
  res = {}
  for dtype in ("float32", "bfloat16"):
    assert score.main(["--checkpoint", str(ckpt), "--file", str(f), "--dtype", dtype]) == 0
    res[dtype] = json.loads(capsys.readouterr().out)
  assert res["bfloat16"]["bytes"] == res["float32"]["bytes"]
  np.testing.assert_allclose(res["bfloat16"]["bpb"], res["float32"]["bpb"], rtol=BPB_RTOL)


def test_eval_cli_records_exact_mode():
  """eval --exact is parsed and kept in the run's settings (which a resumed run must match);
  absent when not given, so runs from before the flag still resume."""
  from bltjax.eval import __main__ as ev
  from bltjax.eval import suite_module

  a = ev.parser().parse_args(["--suite", "bpb", "--output", "x", "--dtype", "bfloat16",
                              "--exact"])
  s = ev.settings(a, suite_module("bpb"), None)
  assert s["dtype"] == "bfloat16" and s["exact"] is True
  b = ev.parser().parse_args(["--suite", "bpb", "--output", "x"])
  assert "exact" not in ev.settings(b, suite_module("bpb"), None)
