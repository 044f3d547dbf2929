"""The modules of s3mount/ import each other without a circle, and only at the top.

Read from the source with `ast`, nothing is imported:

- An edge A -> B is an import of B in A: `from .b import x`, `from . import b`,
  `import s3mount.b`, `from s3mount.b import x`, at the top or inside a function (an import
  inside a function only delays the edge; the circle cli -> admin -> cli was held together by
  such imports). Imports under `if TYPE_CHECKING:` are left out: they never run, so they cannot
  make a circle. The graph of these edges must be acyclic.
- An import inside a function is allowed only with a reason: a comment containing the word
  "lazy" on one of its lines or on the line just before it (e.g. `# lazy: boto3 takes a second
  to import and only a mount needs it`).
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "s3mount"
RULE = "lazy"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import under `node`, and whether it is inside a function; TYPE_CHECKING skipped."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for sub in child.orelse:
                yield from _walk(sub, in_function)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, in_function
        inner = in_function or isinstance(
            child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from _walk(child, inner)


def targets(name: str, path: Path, node: ast.Import | ast.ImportFrom,
            known: set[str]) -> set[str]:
    """The s3mount modules that `node` (in module `name`) imports."""
    if isinstance(node, ast.Import):
        found = set()
        for alias in node.names:
            parts = alias.name.split(".")
            # `import s3mount.a.b` runs s3mount, s3mount.a and s3mount.a.b.
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        return found & known
    if node.level:
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    # Each name is a submodule of `base` (an edge to it) or a name defined in `base`.
    subs = {f"{base}.{alias.name}" for alias in node.names}
    return (subs & known) | ({base} & known if subs - known else set())


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """Edges between s3mount's modules; and imports inside functions, as (module, line, text)."""
    known = set(modules())
    graph: dict[str, set[str]] = {name: set() for name in known}
    inside: list[tuple[str, int, str]] = []
    for name, path in modules().items():
        source = path.read_text()
        for node, in_function in _walk(ast.parse(source), False):
            if in_function:
                inside.append((name, node.lineno, ast.get_source_segment(source, node) or ""))
            graph[name] |= targets(name, path, node, known) - {name}
    return graph, inside


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle in `graph` as [a, b, ..., a], or None."""
    done: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if cycle := visit(nxt):
                return cycle
        stack.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start):
            return cycle
    return None


def comments(path: Path) -> dict[int, str]:
    """Comment text by line number."""
    out: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string
    return out


def test_no_import_circle() -> None:
    graph, _ = import_graph()
    # The reader sees the edges that are there: these are the options layer's.
    assert "s3mount.options" in graph["s3mount.cli"]
    assert "s3mount.options" in graph["s3mount.admin"]
    assert "s3mount.options" in graph["s3mount.status"]
    assert "s3mount.config" in graph["s3mount.options"]
    assert "s3mount.mount" in graph["s3mount.cli"]  # lazy, and still an edge
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_function_level_imports_say_why() -> None:
    _, inside = import_graph()
    paths = modules()
    unexplained = []
    for name, line, text in inside:
        notes = comments(paths[name])
        span = range(line - 1, line + text.count("\n") + 1)
        if not any(RULE in notes.get(n, "").lower() for n in span):
            unexplained.append(f"{paths[name].name}:{line}: {text.splitlines()[0]}")
    assert not unexplained, (f"imports inside functions without a '# {RULE}: why' comment:\n"
                             + "\n".join(unexplained))


def test_the_checks_can_fail() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    source = ("from typing import TYPE_CHECKING\nfrom . import errors\nfrom .config import MiB\n"
              "if TYPE_CHECKING:\n    from .writer import Uploads\n"
              "def f():\n    import s3mount.store\n")
    nodes = list(_walk(ast.parse(source), False))
    assert [in_f for _, in_f in nodes] == [False, False, False, True]
    known = {"s3mount", "s3mount.errors", "s3mount.config", "s3mount.store"}
    path = PACKAGE / "x.py"
    found = [targets("s3mount.x", path, node, known) for node, _ in nodes]
    assert found == [set(), {"s3mount.errors"}, {"s3mount.config"},
                     {"s3mount", "s3mount.store"}]
