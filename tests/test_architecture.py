"""The import contract: the folder tree is the architecture, and imports only point down it.

The top-level packages are layered too: edges/ (the CLI, the HTTP app, the application's lifecycle, the demo)
may import tasks/ and workers/; tasks/ (the job kinds, their Celery tasks, the producer API) may import
workers/; workers/ (what runs jobs) imports neither, and `celeryconfig` only workers/. workers/ is layered
inside (a lower layer never imports a higher one, siblings in a layer never import each other where marked
independent); the emulator imports none of them (it is shaped by the Bitrix24 docs, not by our client); and
no module takes part in an import cycle, including imports made inside functions.

Imports made only for type checking (`if TYPE_CHECKING:`) are not edges of the graph: workers/, tasks/ and
edges/ have none, and the emulator's admin routes name the `Emulator` they drive that way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

PACKAGES = ("edges", "tasks", "workers", "emulator")

#: workers/, top to bottom (grimp's order). A layer may import any layer below it.
LAYERS: list[grimp.Layer | str] = [
    "workers.localdev",  # a whole deployment on loopback: demo, tests, benchmarks
    "workers.celery",  # the Celery app and its signal hook-ups
    grimp.Layer("workers.broker", "workers.observe"),  # kombu hardening, reconciler, recovery; metrics, status
    "workers.pipeline",  # one job to an outcome
    "workers.runtime",  # the one place that wires the pieces of a process
    "workers.jobstart",  # a job's first round trip: its run, its portal, its portal's traffic
    "workers.delivery",  # calls, lanes, the pool-wide call queue, limits
    grimp.Layer("workers.records", "workers.portals"),  # ledger, dead letters, parking; registry and tokens
    "workers.bitrix",  # the wire: REST client, query strings, OAuth; no Redis
    grimp.Layer(
        "workers.settings",
        "workers.errors",
        "workers.retries",
        "workers.keys",
        "workers.events",
        "workers.redaction",
        "workers.redisurl",
        "workers.roundtrip",
        "workers.rabbitmq",
        independent=False,
    ),
]


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, include_external_packages=False, exclude_type_checking_imports=True)


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan's SCC)."""
    modules = sorted(graph.modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(root: str) -> None:  # iterative: no recursion limit on a large graph
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.find_modules_directly_imported_by(nxt)))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        found.append(sorted(group))

    for module in modules:
        if module not in index:
            visit(module)
    return found


def _imports_into(graph: grimp.ImportGraph, importer: str, imported: str) -> list[str]:
    return sorted(
        f"{a} -> {b}"
        for a in graph.find_descendants(importer) | {importer}
        for b in graph.find_modules_directly_imported_by(a)
        if b == imported or b.startswith(imported + ".")
    )


def test_no_import_cycles() -> None:
    assert cycles(_graph()) == []


def test_workers_and_tasks_need_no_type_only_imports() -> None:
    full = grimp.build_graph("edges", "tasks", "workers", include_external_packages=False)
    assert cycles(full) == []
    assert (
        full.count_imports()
        == grimp.build_graph(
            "edges", "tasks", "workers", include_external_packages=False, exclude_type_checking_imports=True
        ).count_imports()
    )


def test_workers_layers_only_import_downwards() -> None:
    illegal = _graph().find_illegal_dependencies_for_layers(layers=LAYERS)
    assert not illegal, sorted(
        f"{d.importer} -> {d.imported}: {[' -> '.join(r.heads | r.tails) for r in d.routes]}" for d in illegal
    )


def test_every_workers_module_has_a_layer() -> None:
    graph = _graph()
    tops = {m.split(".")[1] for m in graph.find_descendants("workers")}
    named = {
        name.split(".")[1]
        for layer in LAYERS
        for name in ([layer] if isinstance(layer, str) else [str(t) for t in layer.module_tails])
    }
    assert tops <= named, f"give these a layer in LAYERS: {sorted(tops - named)}"


def test_top_level_packages_only_import_downwards() -> None:
    graph = _graph()
    illegal = graph.find_illegal_dependencies_for_layers(layers=["edges", "tasks", "workers"])
    assert not illegal, sorted(f"{d.importer} -> {d.imported}" for d in illegal)
    for package in ("edges", "tasks", "workers"):
        assert _imports_into(graph, "emulator", package) == []


def test_celeryconfig_only_imports_workers() -> None:
    # a top-level module, which grimp does not graph: its imports are read from its source
    tree = ast.parse((Path(__file__).parents[1] / "celeryconfig.py").read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported and all(m.split(".")[0] == "workers" for m in imported), sorted(imported)


def test_the_celery_app_reads_its_configuration_where_the_layers_see_it() -> None:
    assert "workers.broker.configuration" in _graph().find_modules_directly_imported_by("workers.celery")


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c", "d"):
        graph.add_module(module)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    graph.add_import(importer="c", imported="a")
    graph.add_import(importer="c", imported="d")
    assert cycles(graph) == [["a", "b", "c"]]


#: What a reader takes in at once: a module of one concern, a function that fits on a screen (issue 23).
MODULE_LINES, FUNCTION_LINES = 400, 60


def _sizes() -> tuple[list[str], list[str]]:
    root = Path(__file__).parents[1]
    modules, functions = [], []
    for package in ("workers", "tasks", "edges"):
        for path in sorted((root / package).rglob("*.py")):
            text = path.read_text()
            name = str(path.relative_to(root))
            if (lines := len(text.splitlines())) > MODULE_LINES:
                modules.append(f"{name}: {lines} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    assert node.end_lineno is not None
                    if (length := node.end_lineno - node.lineno + 1) > FUNCTION_LINES:
                        functions.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return modules, functions


def test_modules_and_functions_stay_readable() -> None:
    # nested functions count inside the function that holds them: a router of closures is one long function
    modules, functions = _sizes()
    assert modules == [], f"split these by concern (≤ {MODULE_LINES} lines): {modules}"
    assert functions == [], f"split these (≤ {FUNCTION_LINES} lines): {functions}"
