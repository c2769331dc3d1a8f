"""Layers import one way only: each module uses only the layers before it (and its own), with no circle.

config/errors/paths/outputs/locks/libraries/hardware -> data -> tasks (the objectives) -> models -> infer -> train -> export
-> serve -> bench -> cli. Checked on every import statement, at module top or inside functions."""
import ast
from pathlib import Path

import lmtune

PACKAGE = Path(lmtune.__file__).parent
LAYERS = ["base", "data", "tasks", "models", "infer", "train", "export", "serve", "bench", "cli"]
BASE = {"config", "errors", "paths", "outputs", "locks", "libraries", "hardware"}


def layer_of(module: str) -> str | None:
    """'lmtune.data.ingest' -> 'data'; the package's own API (`lmtune/__init__.py`) sits above all."""
    parts = module.split(".")
    if parts[0] != "lmtune":
        return None
    if len(parts) == 1:
        return "api"
    head = parts[1]
    return "base" if head in BASE else head


def imports_of(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_layers_import_one_way():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mine = layer_of(module_name(path))
        if mine == "api":
            continue
        for imported, line in imports_of(path):
            theirs = layer_of(imported)
            if theirs in (None, "api") or theirs == mine:
                if theirs == "api":
                    problems.append(f"{path.relative_to(PACKAGE)}:{line} imports the package API ({imported})")
                continue
            if LAYERS.index(theirs) > LAYERS.index(mine):
                problems.append(f"{path.relative_to(PACKAGE)}:{line} ({mine}) imports {imported} ({theirs})")
    assert not problems, "\n".join(problems)


def test_no_import_circle_between_modules():
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        graph[name] = {imported for imported, _ in imports_of(path) if imported.startswith("lmtune.")}

    def visit(node, stack, done):
        if node in stack:
            raise AssertionError("import circle: " + " -> ".join([*stack[stack.index(node):], node]))
        if node in done:
            return
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt in graph and nxt != node and not nxt.startswith(node + "."):  # a package and its own modules
                visit(nxt, stack, done)
        stack.pop()
        done.add(node)

    done: set[str] = set()
    for node in graph:
        visit(node, [], done)


def test_only_the_objectives_name_objectives():
    """Outside tasks/ code asks an objective (or uses its `.name`) instead of switching on its name: no
    comparison with an objective's name, no `"objective": "clm"`, no `get_objective("mlm")`-style call with
    a literal. (config.py declares the vocabulary; tests/tasks/test_objective_keys.py checks it against the
    registry. "classify" is also a capability, the verb a model offers: those uses are not objectives.)"""
    from lmtune.tasks import OBJECTIVES

    def names_objective(node) -> bool:
        return isinstance(node, ast.Constant) and node.value in OBJECTIVES

    takes_objective = {"get_objective", "serving_objective", "load_model", "load_pretrained", "load"}
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "tasks" or relative == Path("config.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            found = []
            if isinstance(node, ast.Compare):
                if any(getattr(n, "attr", None) == "capabilities" for n in node.comparators):
                    continue  # `"classify" in loaded.capabilities`: the verb, not the objective
                found = [n for n in [node.left, *node.comparators] if names_objective(n)]
                found += [e for n in node.comparators if isinstance(n, (ast.Tuple, ast.List, ast.Set))
                          for e in n.elts if names_objective(e)]
            elif isinstance(node, ast.Dict):
                found = [v for k, v in zip(node.keys, node.values)
                         if isinstance(k, ast.Constant) and k.value == "objective" and names_objective(v)]
            elif isinstance(node, ast.Call):
                callee = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if callee in takes_objective:
                    found = [a for a in [*node.args, *(k.value for k in node.keywords)] if names_objective(a)]
            problems += [f"{relative}:{n.lineno} names the objective '{n.value}'" for n in found]
    assert not problems, "\n".join(problems)
