"""The library's shape, as docs/modules.md promises it: small files and functions, no private names
used across modules, loss behaviour chosen by the loss registry, never by comparing loss names."""

import ast
import re
from pathlib import Path

from conftest import REPO

from nashflow.losses import LOSSES

LIB = REPO / "nashflow"
MODULES = sorted(LIB.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_files_and_functions_stay_small():
    long_files = {p.relative_to(REPO).as_posix(): n for p in MODULES if (n := len(p.read_text().splitlines())) > 400}
    long_functions = [f"{p.relative_to(REPO)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
                      for p in MODULES for node in ast.walk(_tree(p))
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.end_lineno - node.lineno + 1 > 80]
    assert not long_files and not long_functions, (long_files, long_functions)


def test_no_private_names_cross_modules():
    crossing = [f"{p.relative_to(REPO)}: from {node.module} import {alias.name}"
                for p in MODULES for node in ast.walk(_tree(p))
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nashflow")
                for alias in node.names if alias.name.startswith("_")]
    assert not crossing, crossing


def test_loss_names_are_compared_only_in_the_registry():
    """What a loss needs (rejected response, per-token log-probs, β, history) is in its spec
    (nashflow.methods.LOSS_SPECS); other modules ask the spec."""
    names = "|".join(map(re.escape, LOSSES))
    pattern = re.compile(rf"""(==|!=|\bin\b)\s*[(\[{{]?\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    hits = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in MODULES
            if p.name not in ("methods.py", "losses.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_the_library_never_imports_snakemake():
    hits = [str(p.relative_to(REPO)) for p in MODULES for node in ast.walk(_tree(p))
            if isinstance(node, (ast.Import, ast.ImportFrom))
            and any(n.split(".")[0] == "snakemake" for n in
                    ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]))]
    assert not hits, hits
