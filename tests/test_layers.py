"""The layering rules of docs/architecture.md, checked on the source."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The decision cores: no I/O, no clock, no global randomness, no trio.
SANS_IO = [
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "executor" / "core").glob("*.py")),
    "executor/core/jobs.py", "executor/core/balance.py", "executor/core/cluster.py",
    "executor/core/protocol.py", "executor/core/messages.py", "executor/config.py",
    # every module of gossip/ is sans-IO (auth.py too: the edge passes the nonces in)
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "gossip").glob("*.py")),
]
FORBIDDEN = {"trio", "socket", "plyvel", "time", "asyncio", "subprocess", "threading", "os", "selectors"}


def imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_cores_are_sans_io():
    for rel in SANS_IO:
        for name in imports(ROOT / rel):
            assert name.split(".")[0] not in FORBIDDEN, f"{rel} imports {name}"


def test_cores_draw_no_global_random():
    for rel in SANS_IO:
        tree = ast.parse((ROOT / rel).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "random":
                assert node.attr == "Random", f"{rel} calls random.{node.attr} (use the Random passed in)"


def test_layers_import_only_downwards():
    allowed = {"gossip": {"gossip"}, "storage": {"storage"}, "executor": {"executor", "gossip", "storage"}}
    for package, may in allowed.items():
        for path in (ROOT / package).rglob("*.py"):
            for name in imports(path):
                top = name.split(".")[0]
                if top in {"executor", "gossip", "storage", "sim", "tests"}:
                    assert top in may, f"{package}/{path.name} imports {name}"


FILE_LINES_MAX = 400
FUNCTION_LINES_MAX = 70  # TigerBeetle's rule: a function fits on a screen


def test_files_and_functions_stay_small():
    """No module over FILE_LINES_MAX lines and no function over
    FUNCTION_LINES_MAX in the project's packages: split by concern instead."""
    too_big = []
    for package in ("executor", "gossip", "storage", "sim"):
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            rel = path.relative_to(ROOT)
            if text.count("\n") > FILE_LINES_MAX:
                too_big.append(f"{rel}: {text.count(chr(10))} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > FUNCTION_LINES_MAX:
                        too_big.append(f"{rel}:{node.lineno} {node.name}: {length} lines")
    assert not too_big, "\n".join(too_big)
