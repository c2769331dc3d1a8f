"""Layers import one way only: each module uses only the layers before it (and its own), with no circle.

config/errors/paths/outputs/locks/libraries/hardware -> data -> tasks (the objectives) -> models -> infer -> train
-> export -> serve -> bench -> cli. Checked on every import statement, at module top or inside functions."""

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
            raise AssertionError("import circle: " + " -> ".join([*stack[stack.index(node) :], node]))
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
                if any("capabilities" in (getattr(n, "attr", None), getattr(n, "id", None)) for n in node.comparators):
                    continue  # `"classify" in loaded.capabilities`: the verb, not the objective
                found = [n for n in [node.left, *node.comparators] if names_objective(n)]
                found += [
                    e
                    for n in node.comparators
                    if isinstance(n, (ast.Tuple, ast.List, ast.Set))
                    for e in n.elts
                    if names_objective(e)
                ]
            elif isinstance(node, ast.Dict):
                found = [
                    v
                    for k, v in zip(node.keys, node.values)
                    if isinstance(k, ast.Constant) and k.value == "objective" and names_objective(v)
                ]
            elif isinstance(node, ast.Call):
                callee = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if callee in takes_objective:
                    found = [a for a in [*node.args, *(k.value for k in node.keywords)] if names_objective(a)]
            problems += [f"{relative}:{n.lineno} names the objective '{n.value}'" for n in found]
    assert not problems, "\n".join(problems)


OBJECTIVE_LOOKUPS = {"get_objective", "serving_objective", "objective_of", "objective_for"}
HARNESS = {"bench"}  # the bench drives each objective's contest by name, as the tests do


def objective_modules() -> set[str]:
    """tasks/ modules that define an objective (a module-level OBJECTIVE); base, common, heads, losses are shared."""
    return {
        module_name(path)
        for path in (PACKAGE / "tasks").glob("*.py")
        if any(
            isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "OBJECTIVE" for t in node.targets)
            for node in ast.parse(path.read_text()).body
        )
    }


def test_objective_modules_are_reached_only_through_the_registry():
    """Outside tasks/ an objective is asked (its members), never imported by module or compared by identity:
    `objective is CAUSAL` or `loaded.objective == get_objective(...)` would put one objective's behaviour
    into another layer, where a new objective could not reach it."""
    modules = objective_modules()
    assert {"lmtune.tasks.clm", "lmtune.tasks.mlm", "lmtune.tasks.classify", "lmtune.tasks.sft"} <= modules

    def is_objective_value(node) -> bool:
        if isinstance(node, ast.Call):
            return (getattr(node.func, "id", None) or getattr(node.func, "attr", None)) in OBJECTIVE_LOOKUPS
        return isinstance(node, ast.Attribute) and node.attr == "objective"

    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in {"tasks", *HARNESS}:
            continue
        for imported, line in imports_of(path):
            if imported in modules:
                problems.append(f"{relative}:{line} imports the objective module {imported}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "lmtune.tasks":
                problems += [
                    f"{relative}:{node.lineno} imports the objective module lmtune.tasks.{a.name}"
                    for a in node.names
                    if f"lmtune.tasks.{a.name}" in modules
                ]
            if isinstance(node, ast.Compare) and any(
                isinstance(op, (ast.Is, ast.IsNot, ast.Eq, ast.NotEq)) for op in node.ops
            ):
                operands = [node.left, *node.comparators]
                if any(is_objective_value(n) for n in operands) and not any(
                    isinstance(n, ast.Constant) and n.value is None for n in operands
                ):
                    problems.append(f"{relative}:{node.lineno} compares objectives by identity")
    assert not problems, "\n".join(problems)
