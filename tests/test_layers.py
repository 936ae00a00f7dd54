"""The layers, read from the imports: secagg <- dp <- fl_core with no arrow up, no import cycle
(at module level or inside functions), and no module importing another module's private name."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANK = {"secagg": 0, "dp": 1, "fl_core": 2}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in RANK:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = p
    return mods


MODS = _modules()


def _imports(cur: str):
    """(imported module, imported name or None) for every import statement of module ``cur``."""
    path = MODS[cur]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((a.name, None) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = cur.split(".")[: None if path.name == "__init__.py" else -1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([mod] if mod else []))
            yield from ((mod, a.name) for a in node.names)


def _ours(mod: str) -> bool:
    return mod.split(".")[0] in RANK


def test_no_upward_import():
    up = [(cur, mod) for cur in MODS for mod, _ in _imports(cur)
          if _ours(mod) and RANK[mod.split(".")[0]] > RANK[cur.split(".")[0]]]
    assert up == []


def test_no_private_name_crosses_a_module():
    private = [(cur, mod, name) for cur in MODS for mod, name in _imports(cur)
               if _ours(mod) and name and name.startswith("_") and not name.startswith("__")]
    assert private == []


def test_no_import_cycle():
    graph = {}
    for cur in MODS:
        targets = set()
        for mod, name in _imports(cur):
            if _ours(mod):
                targets.add(f"{mod}.{name}" if name and f"{mod}.{name}" in MODS else mod)
        graph[cur] = {t for t in targets if t in MODS and t != cur}
    cycles, state = [], {}

    def visit(u, stack):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v, stack)
        stack.pop()
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            visit(u, [])
    assert cycles == []


def test_fl_core_files_and_functions_stay_short():
    """Issue 13's targets, read from the code: no fl_core module past 500 lines, no function past 80."""
    long_files = {name: n for name, p in MODS.items() if name.startswith("fl_core")
                  and (n := len(p.read_text().splitlines())) > 500}
    assert long_files == {}
    long_functions = [(name, f.name, f.end_lineno - f.lineno + 1) for name, p in MODS.items()
                      if name.startswith("fl_core") for f in ast.walk(ast.parse(p.read_text()))
                      if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.end_lineno - f.lineno + 1 > 80]
    assert long_functions == []
