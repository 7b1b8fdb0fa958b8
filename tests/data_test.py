"""Data layer: tfds builders, Bible parsing, grain pipeline invariants, sharding and resume.

Fixture only (tests/fixtures/corpus); no materialised data, no TensorFlow.
"""

from __future__ import annotations

import collections
import gzip
import json

import numpy as np
import pytest

from bltjax.config import BOS_ID, EOS_ID, ConfigError
from bltjax.data import builders, corpus, pipeline
from bltjax.data.stats import compressor_bpb, unigram_entropy_bits

FIXTURE = corpus.fixture_raw_dir()


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def cfg(tfds_dir):
  # A private data_dir keeps the test hermetic (no shared ~/.cache build).
  return pipeline.default_data_config(source="fixture", data_dir=str(tfds_dir), num_epochs=1)


def _train_docs() -> list[bytes]:
  splits = corpus.corpus_splits(FIXTURE)
  return [d.read() for name, docs in splits.items() if name.startswith("train_") for d in docs]


def _stream_docs(it, *, cut_tail: bool = False) -> list[bytes]:
  """Reassembles documents from packed batches (rows are in stream order).

  `cut_tail` drops a last document that an infinite stream was stopped in the middle of.
  """
  stream = np.concatenate([b["ids"][b["valid"]] for b in it])
  bos = np.flatnonzero(stream == BOS_ID)
  eos = np.flatnonzero(stream == EOS_ID)
  if cut_tail and len(bos) == len(eos) + 1:
    bos = bos[:-1]
  assert len(bos) == len(eos) and np.all(bos < eos) and np.all(eos[:-1] < bos[1:])
  return [pipeline.ids_to_bytes(stream[s + 1 : e]) for s, e in zip(bos, eos)]


def _batches(cfg, n=None, **kw):
  kw = {"seq_len": 128, "batch_size": 4, "seed": 0, "process_index": 0, "process_count": 1} | kw
  it = pipeline.make_train_iterator(cfg, **kw)
  return list(it) if n is None else [next(it) for _ in range(n)]


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------


def test_real_mix_round_trip(tfds_dir):
  b = builders.build(builders.RealMixBytes, FIXTURE, tfds_dir)
  data = b.as_data_source()
  expected = corpus.corpus_splits(FIXTURE)
  assert list(data.keys()) == list(expected.keys())
  assert {"train_code", "heldout_code", "heldout_drama", "heldout_novel"} <= set(data.keys())
  for split, docs in expected.items():
    src = data[split]
    assert len(src) == len(docs)
    for i, doc in enumerate(docs):
      ex = src[i]  # stored order == generation order (disable_shuffling)
      assert ex["text"] == doc.read()
      assert ex["name"].decode() == doc.name
  assert b.info.metadata["stdlib_python_version"].startswith("3.")
  # A second process needs no builder code to read it back.
  import tensorflow_datasets as tfds

  again = tfds.builder_from_directory(b.data_dir).as_data_source(split="heldout_novel")
  assert again[0]["text"] == (FIXTURE / "moby_dick" / "data.txt").read_bytes()


def test_heldout_never_in_train():
  splits = corpus.corpus_splits(FIXTURE)
  train_names = {d.name for s, docs in splits.items() if s.startswith("train_") for d in docs}
  held_names = {d.name for s, docs in splits.items() if s.startswith("heldout_") for d in docs}
  assert not train_names & held_names
  assert "shakespeare/tragedies/hamlet.md" in held_names
  assert not any(n.startswith("stdlib/json/") for n in train_names)
  assert not any(n.startswith(("bible/en/John", "bible/es/Acts")) for n in train_names)


def test_kjv_rv1909_and_humaneval_round_trip(tfds_dir):
  b = builders.build(builders.KjvRv1909, FIXTURE, tfds_dir)
  splits = corpus.translation_splits(corpus.load_bible_pairs(FIXTURE))
  data = b.as_data_source()
  for name, pairs in splits.items():
    assert len(data[name]) == len(pairs)
    ex = data[name][0]
    assert ex["translation"]["en"].decode() == pairs[0].en
    assert ex["translation"]["es"].decode() == pairs[0].es
  refs = {e["ref"].decode() for s in ("dev", "test") for e in data[s]}
  assert all(r.split()[0] in corpus.GOSPELS_ACTS for r in refs)
  he = builders.build(builders.HumanEvalProblems, FIXTURE, tfds_dir).as_data_source()["test"]
  assert len(he) == 5 and he[0]["task_id"] == b"HumanEval/0"


