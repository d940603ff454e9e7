"""benchmarks/ stays measurement only: imports point one way (gpu_check -> bench_* -> common), the shared pieces
live in common.py alone, and results go out through common's one writer."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SOURCES = {path.stem: ast.parse(path.read_text()) for path in BENCHMARKS.glob("*.py")}


def layer(name: str) -> int:
    """common 0, bench_* 1, gpu_check 2: a module imports only from layers below its own (so there is no cycle)."""
    return {"common": 0, "gpu_check": 2}.get(name, 1 if name.startswith("bench_") else 99)


def local_imports(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names & set(SOURCES)


def test_every_benchmark_module_has_a_layer():
    assert all(layer(name) < 99 for name in SOURCES), sorted(SOURCES)


def test_imports_point_one_way():
    wrong = [f"{name} imports {other}" for name, tree in SOURCES.items() for other in local_imports(tree)
             if layer(other) >= layer(name)]
    assert not wrong, wrong


def test_common_pieces_are_defined_once():
    shared = {node.name for node in SOURCES["common"].body if isinstance(node, ast.FunctionDef)}
    shared |= {"ROOT", "RESULTS"}
    for name, tree in SOURCES.items():
        if name == "common":
            continue
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)}
        defined |= {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                    if isinstance(t, ast.Name)}
        assert not defined & shared, f"{name} redefines {sorted(defined & shared)} of common.py"


def test_every_bench_writes_its_results_through_common():
    for name, tree in SOURCES.items():
        if name.startswith("bench_"):
            imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                        and node.module == "common" for alias in node.names}
            assert imported & {"report", "write_result"}, f"{name} writes no results file"


def test_a_results_file_names_the_machine_the_date_the_command_and_the_load(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["benchmarks/bench_x.py", "--fast"])
    path = common.report("x", [dict(variant="a", rate=common.spread([3.0, 1.0, 2.0]))], threads=2)
    record = json.loads(path.read_text())
    assert path.parent == tmp_path and path.name.endswith("-x.json")
    assert record["command"] == "python benchmarks/bench_x.py --fast" and record["machine"] and record["date"]
    assert len(record["load_average"]) == 3 and record["threads"] == 2
    assert record["rows"] == [dict(variant="a", rate=dict(median=2.0, min=1.0, max=3.0, runs=3))]
    assert common.markdown_table(record["rows"])[2] == "| a | 2.0 [1.0-3.0] |"
