"""The layout: prepare.py is the contract, harness/ the machinery behind it."""

import ast
import json
import subprocess
import sys

from conftest import REPO

MODULES = ["common", "runtime", "dataset", "synthetic", "synthetic.__main__", "gpu_data", "trainer", "device",
           "ddp", "progress", "supervisor", "report", "failure", "validation", "cli", "memory", "night",
           "watch", "record", "knobs", "summary"]


def module_name(root, path):
    """path's module name under the package folder root, without the package's own: 'gpu_data.plan'."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(root, path, modules):
    """The modules of root's package that path imports, at its top or inside a function."""
    name, top = module_name(root, path), root.name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                parents = [top, *filter(None, package.split("."))]
                base = ".".join(parents[:len(parents) - node.level + 1] + ([base] if base else []))
            # `from package import module` imports that module; `from module import name`, the module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}"[len(top) + 1:] in modules else base
                       for a in node.names]
        else:
            continue
        for target in (t[len(top) + 1:] for t in targets if t.startswith(top + ".")):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root):
    """{module: the package's modules it imports} for the package folder root."""
    modules = {module_name(root, p): p for p in root.rglob("*.py") if p != root / "__init__.py"}
    return {name: imports_of(root, path, set(modules)) for name, path in modules.items()}


def cycles(graph):
    """The groups of modules that import each other, directly or through others: sorted lists, sorted."""
    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen
    reachable = {m: reach(m) for m in graph}
    groups = {tuple(sorted(m2 for m2 in graph if m2 in reachable[m] and m in reachable[m2])) for m in graph}
    return sorted(list(g) for g in groups if len(g) > 1)


def test_the_harness_is_a_leaf_that_does_nothing_at_import():
    code = f"""
import json, os, sys
def ours():
    return {{k: v for k, v in os.environ.items() if k.startswith(("YOLO_", "MPLCONFIGDIR", "AUTORESEARCH_"))}}
before = ours()
for m in {MODULES!r}:
    __import__("harness." + m)
print(json.dumps({{"imported": sorted({{"prepare", "ultralytics", "torch"}} & set(sys.modules)),
                  "environment changed": ours() != before}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"imported": [], "environment changed": False}


def test_the_contract_and_the_machinery_stay_small():
    read_by_the_agent = ("README.md", "program.md", "prepare.py", "train.py")
    assert sum(len((REPO / name).read_bytes()) for name in read_by_the_agent) <= 60_000
    for path in (REPO / "harness").rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 700, path


def test_the_import_check_sees_imports_inside_functions_and_relative_ones(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {"__init__.py": "", "a.py": "from pkg import b\n",
             "b.py": "def later():\n    from pkg.c import thing\n", "c.py": "from . import a\nthing = 1\n",
             "d.py": "import pkg.a\n", "sub/__init__.py": "from pkg.sub.e import x\n",
             "sub/e.py": "from .. import d\nfrom pkg.sub import f\nx = 1\n", "sub/f.py": "import os\n"}
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert graph["sub"] == {"sub.e"} and graph["sub.e"] == {"d", "sub.f"}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_two_harness_modules_import_each_other():
    graph = import_graph(REPO / "harness")
    assert {"supervisor", "report", "failure", "ddp", "gpu_data.plan"} <= graph.keys()
    assert cycles(graph) == []
