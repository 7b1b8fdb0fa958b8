"""Converters: HF <-> bltjax round trips, Meta official formats, strictness and error paths."""

from __future__ import annotations

import json
import logging
import shutil

import hf_fixtures as fx
import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bltjax import weights
from bltjax.convert import hf, meta
from bltjax.convert.__main__ import main as cli

pytestmark = pytest.mark.oracle


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """{k: (HF dir, model)} for the k=2 and k=4 tiny fixtures."""
  root = tmp_path_factory.mktemp("hf")
  return {k: fx.save_tiny(root / f"k{k}", k=k) for k in (2, 4)}


def _flat(tree):
  return {"/".join(k): np.asarray(v) for k, v in hf.flat_leaves(tree).items()}


def _assert_trees_equal(a, b):
  fa, fb = _flat(a), _flat(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def _hf_tensors_equal(d1, d2):
  a, b = load_file(str(d1 / "model.safetensors")), load_file(str(d2 / "model.safetensors"))
  assert a.keys() == b.keys()
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("k", [2, 4])
def test_hf_roundtrip_exact(hf_dirs, tmp_path, k, capsys):
  src, model = hf_dirs[k]
  assert cli(["--from", "hf", str(src), str(tmp_path / "blt"), "-v"]) == 0
  n = 90 + (k == 4)  # the k=4 fixture adds global_transformer.token_embedding_projection
  err = capsys.readouterr().err
  assert f"[{n}/{n}]" in err and "model.patcher.lm_head.weight" in err and "wrote" in err
  cfg, params = weights.load_checkpoint(tmp_path / "blt")
  assert cfg.cross_attn_k == k and cfg.needs_global_projection == (k == 4)
  assert cfg.encoder.ffn_dim == 96 and cfg.global_.ffn_dim == 192
  assert weights.load_metadata(tmp_path / "blt")["source"]["format"] == "hf"
  hash_tab = np.asarray(params["local_encoder"]["hash_embeddings"]["embedding"])
  fused = model.model.encoder_hash_tok_embedding.weight.detach().numpy()
  np.testing.assert_array_equal(hash_tab, fused.reshape(3, 1021, 32))
  wq = np.asarray(params["local_encoder"]["layers_0"]["attention"]["wq"]["kernel"])
  tq = model.model.local_encoder.layers[0].self_attn.q_proj.weight.detach().numpy()
  np.testing.assert_array_equal(wq, tq.T.reshape(32, 2, 16))
  assert cli(["--to", "hf", str(tmp_path / "blt"), str(tmp_path / "back"), "-q"]) == 0
  _hf_tensors_equal(src, tmp_path / "back")
  from transformers import BltForCausalLM

  back, info = BltForCausalLM.from_pretrained(tmp_path / "back", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert back.config.cross_attn_k == k
  gen = json.loads((tmp_path / "back" / "generation_config.json").read_text())
  assert gen["use_cache"] is False and gen["eos_token_id"] == 2


def test_hf_config_keys_for_both_transformers_versions(hf_dirs):
  cfg, _ = hf.load_hf(hf_dirs[4][0])
  d = hf.config_to_hf(cfg)
  for key in ("encoder_config", "decoder_config", "global_config", "patcher_config"):
    sub = d[key]
    assert sub["rope_theta"] == sub["rope_parameters"]["rope_theta"]
    assert sub["rope_parameters"]["rope_type"] == "default"
    assert sub["rms_norm_eps"] == 1e-5 and "intermediate_size" in sub
  assert (d["num_hidden_layers"], d["hidden_size"], d["num_attention_heads"]) == (1, 32, 2)
  assert d["encoder_config"]["hidden_size_global"] == 64 and d["cross_attn_k"] == 4
  assert hf.config_from_hf(d) == cfg.replace(param_dtype="float32")


def test_sharded_and_bf16(hf_dirs, tmp_path):
  src, model = hf_dirs[2]
  cfg1, tree1 = hf.load_hf(src)
  model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
  assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
  cfg2, tree2 = hf.load_hf(tmp_path / "sharded")
  assert cfg1 == cfg2
  _assert_trees_equal(tree1, tree2)
  # bf16 stays bf16 (and round-trips bit-exactly); --dtype float32 upcasts.
  bf = tmp_path / "bf16"
  shutil.copytree(src, bf)
  sd = {k: v.to(torch.bfloat16) for k, v in load_file(str(src / "model.safetensors")).items()}
  save_file(sd, str(bf / "model.safetensors"), metadata={"format": "pt"})
  cfg3, tree3 = hf.load_hf(bf)
  assert cfg3.param_dtype == "bfloat16"
  leaf = tree3["local_decoder"]["output"]["kernel"]
  assert leaf.dtype == np.dtype(ml_dtypes.bfloat16)
  hf.save_hf(tmp_path / "bf16_back", tree3, cfg3)
  _hf_tensors_equal(bf, tmp_path / "bf16_back")
  assert cli(["--from", "hf", str(bf), str(tmp_path / "f32"), "--dtype", "float32", "-q"]) == 0
  cfg4, tree4 = weights.load_checkpoint(tmp_path / "f32")
  assert cfg4.param_dtype == "float32"
  np.testing.assert_array_equal(np.asarray(tree4["local_decoder"]["output"]["kernel"]),
                                leaf.astype(np.float32))


@pytest.mark.parametrize("layout", ["consolidated", "hub"])
def test_meta_import_equals_hf_import(hf_dirs, tmp_path, layout):
  src, model = hf_dirs[4]
  cfg_hf, tree_hf = hf.load_hf(src)
  if layout == "consolidated":
    blt_dir, ent_dir = fx.write_meta_consolidated(tmp_path, model)
    argv = ["--from", "meta", str(blt_dir), str(tmp_path / "out"), "-q"]  # entropy: sibling
  else:
    blt_dir, ent_dir = fx.write_meta_hub(tmp_path, model)
    argv = ["--from", "meta", str(blt_dir), str(tmp_path / "out"), "--entropy", str(ent_dir),
            "-q"]
  assert cli(argv) == 0
  cfg, tree = weights.load_checkpoint(tmp_path / "out")
  assert cfg == cfg_hf
  _assert_trees_equal(tree, tree_hf)
  prov = weights.load_metadata(tmp_path / "out")["source"]
  assert prov["format"] == "meta" and prov["entropy"] == str(ent_dir.absolute())


def test_meta_bf16_consolidated(hf_dirs, tmp_path):
  _, model = hf_dirs[2]
  blt_dir, ent_dir = fx.write_meta_consolidated(tmp_path, model, dtype=torch.bfloat16)
  cfg, tree, _ = meta.load_meta(blt_dir, entropy=ent_dir)
  assert cfg.param_dtype == "bfloat16"
  want = model.lm_head.weight.detach().to(torch.bfloat16).float().numpy().T
  got = tree["local_decoder"]["output"]["kernel"]
  assert got.dtype == np.dtype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(got.astype(np.float32), want)


# ------------------------------------------------------------------------------------------------
# Error paths: the message names the tensor / key and both shapes; DST is never created.


def _rewrite(src, dst, edit):
  shutil.copytree(src, dst)
  sd = load_file(str(src / "model.safetensors"))
  edit(sd)
  save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
  return dst


@pytest.mark.parametrize("case", ["missing", "extra", "shape"])
def test_hf_tensor_errors(hf_dirs, tmp_path, case, capsys):
  src, _ = hf_dirs[2]
  name = "model.local_decoder.layers.1.mlp.up_proj.weight"

  def edit(sd):
    if case == "missing":
      del sd[name]
    elif case == "extra":
      sd["model.local_decoder.bogus.weight"] = torch.zeros(3, 4)
    else:
      sd[name] = torch.zeros(97, 32)

  bad = _rewrite(src, tmp_path / "bad", edit)
  with pytest.raises(hf.ConversionError) as e:
    hf.import_hf(bad, tmp_path / "out")
  msg = str(e.value)
  if case == "missing":
    assert name in msg and "[96, 32]" in msg and "missing" in msg
  elif case == "extra":
    assert "model.local_decoder.bogus.weight" in msg and "[3, 4]" in msg
  else:
    assert name in msg and "[97, 32]" in msg and "[96, 32]" in msg
  assert str(bad / "model.safetensors") in msg
  assert cli(["--from", "hf", str(bad), str(tmp_path / "out2"), "-q"]) == 1
  assert name.split(".")[-3] in capsys.readouterr().err or case == "extra"
  assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()
  assert [p.name for p in tmp_path.iterdir()] == ["bad"]  # no temp dirs left behind


@pytest.mark.parametrize("edit,key", [
  (lambda d: d["decoder_config"].update(hidden_size_global=48), "hidden_size_global"),
  (lambda d: d["encoder_config"].update(cross_attn_all_layers=True), "cross_attn_all_layers"),
  (lambda d: d.update(model_type="llama"), "model_type"),
  (lambda d: d["global_config"].update(rope_parameters={"rope_type": "yarn", "factor": 2.0}),
   "rope_type"),
  (lambda d: d["decoder_config"].update(hidden_size=48, head_dim=24), "decoder.dim"),
])
def test_hf_config_errors(hf_dirs, tmp_path, edit, key):
  src, _ = hf_dirs[2]
  bad = tmp_path / "bad"
  shutil.copytree(src, bad)
  d = json.loads((bad / "config.json").read_text())
  edit(d)
  (bad / "config.json").write_text(json.dumps(d))
  with pytest.raises(hf.ConversionError, match=key):
    hf.import_hf(bad, tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_hf_encoder_hidden_size_global_ignored_as_hf_does(tmp_path, caplog):
  # HF sizes the encoder's patch projection by hidden_size and never reads the encoder's
  # hidden_size_global; such a checkpoint runs in HF and converts, with a warning.
  from transformers import BltForCausalLM

  from bltjax.modeling import model

  c = fx.tiny_hf_config()
  c.encoder_config.hidden_size_global = 48
  torch.manual_seed(0)
  hf_model = BltForCausalLM(c).eval()
  fx.sharpen_patcher(hf_model)
  hf_model.save_pretrained(tmp_path / "hf")
  d = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert d["encoder_config"]["hidden_size_global"] == 48 != d["global_config"]["hidden_size"]
  with caplog.at_level(logging.WARNING, logger="bltjax.convert"):
    assert cli(["--from", "hf", str(tmp_path / "hf"), str(tmp_path / "blt"), "-q"]) == 0
  assert "encoder_config.hidden_size_global: 48 != global_config.hidden_size 64" in caplog.text
  cfg, params = weights.load_checkpoint(tmp_path / "blt")
  ids = fx.sample_ids(128, seed=7)
  x = torch.tensor(ids[None])
  with torch.no_grad():
    h = hf_model.model.patcher(x, patch_size=c.patch_size, threshold=c.patching_threshold)[0]
    ref = hf_model(x, use_cache=False).logits[0].numpy()
  assert np.abs(h[0, 1:].numpy() - c.patching_threshold).min() > 1e-4  # exact starts
  ids_j = ids[None].astype(np.int32)
  got = np.asarray(model.forward(params, cfg, ids_j, model.patch(params, cfg, ids_j)))[0]
  np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)  # the oracle tolerance


def test_hf_config_spellings(hf_dirs, caplog):
  d = json.loads((hf_dirs[2][0] / "config.json").read_text())
  want = hf.config_from_hf(d)
  for key in ("encoder_config", "decoder_config", "global_config", "patcher_config"):
    sub = d[key]
    sub["norm_eps"] = sub.pop("rms_norm_eps")  # the 1B mirror's spelling
    sub["rope_theta"] = sub.pop("rope_parameters")["rope_theta"]  # 4.57.1's spelling
  d["patcher_config"].update(attn_impl="xformers", attn_bias_type="local_block_causal")
  del d["local_attention_window_len"]
  with caplog.at_level(logging.WARNING, logger="bltjax.convert"):
    got = hf.config_from_hf(d)
  assert got == want and got.encoder.window == 512
  assert "attn_impl" in caplog.text and "attn_bias_type" in caplog.text


@pytest.mark.parametrize("update,needle", [
  ({"encoder_enable_byte_ngrams": True}, "encoder_enable_byte_ngrams"),
  ({"encoder_ngram_table_dir": "/x"}, "encoder_ngram_table_dir"),
  ({"conv_kernel_size": 3}, "conv_kernel_size"),
  ({"cross_attn_encoder": False}, "cross_attn_encoder"),
  ({"cross_attn_decoder": False}, "cross_attn_decoder"),
  ({"cross_attn_k": 4}, "cross_attn_k"),
  ({"vocab_size": 256}, "vocab_size"),
])
def test_meta_refusals(hf_dirs, tmp_path, update, needle):
  _, model = hf_dirs[2]
  blt_dir, ent_dir = fx.write_meta_hub(tmp_path, model, args_update=update)
  with pytest.raises(hf.ConversionError, match=needle) as e:
    meta.import_meta(blt_dir, tmp_path / "out", entropy=ent_dir)
  assert str(blt_dir / "config.json") in str(e.value)
  assert not (tmp_path / "out").exists()


def test_meta_tensor_errors(hf_dirs, tmp_path):
  _, model = hf_dirs[2]
  blt_dir, ent_dir = fx.write_meta_consolidated(tmp_path, model)
  pth = ent_dir / "consolidated.pth"
  sd = torch.load(pth, weights_only=True)["model"]
  sd["layers.1.feed_forward.w2.weight"] = torch.zeros(32, 95)
  del sd["norm.weight"]
  torch.save({"model": sd}, pth)
  with pytest.raises(hf.ConversionError) as e:
    meta.import_meta(blt_dir, tmp_path / "out")
  msg = str(e.value)
  assert "norm.weight" in msg and "layers.1.feed_forward.w2.weight" in msg
  assert "[32, 95]" in msg and "[32, 96]" in msg and str(pth) in msg
  assert not (tmp_path / "out").exists()
  # No entropy model next to a checkpoint that patches by entropy: say how to pass it.
  shutil.rmtree(ent_dir)
  with pytest.raises(hf.ConversionError, match="--entropy"):
    meta.import_meta(blt_dir, tmp_path / "out")


def test_overwrite_and_not_a_checkpoint(hf_dirs, tmp_path):
  src, _ = hf_dirs[2]
  out = tmp_path / "out"
  hf.import_hf(src, out)
  with pytest.raises(FileExistsError):
    hf.import_hf(src, out)
  assert cli(["--from", "hf", str(src), str(out), "-q"]) == 1
  assert cli(["--from", "hf", str(src), str(out), "--overwrite", "-q"]) == 0
  with pytest.raises(weights.CheckpointError, match="HF directory"):
    weights.load_checkpoint(src)
  with pytest.raises(hf.ConversionError, match="hub-mixin"):
    meta.load_meta(src)
