"""The package's layout rules: modules use only each other's public names, no module grows past
~600 lines without saying why at its top, no import circle (deferred imports included), and the
areas import downwards only (docs/architecture.md, "Package layout")."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "bltjax"
MAX_LINES = 600
REASON = "Longer than 600 lines:"  # the marker a long module's docstring carries


def _modules():
  return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _imported_modules(tree: ast.Module) -> set[str]:
  """Local names bound to bltjax modules (`from bltjax import x`, `import bltjax.x as y`)."""
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bltjax"):
      for a in node.names:
        if a.name[0].islower():  # modules (classes and constants are capitalised)
          names.add(a.asname or a.name)
    elif isinstance(node, ast.Import):
      for a in node.names:
        if a.name.startswith("bltjax.") and a.asname:
          names.add(a.asname)
  return names


def test_no_module_uses_another_modules_private_names():
  bad = []
  for path in _modules():
    tree = ast.parse(path.read_text())
    mods = _imported_modules(tree)
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in mods and node.attr.startswith("_")
          and not node.attr.startswith("__")):
        bad.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {node.value.id}.{node.attr}")
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bltjax"):
        bad += [f"{path.relative_to(PKG.parent)}:{node.lineno}: from {node.module} import "
                f"{a.name}" for a in node.names if a.name.startswith("_")]
  assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_the_checker_sees_a_private_use(tmp_path):
  tree = ast.parse("from bltjax import engine\nx = engine._forward\n")
  assert "engine" in _imported_modules(tree)


def test_long_modules_say_why():
  bad = []
  for path in _modules():
    text = path.read_text()
    n = text.count("\n")
    doc = ast.get_docstring(ast.parse(text)) or ""
    if n > MAX_LINES and REASON not in doc:
      bad.append(f"{path.relative_to(PKG.parent)}: {n} lines")
  assert not bad, f"modules over {MAX_LINES} lines without '{REASON} ...' in the docstring:\n" + \
    "\n".join(bad)


# ------------------------------------------------------------------------------------------------
# Import graph: every `import` / `from ... import` of a bltjax module, at any depth of the file
# (an import inside a function closes a circle just as well).

# The areas (docs/architecture.md, "Package layout"): a package's modules are its area; the
# top-level modules are listed. An area may import itself and the areas listed for it.
PACKAGE_AREAS = ("modeling", "training", "decoding", "data", "convert", "eval")
TOP_LEVEL = {
  "config": "core", "paths": "core", "multihost": "core", "precision": "core", "weights": "core",
  "score": "eval", "reproduce": "apps", "demo": "apps", "report": "apps",
}
MAY_IMPORT = {
  "core": {"core"},
  "modeling": {"core"},
  "data": {"core"},
  "training": {"core", "modeling", "data"},
  "decoding": {"core", "modeling"},
  "convert": {"core"},
  "eval": {"core", "modeling", "data", "decoding"},
  "apps": {"core", *PACKAGE_AREAS},
}


def area_of(module: str) -> str | None:
  top = module.split(".")[0]
  return top if top in PACKAGE_AREAS else TOP_LEVEL.get(module)


def _module_name(path: Path) -> str:
  parts = path.relative_to(PKG).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
  """{module: bltjax modules it imports}; `sources` maps a module name (without `bltjax.`) to
  (its source text, whether it is a package `__init__`)."""
  names = set(sources)
  graph = {}
  for name, (text, is_pkg) in sources.items():
    pkg = name if is_pkg else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, ast.ImportFrom):
        mod = node.module or ""
        if node.level:  # relative: from the package, up level - 1
          base = [x for x in pkg.split(".") if x]
          base = base[:len(base) - node.level + 1]
          mod = ".".join(["bltjax", *base] + ([mod] if mod else []))
        if mod != "bltjax" and not mod.startswith("bltjax."):
          continue
        mod = mod.removeprefix("bltjax").lstrip(".")
        for a in node.names:
          full = f"{mod}.{a.name}".lstrip(".")
          out.add(full if full in names else mod)
      elif isinstance(node, ast.Import):
        out |= {a.name.removeprefix("bltjax.") for a in node.names
                if a.name.startswith("bltjax.")}
    graph[name] = {m for m in out if m in names and m != name}
  return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        found.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def _package_graph() -> dict[str, set[str]]:
  return import_graph({_module_name(p): (p.read_text(), p.name == "__init__.py")
                       for p in _modules()})


def test_no_import_circles():
  found = circles(_package_graph())
  assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_every_module_has_an_area_and_areas_import_downwards():
  graph = _package_graph()
  graph.pop("", None)  # the package's own __init__ imports nothing
  area = {m: area_of(m) for m in graph}
  unplaced = sorted(m for m, a in area.items() if a is None)
  assert not unplaced, f"top-level modules without an area in tests/layout_test.py: {unplaced}"
  bad = [f"{m} ({area[m]}) imports {d} ({area[d]})" for m in sorted(graph)
         for d in sorted(graph[m])
         if area[d] != area[m] and area[d] not in MAY_IMPORT[area[m]]]
  assert not bad, "imports that climb between areas:\n" + "\n".join(bad)


def test_the_graph_sees_deferred_and_relative_imports_and_circles():
  g = import_graph({
    "a": ("def f():\n  from bltjax import b\n", False),
    "b": ("import bltjax.c as c\n", False),
    "c": ("from bltjax.a import f\n", False),
    "d": ("from bltjax.config import X\n", False),
    "p": ("", True),
    "p.q": ("from . import r\n", False),
    "p.r": ("from ..a import f\n", False),
  })
  assert g["a"] == {"b"} and g["b"] == {"c"} and g["c"] == {"a"} and g["d"] == set()
  assert g["p.q"] == {"p.r"} and g["p.r"] == {"a"}
  assert circles(g) == [["a", "b", "c"]]
