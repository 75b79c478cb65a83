"""The package's shape, checked: import layers point one way, each idea has one home, functions stay short.

CONTRIBUTING.md has the same layer table in prose; change both together.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "deepfake_detector"

# Lower numbers are further down the pipeline's dependency order; a module may import its own layer or
# a lower one, never a higher one (function-level imports included). The longest matching prefix wins.
LAYERS = {
    "deepfake_detector": 0,  # the package itself (__version__)
    "deepfake_detector.constants": 0,
    "deepfake_detector.errors": 0,
    "deepfake_detector.utils": 0,
    "deepfake_detector.config": 0,
    "deepfake_detector.device": 0,
    "deepfake_detector.checkpoint": 0,
    "deepfake_detector.fetch": 0,
    "deepfake_detector.data": 1,
    "deepfake_detector.cluster": 1,  # Ray engines: preprocess beside data; predict (below) beside inference
    "deepfake_detector.models": 2,
    "deepfake_detector.weights_fetch": 2,
    "deepfake_detector.metrics": 3,
    "deepfake_detector.plots": 3,
    "deepfake_detector.model_card": 3,
    "deepfake_detector.calibration": 3,
    "deepfake_detector.engine": 4,
    "deepfake_detector.explain": 5,
    "deepfake_detector.inference": 5,
    "deepfake_detector.export": 5,
    "deepfake_detector.cluster.predict": 5,
    "deepfake_detector.serve": 6,
    "deepfake_detector.demo": 7,
    "deepfake_detector.commands": 7,
    "deepfake_detector.cli": 7,
    "deepfake_detector.__main__": 7,
}

# What the adapters (commands, cli, serve, demo) may not reach into: the stages' internals. They call
# the stages' entry points (data.sources, data.preprocess, data.cache, engine.trainer/evaluate/run,
# inference, models' registry) and never the pieces those are built from.
INTERNAL = (
    "deepfake_detector.data.video",
    "deepfake_detector.data.pool",
    "deepfake_detector.data.dataset",
    "deepfake_detector.data.reference",
    "deepfake_detector.data.sources.",  # the per-format modules; the package itself is the entry point
    "deepfake_detector.models.",  # backbones, weights, networks; the package is the registry
    "deepfake_detector.engine.loop",
    "deepfake_detector.engine.distributed",
    "deepfake_detector.engine.features",
    "deepfake_detector.engine.rng",
    "deepfake_detector.engine.early_stopping",
)
ADAPTERS = ("deepfake_detector.commands", "deepfake_detector.cli", "deepfake_detector.serve",
            "deepfake_detector.demo")


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (path, ast.parse(path.read_text(encoding="utf-8")))
    return out


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import of the package in module ``name``."""
    path, tree = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            # "from . import x" / "from .data import sources": the names may be submodules
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            for t in subs or [target]:
                found.append((t, names, node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((a.name, [], node.lineno) for a in node.names)
    return [f for f in found if f[0] == "deepfake_detector" or f[0].startswith("deepfake_detector.")]


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def test_every_module_has_a_layer():
    """A new top-level module is placed in LAYERS (and in CONTRIBUTING.md's table) on purpose."""
    unplaced = [m for m in MODULES if m != "deepfake_detector"
                and not any(p != "deepfake_detector" and (m == p or m.startswith(p + ".")) for p in LAYERS)]
    assert not unplaced


def test_nothing_imports_upward():
    upward = [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)}) at line {line}"
        for m in MODULES for t, _, line in _imports(m) if _layer(t) > _layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_adapters_never_reach_into_stage_internals():
    bad = []
    for m in MODULES:
        if not m.startswith(ADAPTERS):
            continue
        for target, names, line in _imports(m):
            if any(m.startswith(a) and target.startswith(a) for a in ADAPTERS):
                continue  # its own package (serve's modules use each other)
            if any(target == i or target.startswith(i) for i in INTERNAL):
                bad.append(f"{m}:{line} imports {target}")
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private:
                bad.append(f"{m}:{line} imports private {private} from {target}")
    assert not bad, "\n".join(bad)


def _nodes(kind: type) -> list[tuple[str, ast.AST]]:
    return [(m, n) for m, (_, tree) in MODULES.items() for n in ast.walk(tree) if isinstance(n, kind)]


def test_torch_load_lives_in_the_checkpoint_module():
    """The one safe loader (weights_only=True, hostile files refused) serves every file we read."""
    hits = {m for m, call in _nodes(ast.Call)
            if isinstance(call.func, ast.Attribute) and call.func.attr == "load"
            and isinstance(call.func.value, ast.Name) and call.func.value.id == "torch"}
    assert hits == {"deepfake_detector.checkpoint"}


def test_one_device_and_precision_rule():
    defs = {m for m, f in _nodes(ast.FunctionDef) if f.name in ("resolve_device", "amp_dtype")}
    bf16 = {m for m, call in _nodes(ast.Call)
            if isinstance(call.func, ast.Attribute) and call.func.attr == "is_bf16_supported"}
    assert defs == bf16 == {"deepfake_detector.device"}


def _source_hits(pattern: str) -> set[str]:
    rx = re.compile(pattern)
    return {name for name, (path, _) in MODULES.items() if rx.search(path.read_text(encoding="utf-8"))}


def test_video_extensions_are_listed_once():
    tuples = _source_hits(r"\(\s*\"\.mp4\",\s*\"\.avi\"") | _source_hits(r"\{\s*\"\.mp4\",")
    assert tuples == {"deepfake_detector.constants"}


def test_functions_fit_in_100_lines():
    """One idea per function (argparse declarations aside: a flag list is long and flat)."""
    long = []
    for name, (_, tree) in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != "add_arguments":
                n = node.end_lineno - node.lineno + 1
                if n > 100:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long, "\n".join(long)
