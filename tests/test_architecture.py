"""The package arrows: training → service.core ← service (the HTTP layer).

Read from the source with `ast`, every import counts, also one inside a function: training
never reaches the HTTP layer, and the core imports neither training, the HTTP layer, torch,
BentoML nor starlette, so serving needs none of training's weight.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTTP_ONLY = ("bentoml", "starlette", "fastapi", "prometheus_client")


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module `path` imports, absolute, with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def is_http_layer(module: str) -> bool:
    return module == "service" or (module.startswith("service.")
                                   and not module.startswith("service.core"))


@pytest.mark.parametrize("path", modules("training"), ids=lambda p: p.name)
def test_training_imports_only_the_core(path: Path):
    bad = [(line, m) for line, m in imports(path)
           if is_http_layer(m) or m.split(".")[0] in HTTP_ONLY]
    assert not bad, f"{path.relative_to(ROOT)} reaches the HTTP layer: {bad}"


@pytest.mark.parametrize("path", modules("service/core"), ids=lambda p: p.name)
def test_the_core_imports_neither_side_nor_torch(path: Path):
    bad = [(line, m) for line, m in imports(path)
           if m.split(".")[0] in ("training", "torch", "torchvision", "ultralytics", *HTTP_ONLY)
           or is_http_layer(m)]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_checks_see_a_violation(tmp_path: Path):
    """The parser finds imports inside functions and `from` forms, which a grep could miss."""
    sample = tmp_path / "x.py"
    sample.write_text("def f():\n    from service import metrics\n    import service.jobs\n")
    assert [m for _, m in imports(sample)] == ["service", "service.jobs"]
    assert all(is_http_layer(m) for _, m in imports(sample))
    assert not is_http_layer("service.core.repository")
