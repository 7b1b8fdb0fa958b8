"""A weight-bound decoding geometry: BLT-1B's proportions at ~120 M non-hash parameters.

Encoder 1 x 512 (8 heads), global 8 x 1024 (16 heads, 102.8 M parameters: 411 MB in fp32, ~12x
a 32 MiB last-level cache, so every global pass streams its weights from DRAM), decoder
2 x 512 (10.1 M = 9.8% of the global; BLT-1B: 12%), k = 2 (no global input projection). The
global model is 87% of the non-hash parameters (BLT-1B: 88%). Hash n-grams 3..8 with 50002 rows
(read a row at a time, so their size does not matter for bandwidth); a small entropy model
(2 x 256, 1.8 M). Entropy patching with at most 8 bytes per patch (arXiv 2412.09871's training
setting: 4 bytes on average, 8 at most); the threshold here is a placeholder that
benchmarks/fast_decode.py recalibrates on held-out text (`--patch-mean 4` or `1.7`, the mean
patch length of arXiv 2605.08044's 3B generations: 512 bytes in 308 patches).

  python benchmarks/fast_decode.py --config configs/bench_weightbound.py --random-weights
"""

from bltjax.training.train_config import base_config, entropy_stack, global_stack, stack


def get_config():
  c = base_config()
  c.model.encoder = stack(512, 1, 8)
  c.model.global_model = global_stack(1024, 8, 16)
  c.model.decoder = stack(512, 2, 8)
  c.model.entropy = entropy_stack(256, 2, 4)
  c.model.cross_attn_k = 2
  c.model.hash.update(group_sizes=(3, 4, 5, 6, 7, 8), vocab=50002, nb_functions=1)
  c.model.patcher.update(mode="entropy", max_patch_length=8)
  c.model.dtype = "float32"
  c.model.param_dtype = "float32"
  c.train.task = "blt"
  c.train.batch_size = 8
  c.train.seq_len = 1024
  c.data.source = "fixture"
  return c
