"""User path strings -> `etils.epath.Path`, so `gs://bucket/run` works wherever `runs/x` does.

Orbax reads and writes through `epath` (and tensorstore for the arrays), so a workdir, a checkpoint
or an export given as a URL must stay a URL: `Path("gs://b/run").absolute()` would turn it into
`$PWD/gs:/b/run`. `as_path` is the one place a user string becomes a path: local paths are made
absolute (`~` expanded), URLs (`gs://`, `s3://`, ...) are kept as they are.

Object stores cannot append to a file; `LineLog` appends JSON lines locally and rewrites the
whole object (at most every `flush_s` seconds, and on `close`) for a URL.
"""

from __future__ import annotations

import os
import time
from typing import Any

from etils import epath

PathLike = str | os.PathLike


def is_url(p: PathLike) -> bool:
  return "://" in os.fspath(p)


def as_path(p: PathLike, what: str = "path") -> epath.Path:
  """A user path as an `epath.Path`: local paths absolute, URLs unchanged.

  Raises:
    ValueError: a URL scheme that epath cannot open; the message names `what` and the path.
  """
  if isinstance(p, epath.Path) and is_url(p):
    return p
  s = os.fspath(p)
  if not s:
    raise ValueError(f"{what}: empty path")
  if is_url(s):
    try:
      return epath.Path(s)
    except (KeyError, NotImplementedError) as e:
      raise ValueError(f"{what} {s}: unsupported URL scheme (epath opens gs://, s3://, az://, "
                       "hf:// and local paths)") from e
  return epath.Path(os.path.abspath(os.path.expanduser(s)))


class LineLog:
  """An append-only text log (JSONL) at a local path or a URL.

  Local: opened in append mode, line buffered. URL: the existing object is read once, new lines
  are kept in memory and the whole object is rewritten on `flush` (called by `write` when
  `flush_s` has passed) and `close`, since object stores have no append.
  """

  def __init__(self, path: PathLike, flush_s: float = 30.0):
    self.path = as_path(path)
    self._url = is_url(self.path)
    self._flush_s = flush_s
    self._t = time.monotonic()
    self._dirty = False
    if self._url:
      self._lines = self.path.read_text() if self.path.exists() else ""
      self._f = None
    else:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self._f = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

  def write(self, line: str) -> None:
    if self._f is not None:
      self._f.write(line)
      return
    self._lines += line
    self._dirty = True
    if time.monotonic() - self._t >= self._flush_s:
      self.flush()

  def flush(self) -> None:
    if self._f is not None:
      self._f.flush()
    elif self._dirty:
      self.path.write_text(self._lines)
      self._dirty, self._t = False, time.monotonic()

  def close(self) -> None:
    self.flush()
    if self._f is not None:
      self._f.close()
      self._f = None

  def __enter__(self) -> LineLog:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()
