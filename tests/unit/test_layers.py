"""The package's import graph keeps the layers of docs/architecture.md.

Files are nodes and every import is an edge, imports inside functions included (they run too).
"""

import ast
import functools
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "avflow_jax"
# Layer of each folder of the package; a module may import only its own layer or lower ones.
LAYERS = {"core": 0, "text": 0, "models": 1, "data": 2, "training": 3, "inference": 3,
          "evaluation": 4}
COMMAND_LAYER = 5  # Top-level modules: commands, cli, api.
MAX_DEPTH = 6


def _modules() -> dict[str, str]:
  mods = {}
  for d, _, names in os.walk(os.path.join(ROOT, PACKAGE)):
    for n in names:
      if n.endswith(".py"):
        path = os.path.join(d, n)
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        mods[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
  return mods


def _imported_names(module: str, path: str) -> set[str]:
  """Every module name `module` imports (absolute or relative, at any depth of the file)."""
  out = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = module.split(".")
        if not path.endswith("__init__.py"):
          parts = parts[:-1]
        parts = parts[:len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      out.add(base)
      out.update(f"{base}.{a.name}" for a in node.names)
  return out


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, frozenset]:
  """{module: modules of the package it imports}, plus the foreign top-level names it imports."""
  mods = _modules()
  graph = {}
  for m, path in mods.items():
    edges = set()
    for name in _imported_names(m, path):
      if name.split(".")[0] in ("data_prep", "configs", "tests", "benchmarks"):
        edges.add(name.split(".")[0])
        continue
      while name and name not in mods:
        name = name.rpartition(".")[0]
      if name and name != m and name.startswith(PACKAGE):
        edges.add(name)
    graph[m] = frozenset(edges)
  return graph


def layer(module: str) -> int:
  parts = module.split(".")
  if len(parts) == 1:  # The package's own __init__ (a docstring and the version).
    return 0
  if parts[1] in LAYERS:  # A folder's module, or the folder's __init__.
    return LAYERS[parts[1]]
  return COMMAND_LAYER  # avflow_jax.X: a command, cli or api.


def test_every_folder_has_a_layer():
  folders = {m.split(".")[1] for m in import_graph() if m.count(".") >= 2}
  assert folders <= set(LAYERS), f"folders without a layer: {folders - set(LAYERS)}"


def test_the_package_never_imports_data_prep_configs_or_tests():
  bad = {m: sorted(e & {"data_prep", "configs", "tests", "benchmarks"})
         for m, e in import_graph().items() if e & {"data_prep", "configs", "tests", "benchmarks"}}
  assert not bad, bad


def test_imports_only_go_down():
  graph = import_graph()
  up = [(m, t) for m, edges in graph.items() for t in edges
        if t.startswith(PACKAGE) and layer(t) > layer(m)]
  assert not up, f"imports from a lower layer to a higher one: {up}"


@pytest.mark.parametrize("a,b", [("training", "inference"), ("inference", "training")])
def test_training_and_inference_are_siblings(a, b):
  graph = import_graph()
  crossing = [(m, t) for m, edges in graph.items() for t in edges
              if m.startswith(f"{PACKAGE}.{a}.") and t.startswith(f"{PACKAGE}.{b}")]
  assert not crossing, crossing


def depth_and_path() -> tuple[int, tuple]:
  """The longest import chain (in files); raises on a cycle."""
  graph = import_graph()
  memo = {}

  def longest(m, stack):
    if m in stack:
      raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + (m,)))
    if m not in memo:
      below = [longest(t, stack + (m,)) for t in graph[m] if t in graph]
      memo[m] = max(below, key=lambda x: x[0], default=(0, ()))
      memo[m] = (memo[m][0] + 1, (m,) + memo[m][1])
    return memo[m]

  return max((longest(m, ()) for m in graph), key=lambda x: x[0])


def test_no_cycles_and_at_most_six_levels():
  depth, path = depth_and_path()
  assert depth <= MAX_DEPTH, f"{depth} levels: {' -> '.join(path)}"


def test_the_graph_sees_lazy_imports(tmp_path):
  """An import inside a function counts: the checker itself must see it."""
  path = tmp_path / "m.py"
  path.write_text("def f():\n  from avflow_jax.training import loop\n  return loop\n")
  assert "avflow_jax.training.loop" in _imported_names("avflow_jax.inference.m", str(path))