def test_parse_diatheke():
  text = (
    "Genesis 1:1: In the beginning <H7225> God created\u00b6 the heaven.  \n"
    "   I Samuel 2:3: Talk no more so exceeding proudly;\n"
    "A Psalm of David, stale title that must be dropped\n"
    "Revelation of John 22:21: The grace <G5485> of our Lord.\n"
    "(engKJV2006eb)\n"
  )
  verses = corpus.parse_diatheke(text)
  assert [v.ref for v in verses] == ["Genesis 1:1", "I Samuel 2:3", "Revelation of John 22:21"]
  assert verses[0].text == "In the beginning God created the heaven."
  assert verses[2].text == "The grace of our Lord."
  es = [corpus.Verse("Genesis", 1, 1, "x" * 10), corpus.Verse("I Samuel", 2, 3, "Y" * 30)]
  pairs = corpus.align_verses(verses, es)
  assert [p.ref for p in pairs] == ["I Samuel 2:3"]  # Genesis dropped: length ratio 4 > 2


# ----------------------------------------------------------------------------------------------
# Pipeline
# ----------------------------------------------------------------------------------------------


def test_batch_format(cfg):
  batches = _batches(cfg, n=20)
  for b in batches:
    assert set(b) == {"ids", "valid", "doc_ids"}
    assert b["ids"].shape == b["valid"].shape == b["doc_ids"].shape == (4, 128)
    assert b["ids"].dtype == np.int32 and b["doc_ids"].dtype == np.int32
    assert b["valid"].dtype == np.bool_
    np.testing.assert_array_equal(b["valid"], b["ids"] != pipeline.PAD_ID)
    np.testing.assert_array_equal(b["valid"], b["doc_ids"] > 0)
    assert b["ids"].min() >= 0 and b["ids"].max() < 260
    for ids, seg in zip(b["ids"], b["doc_ids"]):
      assert seg[0] == 1
      step = np.diff(seg)
      assert np.all((step == 0) | (step == 1))  # pieces numbered 1, 2, ... within the row
      starts = np.flatnonzero(np.r_[True, step == 1])
      # A BOS only ever opens a piece; an EOS only ever closes one.
      assert set(np.flatnonzero(ids == BOS_ID)) <= set(starts)
      ends = np.r_[starts[1:] - 1, len(ids) - 1]
      assert set(np.flatnonzero(ids == EOS_ID)) <= set(ends)
      # Every piece except the row's last one ends its document.
      assert np.all(ids[ends[:-1]] == EOS_ID)
      assert np.all(ids[starts[1:]] == BOS_ID)


def test_one_epoch_covers_train_exactly(cfg):
  got = _stream_docs(_batches(cfg))
  assert collections.Counter(got) == collections.Counter(_train_docs())


def test_deterministic_and_seeded(cfg):
  a, b = _batches(cfg, n=5, seed=7), _batches(cfg, n=5, seed=7)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  c = _batches(cfg, n=5, seed=8)
  assert any(not np.array_equal(x["ids"], y["ids"]) for x, y in zip(a, c))


def test_epochs_reshuffle(cfg):
  two = cfg.copy_and_resolve_references()
  two.num_epochs = 2
  docs = _stream_docs(_batches(two))
  half = len(docs) // 2
  assert collections.Counter(docs[:half]) == collections.Counter(docs[half:])
  assert docs[:half] != docs[half:]


@pytest.mark.parametrize("count", [2, 3])
def test_process_shards_disjoint_and_cover(cfg, count):
  shards = [
    collections.Counter(_stream_docs(_batches(cfg, process_index=i, process_count=count)))
    for i in range(count)
  ]
  for i in range(count):
    for j in range(i + 1, count):
      assert not set(shards[i]) & set(shards[j])
  assert sum(shards, collections.Counter()) == collections.Counter(_train_docs())


@pytest.mark.parametrize("k", [0, 1, 3, 11])
def test_resume_gives_identical_next_batch(cfg, k):
  kw = {"seq_len": 96, "batch_size": 3, "seed": 5, "process_index": 1, "process_count": 2}
  it = pipeline.make_train_iterator(cfg, **kw)
  for _ in range(k):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
  expected = [next(it) for _ in range(3)]
  fresh = pipeline.make_train_iterator(cfg, **kw)
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_weights_select_domains(cfg):
  weighted = cfg.copy_and_resolve_references()
  weighted.num_epochs = None
  weighted.weights = {"code": 1.0}
  code = {d.read() for d in corpus.corpus_splits(FIXTURE)["train_code"]}
  docs = _stream_docs(_batches(weighted, n=40, seq_len=512), cut_tail=True)
  assert docs and set(docs) <= code


