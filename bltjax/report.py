"""Tables and figures from evaluation runs: `python -m bltjax.report RUN_DIR... --out DIR`.

Reads each RUN_DIR/results.json (written by `python -m bltjax.eval`) and writes DIR/report.md,
one table per suite (translation: one per direction) in the layout of arXiv 2605.08044's tables:
model, method, setting, score, decoder NFE, global NFE, estimated GB per example (Eq. 8),
decrease vs BLT (1 - GB / GB of the `ar` run of the same suite and checkpoint), measured
bytes/s and the wall-clock speed-up over that `ar` run. Figures (PNG, Agg backend), each
skipped when its runs are absent: quality vs estimated bandwidth, speed vs bandwidth, BLT-S
acceptance vs draft length, BLT-D decoder steps per block vs the confidence threshold α.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SUITE_ORDER = ("translation", "humaneval", "mc", "bpb")


class ReportError(Exception):
  """A run directory or option the report cannot use; printed on one line, exit status 2."""


def load_run(path: str) -> dict[str, Any]:
  p = Path(path)
  f = p / "results.json" if p.is_dir() else p
  try:
    res = json.loads(f.read_text())
  except (OSError, ValueError) as e:
    raise ReportError(f"{path}: no readable results.json ({e})") from e
  if not isinstance(res, dict) or not {"suite", "method", "scores"} <= set(res):
    raise ReportError(f"{f}: not a bltjax.eval results.json (needs suite, method, scores)")
  res["_dir"] = str(p)
  return res


def method_label(r: dict[str, Any]) -> str:
  z = r.get("settings", {}).get("block_size")
  return {"ar": "BLT", "blts": "BLT-S", "bltd": f"BLT-D-{z}", "bltdv": f"BLT-DV-{z}"}.get(
    r["method"], r["method"])


def setting_label(r: dict[str, Any]) -> str:
  s, m = r.get("settings", {}), r["method"]
  if r.get("kind") == "likelihood":
    return "causal"
  if m == "ar":
    out = "AR"
  elif m == "blts":
    out = f"k={s.get('draft_k')}"
  else:
    rule = s.get("rule") or ("confidence" if m == "bltd" else "entropy")
    out = {"confidence": f"conf α={s.get('alpha')}", "entropy": f"EB γ={s.get('gamma')}",
           "one_step": "one-step"}.get(rule, rule)
    if rule == "entropy" and s.get("eb_rule", "sum_minus_max") != "sum_minus_max":
      out += f" ({s['eb_rule']})"
    if s.get("block_latent", "partial_last_patch") != "partial_last_patch":
      out += f", {s['block_latent']}"
  if s.get("temperature"):
    out += f", T={s['temperature']}"
  return out


def _fmt(x: Any, spec: str = ".2f") -> str:
  if x is None:
    return "–"
  return format(x, spec) if isinstance(x, (int, float)) else str(x)


def _baseline(r: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any] | None:
  ckpt = r.get("settings", {}).get("checkpoint")
  for b in runs:
    if b["suite"] == r["suite"] and b["method"] == "ar" and \
        b.get("settings", {}).get("checkpoint") == ckpt:
      return b
  return None


def _eff(r: dict[str, Any], group: str | None) -> dict[str, Any]:
  return (r.get("groups") or {}).get(group, r) if group else r


def efficiency_cells(r: dict[str, Any], runs: list[dict[str, Any]], group: str | None = None):
  """Decoder NFE, global NFE, est. GB, decrease vs BLT, bytes/s, × AR wall-clock."""
  e = _eff(r, group)
  nfe = e.get("nfe") or {}
  base = _baseline(r, runs)
  b = _eff(base, group) if base else {}
  gb, bgb = e.get("est_bandwidth_gb"), b.get("est_bandwidth_gb")
  dec = None if r["method"] == "ar" or not gb or not bgb else 100 * (1 - gb / bgb)
  bps, bbps = e.get("bytes_per_second"), b.get("bytes_per_second")
  speed = bps / bbps if bps and bbps else None
  return [_fmt(nfe.get("decoder"), ".1f"), _fmt(nfe.get("encoder_global"), ".1f"),
          _fmt(gb, ".4g"), "–" if dec is None else f"{dec:.2f}%", _fmt(bps, ".1f"),
          _fmt(speed, ".2f")]


EFF_HEAD = ["Decoder NFE", "Global NFE", "Est. GB", "Decrease vs BLT", "bytes/s", "× AR wall-clock"]


def _table(head: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def _ident(r: dict[str, Any]) -> list[str]:
  return [str(r.get("model", "?")), method_label(r), setting_label(r)]


def suite_tables(suite: str, runs: list[dict[str, Any]]) -> list[tuple[str, str]]:
  """(title, markdown table) pairs for one suite's runs."""
  rs = [r for r in runs if r["suite"] == suite]
  ident = ["Model", "Method", "Setting"]
  if suite == "translation":
    out = []
    for g in sorted({g for r in rs for g in r["scores"]}):
      rows = [_ident(r) + [_fmt(r["scores"][g].get("bleu")), _fmt(r["scores"][g].get("chrf")),
                           str(r["scores"][g].get("n"))] + efficiency_cells(r, runs, g)
              for r in rs if g in r["scores"]]
      title = f"Translation {g.replace('-', ' → ')}"
      out.append((title, _table(ident + ["BLEU", "chrF", "n"] + EFF_HEAD, rows)))
    return out
  if suite == "humaneval":
    rows = [_ident(r) + [_fmt(_pct(r["scores"].get("pass@1"))),
                         _fmt(r["scores"].get("canonical_bpb"), ".3f"), str(r.get("n"))]
            + efficiency_cells(r, runs) for r in rs]
    return [("HumanEval", _table(ident + ["pass@1 (%)", "canonical BPB", "n"] + EFF_HEAD, rows))]
  if suite == "mc":
    rows = [_ident(r) + [_fmt(_pct(r["scores"].get("acc"))),
                         _fmt(_pct(r["scores"].get("acc_norm"))), str(r.get("n"))] for r in rs]
    return [("Multiple choice (likelihood)", _table(ident + ["acc (%)", "acc_norm (%)", "n"],
                                                    rows))]
  if suite == "bpb":
    domains = sorted({d for r in rs for d in r["scores"] if d != "all"}) + ["all"]
    rows = [_ident(r) + [_fmt((r["scores"].get(d) or {}).get("bpb"), ".3f") for d in domains]
            for r in rs]
    return [("Held-out bits per byte", _table(ident + domains, rows))]
  return []


