"""The developer's loop stays quick: every test that starts a long-running process (a gateway
child, Prometheus, Alertmanager, VictoriaMetrics, nginx, Chromium) is marked ``slow``, so
``pytest -m "not slow"`` never waits on one. Read from the test modules' syntax, as
``test_layout.py`` reads imports: a test starts a process when it, a fixture it takes, or a
function it calls (in its module or imported from another test module) does."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import PROCESS_FIXTURES
from tests.support.waiting import wait_until, wait_until_async

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

STARTERS = frozenset(
    {
        "GatewayProcess",
        "BackgroundPeers",
        "ServiceProcess",
        "PrometheusProcess",
        "AlertmanagerProcess",
        "VictoriaMetricsProcess",
        "VmagentProcess",
        "VmalertProcess",
        "Popen",  # subprocess.Popen: anything left running while the test goes on
        "create_subprocess_exec",
        "chromium",
    }
)
"""Calls that leave a process running (or, for ``BackgroundPeers``, serve one): a one-shot
command (``vitalgate check``, ``promtool``) is not among them."""


@dataclass
class Module:
    """What one test module defines and imports, by name."""

    name: str
    calls: dict[str, set[str]] = field(default_factory=dict)  # function -> names it calls
    params: dict[str, list[str]] = field(default_factory=dict)  # function -> its parameters
    slow: set[str] = field(default_factory=set)  # tests marked slow by a decorator
    imports: dict[str, tuple[str, str]] = field(default_factory=dict)  # local name -> (module, name)
    all_slow: bool = False  # pytestmark = pytest.mark.slow


def _called(node: ast.AST) -> set[str]:
    names: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            func = sub.func
            if isinstance(func, ast.Name):
                names.add(func.id)
            elif isinstance(func, ast.Attribute):
                names.add(func.attr)
    return names


def _marks_slow(expr: ast.expr) -> bool:
    return "mark.slow" in ast.unparse(expr)


def _module(path: Path, name: str) -> Module:
    tree = ast.parse(path.read_text(), str(path))
    mod = Module(name)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests."):
            for alias in node.names:
                mod.imports[alias.asname or alias.name] = (node.module, alias.name)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            mod.all_slow = _marks_slow(node.value)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            mod.calls[node.name] = _called(node)
            mod.params[node.name] = [a.arg for a in node.args.args]
            if any(_marks_slow(d) for d in node.decorator_list):
                mod.slow.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    # A helper class's methods count as the class: calling it may start them.
                    mod.calls.setdefault(node.name, set()).update(_called(item))
    return mod


def _modules() -> dict[str, Module]:
    paths = [p for p in TESTS.rglob("*.py") if "support" not in p.parts]
    names = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in paths]
    return {name: _module(path, name) for path, name in zip(paths, names, strict=True)}


def _starts(modules: dict[str, Module], module: str, name: str, seen: set[tuple[str, str]]) -> bool:
    """Does calling (or taking as a fixture) ``name`` in ``module`` start a process?"""
    if (module, name) in seen:
        return False
    seen.add((module, name))
    mod = modules[module]
    if name in mod.imports:
        source, original = mod.imports[name]
        return source in modules and _starts(modules, source, original, seen)
    if name not in mod.calls:
        return False
    used = mod.calls[name] | set(mod.params.get(name, []))
    return bool(used & STARTERS) or any(_starts(modules, module, n, seen) for n in used)


def _takes_process_fixture(
    modules: dict[str, Module], module: str, name: str, seen: set[tuple[str, str]]
) -> bool:
    """Is a process fixture among ``name``'s fixtures, directly or through its fixtures' own
    (pytest's fixture closure, which the conftest hook reads)?"""
    if (module, name) in seen:
        return False
    seen.add((module, name))
    mod = modules[module]
    if name in mod.imports:
        source, original = mod.imports[name]
        return source in modules and _takes_process_fixture(modules, source, original, seen)
    params = set(mod.params.get(name, []))
    return bool(params & PROCESS_FIXTURES) or any(
        _takes_process_fixture(modules, module, p, seen) for p in params
    )


def _unmarked_process_tests() -> list[str]:
    modules = _modules()
    found = []
    for mod in modules.values():
        if mod.all_slow or not mod.name.split(".")[-1].startswith("test_"):
            continue
        for name in mod.calls:
            if not name.startswith("test_") or name in mod.slow:
                continue
            if _takes_process_fixture(modules, mod.name, name, set()):
                continue  # marked by tests/conftest.py
            if _starts(modules, mod.name, name, set()):
                found.append(f"{mod.name}.{name}")
    return found


def test_every_test_that_starts_a_process_is_marked_slow() -> None:
    assert _unmarked_process_tests() == []


def test_the_check_finds_a_process_started_through_a_fixture_and_a_helper(tmp_path: Path) -> None:
    """The check itself, on a module written for it (in tmp_path, not part of the suite): a
    process started two calls away from the test is found, and a slow mark is read."""
    path = tmp_path / "test_example.py"
    path.write_text(
        "import pytest\n"
        "from tests.support.gateway import GatewayProcess\n"
        "def _start(cfg):\n    return GatewayProcess(cfg)\n"
        "@pytest.fixture\ndef served(tmp_path):\n    yield _start(tmp_path)\n"
        "def test_uses_it(served):\n    pass\n"
        "@pytest.mark.slow\ndef test_marked(served):\n    pass\n"
        "def test_quick():\n    assert 1\n"
    )
    mod = _module(path, "example")
    modules = {mod.name: mod}
    assert _starts(modules, mod.name, "test_uses_it", set())
    assert mod.slow == {"test_marked"}
    assert not _starts(modules, mod.name, "test_quick", set())


@pytest.mark.slow
def test_the_fast_loop_leaves_out_every_process_fixture_test() -> None:
    """``-m "not slow"`` as a developer runs it: no test taking ``peers`` or
    ``gateway_process`` is collected, and the suite's quick tests are."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-m",
            "not slow",
            "tests/gateway/test_workers.py",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert "tests/gateway/test_workers.py::test_the_supervisor_builds_no_data_plane" in collected
    assert not any("test_workers_share_the_port" in line or "dead_worker" in line for line in collected)


def test_wait_until_returns_once_the_condition_holds_and_names_it_when_it_never_does() -> None:
    calls: list[int] = []

    def third_time() -> bool:
        calls.append(1)
        return len(calls) >= 3

    wait_until(third_time, "the third look", timeout_s=5)
    assert len(calls) == 3
    with pytest.raises(AssertionError, match=r"not within 0.2 s: the impossible"):
        wait_until(lambda: False, "the impossible", timeout_s=0.2)


async def test_wait_until_async_awaits_a_coroutine_predicate() -> None:
    calls: list[int] = []

    async def second_time() -> bool:
        calls.append(1)
        return len(calls) >= 2

    await wait_until_async(second_time, "the second look", timeout_s=5)
    assert len(calls) == 2
    with pytest.raises(AssertionError, match=r"not within 0.2 s: never"):
        await wait_until_async(lambda: False, "never", timeout_s=0.2)
