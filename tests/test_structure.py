"""The package's shape, read from the source with ``ast`` (nothing is imported).

Dependencies point down: ``dispatch/testing/sharding`` <- ``ops`` <- ``nn`` <- ``models`` <-
``sampling`` / ``data`` <- ``train`` <- ``bench`` <- ``cli``; ``pallas_kernels`` imports
only ``jaxar.ops`` and ``jaxar.dispatch`` of jaxar; no import cycle, counting imports
inside functions (a function-local import must not hide one).
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("jaxar", "pallas_kernels")

# jaxar's layers: a module may import its own layer and the layers below
LAYERS = {
    "dispatch": 0,
    "testing": 0,
    "sharding": 0,
    "ops": 1,
    "nn": 2,
    "models": 3,
    "sampling": 4,
    "data": 4,
    "train": 5,
    "bench": 6,
    "cli": 7,
    "__main__": 7,
}
KERNELS_MAY_IMPORT = ("jaxar.ops", "jaxar.dispatch")


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The longest known module that ``name`` names or lies in (None: outside the repo)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in MODULES:
            return candidate
    return None


def _imports(module: str) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import in ``module``, function-local included."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                out.append((target, node.lineno))
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "jaxar" or len(parts) == 1:
        return None
    return LAYERS[parts[1]]


def test_every_jaxar_module_has_a_layer():
    unknown = sorted({m.split(".")[1] for m in MODULES if m.startswith("jaxar.")} - set(LAYERS))
    assert not unknown, f"add these to LAYERS: {unknown}"


def test_models_import_no_sampling_or_train():
    bad = [
        f"{m}:{line} imports {t}"
        for m, edges in GRAPH.items()
        if m.startswith("jaxar.models")
        for t, line in edges
        if t.startswith(("jaxar.sampling", "jaxar.train"))
    ]
    assert not bad, bad


def test_no_upward_import():
    bad = []
    for m, edges in GRAPH.items():
        lm = _layer(m)
        for t, line in edges:
            lt = _layer(t)
            if lm is not None and lt is not None and lt > lm:
                bad.append(f"{m}:{line} imports {t} (layer {lt} > {lm})")
    assert not bad, bad


def test_pallas_kernels_import_only_ops_and_dispatch():
    bad = [
        f"{m}:{line} imports {t}"
        for m, edges in GRAPH.items()
        if m.startswith("pallas_kernels")
        for t, line in edges
        if t.startswith("jaxar") and not t.startswith(KERNELS_MAY_IMPORT)
    ]
    assert not bad, bad


def _cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w, _ in graph[v]:
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
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert not _cycles(GRAPH), _cycles(GRAPH)


def test_cycle_detector_finds_a_function_local_cycle(tmp_path):
    """The checks see imports inside functions: a two-module cycle hidden in one is found."""
    graph = {"a": [("b", 1)], "b": [("a", 7)], "c": [("a", 2)]}
    assert _cycles(graph) == [["a", "b"]]
    src = "def f():\n    from jaxar.sampling import generate\n"
    tree = ast.parse(src)
    found = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert found == ["jaxar.sampling"] and _resolve("jaxar.sampling.generate") in MODULES