def _pct(x: float | None) -> float | None:
  return None if x is None else 100 * x


def primary(r: dict[str, Any]) -> list[tuple[str, float]]:
  """(label, value) quality points of a generation run: BLEU per direction, pass@1 (%)."""
  if r["suite"] == "translation":
    return [(f"BLEU {g}", s["bleu"]) for g, s in sorted(r["scores"].items())]
  if r["suite"] == "humaneval" and r["scores"].get("pass@1") is not None:
    return [("pass@1 (%)", 100 * r["scores"]["pass@1"])]
  return []


def _point_label(r: dict[str, Any]) -> str:
  return f"{method_label(r)} {setting_label(r)}"


def figures(runs: list[dict[str, Any]], out: Path) -> list[tuple[str, str]]:
  """Writes the PNGs whose runs are present; returns (title, file name) pairs."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  made = []
  gen = [r for r in runs if r.get("kind") == "generate" and r.get("est_bandwidth_gb")]
  panels = sorted({(r["suite"], lab) for r in gen for lab, _ in primary(r)})
  if panels:
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (suite, lab) in zip(axes[0], panels, strict=True):
      for r in gen:
        for lab2, y in primary(r):
          if r["suite"] == suite and lab2 == lab:
            g = lab.split()[-1] if suite == "translation" else None
            x = _eff(r, g).get("est_bandwidth_gb")
            ax.scatter([x], [y])
            ax.annotate(_point_label(r), (x, y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
      ax.set(xlabel="estimated GB per example (Eq. 8)", ylabel=lab, title=suite)
    fig.tight_layout()
    fig.savefig(out / "quality_vs_bandwidth.png", dpi=120)
    plt.close(fig)
    made.append(("Quality vs estimated bandwidth", "quality_vs_bandwidth.png"))
  speed = [r for r in gen if r.get("bytes_per_second")]
  if speed:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for r in speed:
      ax.scatter([r["est_bandwidth_gb"]], [r["bytes_per_second"]])
      ax.annotate(f"{r['suite']}: {_point_label(r)}", (r["est_bandwidth_gb"],
                  r["bytes_per_second"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="estimated GB per example (Eq. 8)", ylabel="generated bytes / s (wall-clock)")
    fig.tight_layout()
    fig.savefig(out / "speed_vs_bandwidth.png", dpi=120)
    plt.close(fig)
    made.append(("Wall-clock speed vs estimated bandwidth", "speed_vs_bandwidth.png"))
  made += _line_figure(plt, [r for r in runs if r["method"] == "blts" and r.get("speculation")],
                       lambda r: r["settings"].get("draft_k"),
                       lambda r: r["speculation"].get("acceptance"), lambda r: r["suite"],
                       "draft length k", "acceptance (accepted / drafted)",
                       out / "acceptance_vs_draft.png", "BLT-S acceptance vs draft length")
  bltd = [r for r in runs if r["method"] == "bltd" and r.get("blocks")
          and (r["settings"].get("rule") or "confidence") == "confidence"]
  made += _line_figure(plt, bltd, lambda r: r["settings"].get("alpha"),
                       lambda r: r["blocks"].get("decoder_steps_per_block"),
                       lambda r: f"{r['suite']} {method_label(r)}", "confidence threshold α",
                       "decoder steps per block", out / "steps_per_block_vs_alpha.png",
                       "BLT-D decoder steps per block vs α")
  return made


def _line_figure(plt, runs, xf, yf, keyf, xlabel, ylabel, path: Path, title: str):
  pts = [(keyf(r), xf(r), yf(r)) for r in runs]
  pts = [p for p in pts if p[1] is not None and p[2] is not None]
  if not pts:
    return []
  fig, ax = plt.subplots(figsize=(5, 3.6))
  for key in sorted({p[0] for p in pts}):
    xy = sorted((x, y) for k, x, y in pts if k == key)
    ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=key)
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return [(title, path.name)]


NOTES = """\
Notes:
- Est. GB: arXiv 2605.08044 Eq. 8, 2 bytes/param × (decoder NFE · P_dec + global NFE ·
  (P_enc + P_glob)) per example (hash tables and the entropy model excluded; a proxy that
  ignores KV-cache traffic). Decrease vs BLT and × AR wall-clock compare with the `ar` run of
  the same suite and checkpoint; bytes/s is measured on the machine that ran the evaluation.
