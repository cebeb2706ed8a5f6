"""The import graph of VLP's own modules: arrows point one way (training -> processing, training -> modeling_vlp,
never back) and no modules import each other in a circle.

Every import counts, at module level or inside a function: an import deferred into a function is still a circle.
"""

import ast
import os

import pytest
from repo_paths import ROOT

PACKAGES = ("modeling_vlp", "processing", "training", "model_cards")
# modeling_vlp.py imports its task file so that `save_pretrained` copies modeling_vlp_tasks.py into every checkpoint
# (transformers copies a model file's relative imports); the task file builds on the base classes. The one circle.
ALLOWED_CIRCLES = [{"modeling_vlp.modeling_vlp", "modeling_vlp.modeling_vlp_tasks"}]
# Which top-level folder may import which (besides itself).
MAY_IMPORT = {
    "modeling_vlp": set(),
    "model_cards": set(),
    "processing": {"modeling_vlp"},
    "training": {"modeling_vlp", "processing", "model_cards"},
}


def _module_name(path):
    relative = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
    return ".".join(relative[:-1] if relative[-1] == "__init__" else relative)


def _targets(module, is_package, tree, known):
    """VLP modules that `module` imports (`from . import x` resolved to the submodule when it is one)."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - node.level + 1]
                target = ".".join(stem + ([node.module] if node.module else []))
            else:
                target = (node.module or "").removeprefix("vlp.")
            names = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name.removeprefix("vlp.") for alias in node.names]
        for name in names:
            # the longest known module the name lies in (a class imported from a module counts as the module)
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in known:
                    if candidate != module:
                        found.add(candidate)
                    break
    return found


def import_graph():
    files = {}
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    files[_module_name(path)] = path
    graph = {}
    for module, path in files.items():
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        graph[module] = _targets(module, path.endswith("__init__.py"), tree, files)
    return graph


def circles(graph):
    """Strongly connected components of more than one module (Tarjan), as sets."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_the_graph_sees_the_imports_it_must_see():
    graph = import_graph()
    assert "training.studies.report" in graph["training.studies.runner"]
    assert "modeling_vlp.modeling_vlp" in graph["modeling_vlp.modeling_vlp_tasks"]
    assert "processing.worlds.shapes" in graph["training.pretrain.data"]


def test_tarjan_finds_a_planted_circle_and_nothing_in_a_chain():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_module_of_vlp_imports_itself_in_a_circle():
    found = [component for component in circles(import_graph()) if component not in ALLOWED_CIRCLES]
    assert not found, f"import circles: {[sorted(component) for component in found]}"


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_arrows_point_one_way(package):
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if module.split(".")[0] == package
        for target in targets
        if target.split(".")[0] not in MAY_IMPORT[package] | {package}
    )
    assert not wrong, f"{package} may import only {sorted(MAY_IMPORT[package])}: {wrong}"
