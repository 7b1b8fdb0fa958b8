"""The throughput-benchmark geometry (~20 M non-hash parameters).

Encoder 1 layer, dim 256, 4 heads; global 4 layers, dim 512, 8 heads; decoder 4 layers, dim 256,
4 heads; cross_attn_k = 2; hash n-grams 3..8 with 50002 rows each, 1 function; entropy model
2 layers, dim 256, 4 heads; FFN widths by the official rounding rule (ffn_dim unset). The
benchmark (benchmarks/train_throughput.py) trains it in fp32 on batch 8 x 512 bytes with static
patches of 4, which is what this config selects.
"""

from bltjax.training.train_config import base_config, entropy_stack, global_stack, stack


def get_config():
  c = base_config()
  c.model.encoder = stack(256, 1, 4)
  c.model.global_model = global_stack(512, 4, 8)
  c.model.decoder = stack(256, 4, 4)
  c.model.entropy = entropy_stack(256, 2, 4)
  c.model.cross_attn_k = 2
  c.model.hash.update(group_sizes=(3, 4, 5, 6, 7, 8), vocab=50002, nb_functions=1)
  c.model.patcher.update(mode="static", patch_size=4.0)
  c.model.dtype = "float32"
  c.train.task = "blt"
  c.train.steps = 1000
  c.train.batch_size = 8
  c.train.seq_len = 512
  c.train.lr = 1e-3
  c.train.warmup_steps = 100
  c.train.log_every = 20
  c.train.eval_every = 0
  c.train.ckpt_every = 500
  c.data.source = "fixture"
  return c
