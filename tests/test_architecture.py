"""The package's structure (docs/architecture.md): rooms import only downwards, the kernels sit
below decoding, the package never reads configs/, and modules and functions stay small."""

import ast
import collections
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("draftopd_jax", "pallas_kernels")


def modules() -> list[pathlib.Path]:
  return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def room(parts: tuple[str, ...]) -> str:
  """The folder a module path (`draftopd_jax/opd/replay.py` or dotted name parts) belongs to."""
  if parts[0] == "pallas_kernels":
    return "pallas_kernels"
  return parts[1].removesuffix(".py") if len(parts) > 1 else "draftopd_jax"


def imported_rooms(path: pathlib.Path) -> set[str]:
  """Rooms `path` imports from, anywhere in the module (imports inside functions count)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    elif isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    else:
      continue
    for name in names:
      parts = tuple(name.split("."))
      if parts[0] in PACKAGES and (len(parts) > 1 or parts[0] == "pallas_kernels"):
        found.add(room(parts))
  return found


def room_graph() -> dict[str, set[str]]:
  graph = collections.defaultdict(set)
  for path in modules():
    source = room(path.relative_to(ROOT).parts)
    graph[source] |= imported_rooms(path) - {source}
  return graph


def test_rooms_import_without_cycles():
  graph = room_graph()
  state = {}  # room -> "open" while on the path, "done" after

  def visit(node: str, path: list[str]) -> None:
    if state.get(node) == "open":
      raise AssertionError(f"import cycle: {' -> '.join(path + [node])}")
    if state.get(node) != "done":
      state[node] = "open"
      for nxt in sorted(graph.get(node, ())):
        visit(nxt, path + [node])
      state[node] = "done"

  for node in sorted(graph):
    visit(node, [])
  assert "decoding" not in graph["pallas_kernels"]
  assert graph["models"] <= {"errors"} and graph["sampling"] <= {"errors"}


def test_the_package_never_reads_the_repository_configs():
  for path in modules():
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
      if (isinstance(node, ast.Constant) and isinstance(node.value, str)
          and id(node) not in docstrings and node.value.strip("/").split("/")[0] == "configs"):
        raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} names configs/")


def test_modules_and_functions_stay_small():
  for path in modules():
    source = path.read_text()
    assert source.count("\n") <= 300, f"{path.relative_to(ROOT)} has over 300 lines"
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        assert length <= 60, f"{path.relative_to(ROOT)}:{node.lineno} {node.name} has {length} lines"
