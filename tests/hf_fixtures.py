"""Tiny random HF `BltForCausalLM` models (docs/testing.md) and official-format files from them.

Importing this module imports torch and transformers; only oracle / converter tests use it.

* `tiny_hf_config(k=2, heads="default")`: the §3 recipe; `k=4` uses cross_attn_k=4 everywhere
  (global input projection [64, 128]); `heads="mixed"` uses 4 encoder / 8 decoder heads and
  grouped-query attention in the global model and the patcher.
* `tiny_hf_model(...)`: the model, seeded, fp32, eval mode, with the patcher head sharpened to a
  logit std of about 7 (docs/testing.md) so entropy patching yields 1-6 byte patches.
* `write_meta_hub` / `write_meta_consolidated`: the same weights in Meta's official formats, made by
  inverting the HF rename rules (docs/architecture.md, parameter names), independently of bltjax's
  own name table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import BltConfig, BltForCausalLM

THRESHOLD = 1.335442066192627


def _rope(theta: float) -> dict:
  return {"rope_theta": theta, "rope_parameters": {"rope_type": "default", "rope_theta": theta}}


def tiny_hf_config(k: int = 2, heads: str = "default", patch_in_forward: bool = True,
                   threshold: float = THRESHOLD) -> BltConfig:
  """The oracle's tiny config (docs/testing.md); `heads="mixed"` varies head counts per stack
  (GQA in global)."""
  eh, dh, gh, gkv, ph, pkv = (2, 2, 2, 2, 2, 2) if heads == "default" else (4, 8, 4, 2, 4, 2)
  local = dict(vocab_size=260, hidden_size=32, intermediate_size=96, cross_attn_k=k,
               hidden_size_global=64, rms_norm_eps=1e-5, dropout=0.0,
               max_position_embeddings=1024, **_rope(500000.0))
  cfg = BltConfig(
    vocab_size=260, max_position_embeddings=1024, patch_in_forward=patch_in_forward,
    patch_size=4, patching_mode="entropy", patching_threshold=threshold, patching_batch_size=1,
    max_patch_length=None, cross_attn_k=k, encoder_hash_byte_group_size=[3, 4, 5],
    encoder_hash_byte_group_vocab=1021, encoder_hash_byte_group_nb_functions=1,
    tie_word_embeddings=False,
    patcher_config=dict(vocab_size=260, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=ph, num_key_value_heads=pkv, intermediate_size=96,
                        max_position_embeddings=1024, rms_norm_eps=1e-5, dropout=0.0,
                        **_rope(10000.0)),
    encoder_config=dict(num_hidden_layers=1, num_attention_heads=eh, num_key_value_heads=eh,
                        cross_attn_all_layers=False, **local),
    decoder_config=dict(num_hidden_layers=2, num_attention_heads=dh, num_key_value_heads=dh,
                        cross_attn_all_layers=True, **local),
    global_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=gh,
                       num_key_value_heads=gkv, intermediate_size=192, rms_norm_eps=1e-5,
                       dropout=0.0, max_position_embeddings=1024, **_rope(500000.0)),
  )
  # Set by hand, as HF's own test does (cache-building code reads them).
  cfg.num_hidden_layers = cfg.encoder_config.num_hidden_layers
  cfg.hidden_size = cfg.decoder_config.hidden_size
  cfg.num_attention_heads = cfg.decoder_config.num_attention_heads
  return cfg


def sample_ids(n: int, seed: int = 0) -> np.ndarray:
  """BOS + n-1 offset byte ids of random printable text (no EOS)."""
  rng = np.random.default_rng(seed)
  return np.concatenate([[1], rng.integers(32, 127, n - 1) + 4]).astype(np.int64)


def sharpen_patcher(model: BltForCausalLM, target_std: float = 7.0, seed: int = 123) -> float:
  """Scales the patcher head in place so its logit std on sample text is ~target_std (§4)."""
  ids = torch.tensor(sample_ids(256, seed)[None])
  with torch.no_grad():
    _, _, logits = model.model.patcher(ids, patch_size=None)
    factor = target_std / float(logits.std())
    model.model.patcher.lm_head.weight.mul_(factor)
  return factor


def tiny_hf_model(k: int = 2, heads: str = "default", seed: int = 0, sharpen: bool = True,
                  **kw) -> BltForCausalLM:
  torch.manual_seed(seed)
  model = BltForCausalLM(tiny_hf_config(k, heads, **kw)).eval()
  if sharpen and model.model.patcher is not None:
    sharpen_patcher(model)
  return model


def save_tiny(path: Path, **kw) -> tuple[Path, BltForCausalLM]:
  model = tiny_hf_model(**kw)
  model.save_pretrained(path)
  return path, model


# ------------------------------------------------------------------------------------------------
# Official (Meta) formats, by inverting the HF converter's rename rules.

_INVERSE = [(".self_attn.", ".attention."), (".mlp.", ".feed_forward."),
            (".input_layernorm.", ".attention_norm."), (".post_attention_layernorm.", ".ffn_norm."),
            (".embed_tokens.", ".tok_embeddings."), (".q_norm.", ".cross_attn_norm_q."),
            (".k_norm.", ".cross_attn_norm_kv."), (".gate_proj.", ".w1."), (".up_proj.", ".w3."),
            (".down_proj.", ".w2."), (".q_proj.", ".wq."), (".k_proj.", ".wk."),
            (".v_proj.", ".wv."), (".o_proj.", ".wo."), (".lm_head.", ".output.")]


def _unrename(key: str) -> str:
  key = "." + key
  for hf, off in _INVERSE:
    key = key.replace(hf, off)
  return key[1:]


def official_state_dicts(model: BltForCausalLM) -> tuple[dict, dict]:
  """(BLT state dict, entropy-model state dict) with the official key names."""
  cfg = model.config
  blt, ent = {}, {}
  for key, t in model.state_dict().items():
    t = t.detach().clone().contiguous()
    if key == "lm_head.weight":
      blt["local_decoder.output.weight"] = t
    elif key == "model.encoder_hash_tok_embedding.weight":
      v = cfg.encoder_hash_byte_group_vocab
      for i in range(t.shape[0] // v):
        blt[f"encoder_hash_tok_embedding.{i}.weight"] = t[i * v:(i + 1) * v].clone()
    elif key.startswith("model.patcher."):
      ent[_unrename(key.removeprefix("model.patcher."))] = t
    else:
      blt[_unrename(key.removeprefix("model."))] = t
  return blt, ent


def official_args(model: BltForCausalLM) -> tuple[dict, dict, dict]:
  """(ByteLatentTransformerArgs, entropy_model block, patcher_args) for the tiny model.

  `multiple_of=32` makes the official FFN rule give the fixture's explicit widths (32 -> 96,
  64 -> 192).
  """
  c = model.config
  e, d, g, p = c.encoder_config, c.decoder_config, c.global_config, c.patcher_config
  args = {
    "vocab_size": 260, "dim": 64, "n_layers": 2, "n_heads": 2,
    "dim_global": g.hidden_size, "dim_local_encoder": e.hidden_size,
    "dim_local_decoder": d.hidden_size, "n_layers_global": g.num_hidden_layers,
    "n_layers_local_encoder": e.num_hidden_layers, "n_layers_local_decoder": d.num_hidden_layers,
    "n_heads_global": g.num_attention_heads, "n_heads_local_encoder": e.num_attention_heads,
    "n_heads_local_decoder": d.num_attention_heads, "n_kv_heads": None,
    "n_kv_heads_global": g.num_key_value_heads, "head_dim": None,
    "cross_attn_encoder": True, "cross_attn_decoder": True, "cross_attn_k": c.cross_attn_k,
    # One official value for both local models: only the default-heads fixtures translate.
    "cross_attn_nheads": e.num_attention_heads,
    "cross_attn_all_layers_encoder": False, "cross_attn_all_layers_decoder": True,
    "cross_attn_init_by_pooling": True, "cross_attn_window_encoder": None,
    "cross_attn_window_decoder": None, "downsampling_by_pooling": "max",
    "encoder_hash_byte_group_size": list(c.encoder_hash_byte_group_size),
    "encoder_hash_byte_group_vocab": c.encoder_hash_byte_group_vocab,
    "encoder_hash_byte_group_nb_functions": c.encoder_hash_byte_group_nb_functions,
    "local_attention_window_len": 512, "max_encoder_seq_length": 24576, "max_seqlen": 4096,
    "rope_theta": 500000.0, "norm_eps": 1e-5, "multiple_of": 32, "ffn_dim_multiplier": 1.0,
    "use_local_encoder_transformer": True, "patch_in_forward": False, "patch_size": 4,
    "patching_mode": "entropy", "patching_threshold": c.patching_threshold,
    "encoder_enable_byte_ngrams": False, "encoder_ngram_table_dir": None,
    "conv_kernel_size": None, "non_linearity": "swiglu", "use_rope": True,
    "attn_impl": "xformers", "attn_bias_type": "block_causal",
  }
  entropy = {"dim": p.hidden_size, "n_layers": p.num_hidden_layers,
             "n_heads": p.num_attention_heads, "n_kv_heads": p.num_key_value_heads,
             "max_seqlen": 8192, "ffn_dim_multiplier": 1.0, "multiple_of": 32,
             "vocab_size": 260, "norm_eps": 1e-5, "rope_theta": 10000.0,
             "sliding_window": 512, "attn_impl": "xformers",
             "attn_bias_type": "local_block_causal"}
  patcher = {"patching_mode": "entropy", "threshold": c.patching_threshold,
             "threshold_add": None, "monotonicity": False, "max_patch_length": None,
             "patch_size": 4, "patching_batch_size": 1, "realtime_patching": True}
  return args, entropy, patcher


def write_meta_consolidated(root: Path, model: BltForCausalLM, args_update: dict | None = None,
                            dtype: torch.dtype = torch.float32) -> tuple[Path, Path]:
  """`root/blt/{params.json, consolidated.pth}` + `root/entropy_model/{...}` (facebook/blt)."""
  blt_sd, ent_sd = official_state_dicts(model)
  args, entropy, patcher = official_args(model)
  args.update(args_update or {})
  blt_dir, ent_dir = root / "blt", root / "entropy_model"
  blt_dir.mkdir(parents=True)
  ent_dir.mkdir(parents=True)
  dt = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
  (blt_dir / "params.json").write_text(json.dumps(
    {"model": args, "data": {"patcher_args": patcher}, "distributed": {"model_dtype": dt},
     "train_entropy_model": False}))
  torch.save({"model": {k: v.to(dtype) for k, v in blt_sd.items()}},
             blt_dir / "consolidated.pth")
  (ent_dir / "params.json").write_text(json.dumps(
    {"entropy_model": entropy, "data": {"patcher_args": patcher}, "train_entropy_model": True}))
  torch.save({"model": {k: v.to(dtype) for k, v in ent_sd.items()}},
             ent_dir / "consolidated.pth")
  return blt_dir, ent_dir


def write_meta_hub(root: Path, model: BltForCausalLM,
                   args_update: dict | None = None) -> tuple[Path, Path]:
  """`root/blt-1b/{config.json, model.safetensors, train_args.json}` + `root/blt-entropy/`."""
  from safetensors.torch import save_file

  blt_sd, ent_sd = official_state_dicts(model)
  args, entropy, patcher = official_args(model)
  args.update(args_update or {})
  blt_dir, ent_dir = root / "blt-1b", root / "blt-entropy"
  blt_dir.mkdir(parents=True)
  ent_dir.mkdir(parents=True)
  (blt_dir / "config.json").write_text(json.dumps({"args": args}))
  (blt_dir / "train_args.json").write_text(json.dumps({"data": {"patcher_args": patcher}}))
  save_file(blt_sd, str(blt_dir / "model.safetensors"))
  (ent_dir / "config.json").write_text(json.dumps({"args": entropy}))
  save_file(ent_sd, str(ent_dir / "model.safetensors"))
  return blt_dir, ent_dir


# ------------------------------------------------------------------------------------------------
# Patch-length helpers (official S+1 form, safe for batched HF calls; docs/testing.md).


def lengths_from_pattern(pattern: list[int], s: int) -> list[int]:
  """Official lengths: BOS patch 1, then `pattern` cycled, clipped to sum exactly S+1."""
  out, tot, i = [1], 1, 0
  while tot < s + 1:
    n = min(pattern[i % len(pattern)], s + 1 - tot)
    out.append(n)
    tot += n
    i += 1
  return out


def starts_from_lengths(lengths: list[int], s1: int) -> np.ndarray:
  """Boolean starts over `s1` slots from lengths (zero lengths add no new start)."""
  st = np.zeros(s1, bool)
  pos = 0
  for n in lengths:
    if pos < s1:
      st[pos] = True
    pos += n
  return st


def starts_from_hf_lengths(lengths: np.ndarray, s: int) -> np.ndarray:
  """HF S-sum lengths (trailing 0 = next slot starts a patch) -> starts over S+1 slots."""
  st = np.zeros(s + 1, bool)
  st[np.cumsum(np.concatenate([[0], lengths[:-1]]))] = True
  return st
