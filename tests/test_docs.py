"""docs/maths.md points at the functions that implement each formula and the tests that check it:
every such reference must exist, so the page cannot silently drift from the code."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def defined_names(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f"{node.name}.{m.name}" for m in node.body if isinstance(m, ast.FunctionDef)}
    return names


def test_every_reference_in_the_maths_page_exists():
    text = (ROOT / "docs" / "maths.md").read_text()
    refs = re.findall(r"`((?:minigan|tests)/[\w/]+\.py)::([\w.]+)`", text)
    assert len(refs) > 25
    missing = [f"{f}::{name}" for f, name in refs
               if not (ROOT / f).exists() or name not in defined_names(ROOT / f)]
    assert not missing, f"docs/maths.md names what does not exist: {missing}"


def test_every_kernel_the_maths_page_names_exists():
    """The GPU section names CUDA kernels, device functions and epilogues in kernels/*: each must be defined
    there (a function or struct of that name)."""
    text = (ROOT / "docs" / "maths.md").read_text()
    refs = re.findall(r"`kernels/([\w.]+)::(\w+)`", text)
    assert len(refs) >= 8
    missing = [f"{f}::{name}" for f, name in refs if not (ROOT / "kernels" / f).exists() or not re.search(
        rf"(\b(void|float|struct)\s+|\s){name}(\s*\(|\s*{{|\s*<)", (ROOT / "kernels" / f).read_text())]
    assert not missing, f"docs/maths.md names what kernels/ does not define: {missing}"


def test_every_layer_and_loss_is_on_the_maths_page_and_has_its_maths_in_the_docstring():
    import minigan.layers as layers
    import minigan.losses as losses

    text = (ROOT / "docs" / "maths.md").read_text()
    for cls in (layers.Linear, layers.LeakyReLU, layers.BatchNorm1d, layers.Dropout, layers.Sigmoid):
        assert f"minigan/layers.py::{cls.__name__}`" in text
        assert ".. math::" in cls.__doc__, cls.__name__
    for fn in ("bce_forward", "bce_backward", "cross_entropy_forward", "cross_entropy_backward"):
        assert f"minigan/losses.py::{fn}`" in text
    assert ".. math::" in losses.__doc__ and ".. math::" in losses.cross_entropy_forward.__doc__