- NFEs are means per example; the prompt pass is not counted.
"""
VERSE_NOTE = ("- The translation text is the KJV (1769) ↔ Reina-Valera 1909 Bible: archaic, "
              "religious language; these are not FLORES scores.\n")


def write_report(runs: list[dict[str, Any]], out: Path) -> Path:
  out.mkdir(parents=True, exist_ok=True)
  parts = ["# Evaluation report", "", f"Runs: {len(runs)}", ""]
  suites = [s for s in SUITE_ORDER if any(r["suite"] == s for r in runs)]
  suites += sorted({r["suite"] for r in runs} - set(suites))
  for s in suites:
    for title, table in suite_tables(s, runs):
      parts += [f"## {title}", "", table, ""]
  figs = figures(runs, out)
  if figs:
    parts += ["## Figures", ""]
    for title, name in figs:
      parts += [f"### {title}", "", f"![{title}]({name})", ""]
  parts.append(NOTES)
  if any(r["suite"] == "translation" and _is_verses(r) for r in runs):
    parts[-1] += VERSE_NOTE
  path = out / "report.md"
  path.write_text("\n".join(parts))
  return path


def _is_verses(r: dict[str, Any]) -> bool:
  s = r.get("settings", {})
  return not s.get("tfds") and (not s.get("pairs") or "verse" in str(s.get("pairs")))


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, exit status 2
    self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
  ap = _Parser(prog="python -m bltjax.report", description=__doc__.splitlines()[0])
  ap.add_argument("runs", nargs="+", help="run directories of python -m bltjax.eval")
  ap.add_argument("--out", required=True, help="directory for report.md and the PNGs")
  a = ap.parse_args(argv)
  try:
    runs = [load_run(p) for p in a.runs]
    if Path(a.out).exists() and not Path(a.out).is_dir():
      raise ReportError(f"--out {a.out}: exists and is not a directory")
    path = write_report(runs, Path(a.out))
  except ReportError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
