"""The package's layout rules: modules use only each other's public names, and no module grows
past ~600 lines without saying why at its top."""

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
