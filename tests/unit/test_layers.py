"""dq's imports flow one way: management -> processes | admin | backend -> stats, tracing
-> models -> db -> conf, exceptions, queues, serialization, log. No module imports one of a
layer above its own or a sibling of its layer, no import circles, no import inside a
function to dodge one. Imports under ``if TYPE_CHECKING:`` exist for the type checker only
(a mixin naming the model it is mixed into): they are never run, so they make no circle,
but they too go only to their own layer or a lower one."""

import ast
from pathlib import Path

DQ = Path(__file__).resolve().parents[2] / "dq"

# Lower layers first; a module may import its own layer's modules and lower layers'.
LAYERS = [
    {
        "dq.conf",
        "dq.exceptions",
        "dq.queues",
        "dq.serialization",
        "dq.apps",
        "dq.problems",
        "dq.schedules",
        "dq.log",
    },
    {"dq.db"},
    {"dq.models"},
    {"dq.stats", "dq.checks", "dq.results", "dq.tracing", "dq.batches", "dq.chains"},
    # Siblings: none of these imports another.
    {"dq.backend", "dq.admin", "dq.processes"},
    # Above the admin: its template tags say times as the admin pages do.
    {"dq.management", "dq.templatetags", "dq.views"},
]
SIBLINGS = LAYERS[4]
# The imports inside a function, and why: psycopg is imported on first use, so that a
# project on SQLite does not need it installed; dq's metrics (and so prometheus_client)
# once the supervisor has named their directory, which prometheus_client reads at import,
# and only with a metrics port, so that a project without one does not need it installed;
# OpenTelemetry in a try at import, where it is installed (dq.tracing does nothing without).
LAZY = {
    ("dq.tracing", "opentelemetry"),
    ("dq.db.postgresql", "django.db.backends.postgresql.base"),
    ("dq.processes.supervisor", "dq.processes.metrics"),
}


def module_name(path):
    parts = path.relative_to(DQ.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(module, node, is_package):
    """The absolute names a from-import or import names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    prefix = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
    if node.level == 0:
        prefix = node.module
    # "from . import db" names a module; "from .db import database" a module's member.
    return [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]


def dq_modules():
    return {module_name(path): path for path in DQ.rglob("*.py") if "migrations" not in path.parts}


def type_checking_blocks(tree):
    """The nodes inside ``if TYPE_CHECKING:`` blocks at module level."""
    return {
        id(inner)
        for node in tree.body
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
        for child in node.body
        for inner in ast.walk(child)
    }


def imports_of_each_module():
    """module -> (dq modules imported at module level, names imported inside functions,
    dq modules imported for the type checker only)."""
    modules = dq_modules()
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        type_only = type_checking_blocks(tree)
        top, nested, typing = set(), set(), set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names = imported(module, node, path.name == "__init__.py")
            targets = {name for name in names if name in modules}
            if id(node) in type_only:
                typing |= targets
            elif node.col_offset == 0:
                top |= targets
            else:
                nested |= set(names[:1])
        graph[module] = (top, nested, typing)
    return graph


def layer_of(module):
    for number, layer in enumerate(LAYERS):
        if any(module == name or module.startswith(name + ".") for name in layer):
            return number, next(n for n in layer if module == n or module.startswith(n + "."))
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def test_every_import_goes_to_the_same_layer_or_a_lower_one():
    wrong = []
    for module, (top, _, typing) in imports_of_each_module().items():
        if module == "dq":
            continue
        number, package = layer_of(module)
        for target in top | typing:
            if target == "dq":
                continue
            target_number, target_package = layer_of(target)
            if target_number > number:
                wrong.append(f"{module} imports {target}, a layer above")
            elif package in SIBLINGS and target_package in SIBLINGS and target_package != package:
                wrong.append(f"{module} imports {target}, a sibling")
    assert wrong == []


def test_there_is_no_import_circle():
    graph = {module: top for module, (top, _, _) in imports_of_each_module().items()}
    # A package's __init__ imports its modules; its modules importing the package mean the
    # modules it re-exports, not a circle through it.
    packages = {module for module, path in dq_modules().items() if path.name == "__init__.py"}
    edges = {
        module: {target for target in targets if target not in packages and target != module}
        for module, targets in graph.items()
    }
    circles, state = [], {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_no_module_imports_inside_a_function_but_the_lazy_imports():
    nested = {
        (module, name)
        for module, (_, names, _) in imports_of_each_module().items()
        for name in names
    }
    assert nested == LAZY
