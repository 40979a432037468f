"""The layout the README's table promises: which package may import which, and no import
cycle between modules (lazy imports inside functions included: a cycle hidden by one is still
a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "slo", "gateway", "alerts", "dashboards", "reports", "vitalgate")
DATAPLANE = "gateway.dataplane"
# The audit trail is its own unit: it names patients, so what it may reach is kept small (the
# data plane's per-request record work, and the gateway's logging filter).
AUDIT = "gateway.audit"
MAY_IMPORT = {
    "core": set(),
    "slo": {"core"},
    DATAPLANE: {"core", "slo"},
    AUDIT: {"core", DATAPLANE, "gateway.diagnostics"},
    "gateway": {"core", "slo", DATAPLANE, AUDIT},
    "alerts": {"core", "slo"},
    "dashboards": {"core", "slo"},
    "reports": {"core", "slo"},
    "vitalgate": {*PACKAGES, DATAPLANE, AUDIT},
}
# The compiled request path takes plain settings and hands outcomes to sinks: no config schema,
# web framework or metrics library inside it.
NOT_IN_DATAPLANE = ("pydantic", "aiohttp", "prometheus_client", "multidict", "yaml")


def _unit(module: str) -> str:
    if module.startswith(DATAPLANE + "."):
        return DATAPLANE
    if module == AUDIT or module.startswith(AUDIT + "."):
        return AUDIT
    return module.split(".", maxsplit=1)[0]


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _all_imports() -> dict[str, set[str]]:
    """Every module of the project, and every name it imports (at the top or in a function)."""
    modules = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    out: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        out[name] = found
    return out


def _imports() -> dict[str, set[str]]:
    """The project's own import graph: module -> the project modules it imports."""
    everything = _all_imports()
    return {name: {t for t in found if t in everything} - {name} for name, found in everything.items()}


def test_packages_import_only_what_the_layout_allows() -> None:
    wrong = [
        (module, target)
        for module, targets in _imports().items()
        for target in targets
        if (src := _unit(module)) != (dst := _unit(target))
        and dst not in MAY_IMPORT[src]
        and target not in MAY_IMPORT[src]  # (a single module allowed by name)
    ]
    assert wrong == []


def test_the_data_plane_imports_no_schema_framework_or_metrics_library() -> None:
    wrong = [
        (module, target)
        for module, targets in _all_imports().items()
        if _unit(module) == DATAPLANE
        for target in targets
        if target.split(".")[0] in NOT_IN_DATAPLANE
    ]
    assert wrong == []
    assert any(_unit(m) == DATAPLANE for m in _all_imports())


def test_no_import_cycle() -> None:
    graph = _imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