def test_eval_iterator(cfg):
  domains = pipeline.heldout_domains(cfg)
  assert {"novel", "drama", "code", "scripture_en", "scripture_es"} <= set(domains)
  expected = corpus.corpus_splits(FIXTURE)["heldout_drama"]
  docs = list(pipeline.make_eval_iterator(cfg, domain="drama"))
  assert len(docs) == len(expected)
  for d, ref in zip(docs, expected):
    assert d["ids"].dtype == np.int32 and d["ids"][0] == BOS_ID and d["ids"][-1] == EOS_ID
    assert pipeline.ids_to_bytes(d["ids"]) == ref.read() and d["num_bytes"] == len(ref.read())
    assert d["name"] == ref.name
  assert len(list(pipeline.make_eval_iterator(cfg, max_docs=1))) == len(domains)


def test_files_source(tmp_path):
  (tmp_path / "a.txt").write_bytes(b"hello world\n")
  with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
    f.write(json.dumps({"body": "caf\u00e9"}) + "\n" + json.dumps({"body": "x"}) + "\n")
  cfg = pipeline.default_data_config(
    source="files", files=[str(tmp_path / "*")], text_field="body", num_epochs=1
  )
  docs = _stream_docs(_batches(cfg, seq_len=8, batch_size=2))
  assert sorted(docs) == sorted([b"hello world\n", "caf\u00e9".encode(), b"x"])
  cfg.eval_files = [str(tmp_path / "a.txt")]
  (doc,) = pipeline.make_eval_iterator(cfg)
  assert pipeline.ids_to_bytes(doc["ids"]) == b"hello world\n"


def test_config_errors_name_the_key(cfg):
  bad = cfg.copy_and_resolve_references()
  bad.source = "nope"
  with pytest.raises(ConfigError, match=r"^data\.source"):
    _batches(bad, n=1)
  bad = cfg.copy_and_resolve_references()
  bad.split = "heldout_drama"
  with pytest.raises(ConfigError, match=r"^data\.split: .*held-out"):
    _batches(bad, n=1)
  bad = cfg.copy_and_resolve_references()
  bad.num_epochs = None
  bad.weights = {"klingon": 1.0}
  with pytest.raises(ConfigError, match=r"^data\.weights"):
    _batches(bad, n=1)
  files = pipeline.default_data_config(source="files", files=["/nonexistent/*.txt"])
  with pytest.raises(ConfigError, match=r"^data\.files"):
    _batches(files, n=1)


def test_to_global_batch(cfg):
  import jax

  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  (batch,) = _batches(cfg, n=1, batch_size=8)
  out = pipeline.to_global_batch(batch, sharding)
  assert out["ids"].shape == (8, 128) and out["ids"].sharding == sharding
  np.testing.assert_array_equal(np.asarray(out["doc_ids"]), batch["doc_ids"])


def test_doc_to_ids_round_trip():
  ids = pipeline.doc_to_ids("h\u00e9")
  np.testing.assert_array_equal(ids, [BOS_ID, 104 + 4, 0xC3 + 4, 0xA9 + 4, EOS_ID])
  assert pipeline.ids_to_bytes(ids) == "h\u00e9".encode()


# ----------------------------------------------------------------------------------------------
# Stats
# ----------------------------------------------------------------------------------------------


def test_unigram_entropy_bits():
  assert unigram_entropy_bits(b"") == 0.0
  assert unigram_entropy_bits(b"aaaa") == 0.0
  assert unigram_entropy_bits(b"abab") == pytest.approx(1.0)
  assert unigram_entropy_bits(bytes(range(256)) * 3) == pytest.approx(8.0)
  chunks = [b"hello ", b"world"]
  assert unigram_entropy_bits(chunks) == pytest.approx(unigram_entropy_bits(b"hello world"))
  arr = np.frombuffer(b"hello world", np.uint8)
  assert unigram_entropy_bits(arr) == pytest.approx(unigram_entropy_bits(b"hello world"))
  text = (FIXTURE / "shakespeare" / "tragedies" / "macbeth.md").read_bytes()
  h0 = unigram_entropy_bits(text)
  assert 4.0 < h0 < 5.5 and compressor_bpb(text, "xz") < h0


# ----------------------------------------------------------------------------------------------
# Full corpus (after `make data`)
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_corpus_after_make_data():
  if not (corpus.default_raw_dir() / "SHA256SUMS").is_file():
    pytest.skip("run `make data` first")
  cfg = pipeline.default_data_config(source="default")
  splits = pipeline.mix_builder(cfg).info.splits
  assert {"train_prose", "train_drama", "train_code"} <= set(splits.keys())
  assert {"novel", "drama", "code"} <= set(pipeline.heldout_domains(cfg))
  held = {d.read() for s, docs in corpus.corpus_splits(corpus.default_raw_dir()).items()
          if s.startswith("heldout_") for d in docs}
  got = _stream_docs(_batches(cfg, n=8, seq_len=8192, batch_size=8), cut_tail=True)
  assert got and not set(got) & held
