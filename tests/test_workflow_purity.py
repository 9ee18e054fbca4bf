"""The workflow modules run outside the sandbox's re-import (worker.app.WORKFLOW_RUNNER
passes them through, as the rest of the engine's pure code): so what the sandbox would
catch at run time is checked here, in their source. No clock, randomness, I/O, sleeping
or module-level mutable state; time is `workflow.now()`, waiting is a durable timer."""

import ast
from pathlib import Path

import pytest

WORKFLOWS = sorted((Path(__file__).parent.parent / "workflows").glob("*.py"))
FORBIDDEN_IMPORTS = {"os", "time", "random", "socket", "threading", "subprocess", "sqlalchemy", "httpx",
                     "smtplib", "requests", "psycopg", "sqlite3", "uuid", "secrets"}  # fmt: skip
FORBIDDEN_CALLS = {"now", "utcnow", "today", "sleep", "open", "print", "input", "uuid4", "random", "randint"}


def _called_name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _qualified(call: ast.Call) -> str:
    f = call.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
        return f"{f.value.id}.{f.attr}"
    return _called_name(call)


def problems_in(source: str) -> list[str]:
    tree = ast.parse(source)
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            problems += [f"line {node.lineno}: imports {n}" for n in names if n.split(".")[0] in FORBIDDEN_IMPORTS]
        if isinstance(node, ast.Call) and _called_name(node) in FORBIDDEN_CALLS:
            if _qualified(node) not in ("workflow.now", "self.now"):  # the workflow's own clock is fine
                problems.append(f"line {node.lineno}: calls {_qualified(node)}()")
    for node in tree.body:  # module level: constants only, nothing a run could change
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.List | ast.Dict | ast.Set):
            problems.append(f"line {node.lineno}: module-level mutable {type(node.value).__name__.lower()}")
    return problems


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_code_has_no_clock_randomness_io_or_shared_state(path):
    assert problems_in(path.read_text()) == [], path.name


def test_the_check_finds_what_it_looks_for():
    bad = "import random\nfrom datetime import datetime\nSEEN = []\ndef f():\n    return datetime.now(), workflow.now()\n"
    assert problems_in(bad) == ["line 1: imports random", "line 5: calls datetime.now()", "line 3: module-level mutable list"]
