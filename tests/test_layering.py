"""The house's rules, read from the source (ast): no import cycle, no sys.path edits, pruning_utils only for users."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("lth", "Detection", "Segmentation", "SimCLR", "MoCo")
SKIP = {".git", ".venv", "__pycache__", "results", "data"}


def python_files(folders=None):
    """Repository-relative paths of the .py files (under ``folders`` when given)."""
    found = []
    for top in folders or [ROOT]:
        for dirpath, dirs, files in os.walk(os.path.join(ROOT, top) if folders else top):
            dirs[:] = sorted(d for d in dirs if d not in SKIP and not d.startswith("."))
            found += [os.path.relpath(os.path.join(dirpath, name), ROOT) for name in sorted(files)
                      if name.endswith(".py")]
    return found


def module_files() -> dict[str, str]:
    """``{module name: path}`` of the package modules, pruning_utils and the top-level scripts."""
    modules = {}
    for path in python_files(PACKAGES):
        name = path[: -len(".py")].replace(os.sep, ".")
        modules[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    for name in os.listdir(ROOT):
        if name.endswith(".py"):
            modules[name[: -len(".py")]] = name
    return modules


def read(path: str) -> str:
    with open(os.path.join(ROOT, path)) as handle:
        return handle.read()


def imported_names(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module name an import statement of ``source`` names, at any depth (functions, ifs, try)."""
    names = set()
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from lth import cli`
    return names


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    graph = {}
    for module, path in modules.items():
        edges = set()
        for name in imported_names(read(path), module, path.endswith("__init__.py")):
            while name and name not in modules:  # `lth.cli.x` -> lth.cli; `torch` -> nothing
                name = name.rpartition(".")[0]
            if name and name != module:
                edges.add(name)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as one loop found in it."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(loop_in(graph, set(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def loop_in(graph, component: set[str]) -> list[str]:
    """One closed path through ``component`` (for the failure message)."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        nxt = min(graph[path[-1]] & component, key=lambda name: (name in seen and name != start, name))
        path.append(nxt)
        if nxt in seen:
            return path[path.index(nxt):]
        seen.add(nxt)


def test_no_two_modules_import_each_other_directly_or_around_a_loop():
    graph = import_graph()
    assert {"lth.pruning", "lth.tickets", "lth.cli", "Detection.runner", "pruning_utils"} <= set(graph)
    assert "lth.pruning" in graph["lth.tickets"] and "lth.tickets" in graph["pruning_utils"]  # edges are seen
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" -> ".join(loop) for loop in found)


def test_the_cycle_check_sees_imports_inside_functions():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    late = "def late():\n    if True:\n        from lth import cli\n"
    assert "lth.cli" in imported_names(late, "lth.tickets")
    assert "lth.pruning" in imported_names("from . import pruning", "lth.tickets")


def _edits_sys_path(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value  # sys.path.insert(...), sys.path.append(...)
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            target = next((t.value if isinstance(t, ast.Subscript) else t for t in targets), None)
        if target is not None and ast.unparse(target) == "sys.path":
            return True
    return False


def test_no_file_edits_sys_path():
    """The editable install (pyproject.toml, the Makefile's venv step) makes every script find lth."""
    editing = [path for path in python_files()
               if _edits_sys_path(ast.parse(read(path), path))]
    assert not editing, f"files that edit sys.path: {editing}"
    assert _edits_sys_path(ast.parse("import sys\nsys.path.insert(0, '..')"))
    assert _edits_sys_path(ast.parse("import sys\nsys.path[:] = []"))


def test_pruning_utils_is_for_users_the_code_imports_lth_pruning():
    """pruning_utils re-exports lth.pruning and lth.tickets; the code itself imports those."""
    importing = [path for path in python_files()
                 if not path.startswith("tests" + os.sep) and path != "pruning_utils.py"
                 and "pruning_utils" in imported_names(read(path), "_")]
    assert not importing, f"import lth.pruning instead of pruning_utils in: {importing}"
    import pruning_utils
    from lth import pruning, tickets

    for name in pruning_utils.__all__:
        assert getattr(pruning_utils, name) is getattr(pruning, name, None) or \
            getattr(pruning_utils, name) is getattr(tickets, name)
    assert {"global_prune", "extract_mask", "rewind", "reverse_mask", "apply_mask", "read_masks"} <= set(
        pruning_utils.__all__)
