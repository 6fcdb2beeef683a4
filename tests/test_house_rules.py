"""House rules a reader of the tree relies on, checked on the tree itself."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 60
DISPATCH_EXEMPT = {("appliance/prompting/gotemplate/executor.py", "_walk")}
"""The Go template executor's dispatch over node kinds reads best as one function."""


def _functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def test_no_function_is_longer_than_sixty_lines() -> None:
    long = []
    for package in ("appliance", "engine"):
        for path in sorted((ROOT / package).rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            for name, lines in _functions(path):
                if lines > MAX_FUNCTION_LINES and (where, name) not in DISPATCH_EXEMPT:
                    long.append(f"{where}:{name} ({lines} lines)")
    assert long == []


def test_no_module_keeps_mutable_state_at_module_level() -> None:
    """Module-level sets, dicts and lists are state every request shares; STYLE asks for none."""
    found = []
    for package in ("appliance", "engine"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in tree.body:
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    value = node.value
                    target = node.targets[0] if isinstance(node, ast.Assign) else node.target
                    name = getattr(target, "id", "")
                    if name.isupper() or name.startswith("__"):
                        continue  # constants and dunders
                    mutable = isinstance(value, (ast.Set, ast.Dict, ast.List)) or (
                        isinstance(value, ast.Call)
                        and getattr(value.func, "id", "") in {"set", "dict", "list"}
                    )
                    if mutable:
                        found.append(f"{path.relative_to(ROOT).as_posix()}:{name}")
    assert found == []
