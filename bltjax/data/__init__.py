"""bltjax data layer: real-text corpus, tfds builders over local files, grain input pipeline.

Public API (see `pipeline.py` for the batch format and the `data` config keys):

  default_data_config(**overrides)          the `data` ConfigDict
  make_train_iterator(data_cfg, *, seq_len, batch_size, seed, process_index, process_count)
                                            checkpointable grain iterator of packed batches
  heldout_domains(data_cfg) / make_eval_iterator(data_cfg, *, domain, ...)
                                            whole held-out documents for BPB
  doc_to_ids / ids_to_bytes                 byte <-> id mapping (BOS=1, EOS=2, byte+4, pad 0)
  unigram_entropy_bits / compressor_bpb     reference bits-per-byte lines

`bltjax.data.builders` (tfds builders; imports tensorflow_datasets) and `bltjax.data.corpus`
(raw-dir layout) are imported on demand; `python -m bltjax.data prepare` builds the datasets.
"""

from bltjax.data.pipeline import (
  PAD_ID,
  PackBytesIterDataset,
  default_data_config,
  doc_to_ids,
  heldout_domains,
  ids_to_bytes,
  make_eval_iterator,
  make_train_iterator,
  to_global_batch,
)
from bltjax.data.stats import compressor_bpb, unigram_entropy_bits

__all__ = [
  "PAD_ID",
  "PackBytesIterDataset",
  "compressor_bpb",
  "default_data_config",
  "doc_to_ids",
  "heldout_domains",
  "ids_to_bytes",
  "make_eval_iterator",
  "make_train_iterator",
  "to_global_batch",
  "unigram_entropy_bits",
]
