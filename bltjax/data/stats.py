"""Reference numbers for a byte stream: order-0 entropy and compressor bits per byte.

These are the sanity lines a byte-level LM's BPB is read against (docs/data.md): a model that
cannot beat the unigram entropy has learnt nothing about context, and xz/gzip show what a
generic compressor gets on the same text.
"""

from __future__ import annotations

import gzip
import lzma
from collections.abc import Iterable

import numpy as np

ByteStream = bytes | bytearray | memoryview | np.ndarray | Iterable[bytes | np.ndarray]


def _byte_counts(byte_stream: ByteStream) -> np.ndarray:
  """Histogram of byte values (256,) over a buffer, a uint8 array, or an iterable of chunks."""
  if isinstance(byte_stream, bytes | bytearray | memoryview):
    chunks: Iterable = (byte_stream,)
  elif isinstance(byte_stream, np.ndarray):
    chunks = (byte_stream,)
  else:
    chunks = byte_stream
  counts = np.zeros(256, np.int64)
  for chunk in chunks:
    if isinstance(chunk, np.ndarray):
      if chunk.size and (chunk.min() < 0 or chunk.max() > 255):
        raise ValueError("unigram_entropy_bits: array values must be bytes in [0, 255]")
      arr = chunk.astype(np.uint8, copy=False).ravel()
    else:
      arr = np.frombuffer(bytes(chunk), np.uint8)
    counts += np.bincount(arr, minlength=256)
  return counts


def unigram_entropy_bits(byte_stream: ByteStream) -> float:
  """Order-0 (unigram) entropy of a byte stream in bits per byte.

  Args:
    byte_stream: `bytes`, a uint8 (or int array with values in [0, 255]), or an iterable of
      such chunks (e.g. the documents of a split); the chunks are pooled.

  Returns:
    -sum p(b) log2 p(b) over the empirical byte distribution; 0.0 for an empty stream.
  """
  counts = _byte_counts(byte_stream)
  total = counts.sum()
  if total == 0:
    return 0.0
  p = counts[counts > 0] / total
  return float(-(p * np.log2(p)).sum())


def compressor_bpb(data: bytes, method: str = "xz") -> float:
  """Bits per byte of `data` under `xz -9e` ("xz") or `gzip -9` ("gzip")."""
  if not data:
    return 0.0
  if method == "xz":
    packed = lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
  elif method == "gzip":
    packed = gzip.compress(data, compresslevel=9, mtime=0)
  else:
    raise ValueError(f"compressor_bpb: method must be 'xz' or 'gzip', got {method!r}")
  return 8.0 * len(packed) / len(data)
