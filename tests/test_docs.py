"""The pages point at the code: docs/maths.md at the functions that implement each formula and the tests that
check it, README.md and docs/cupy-backend.md at files and kernels. Every such reference must exist, so the pages
cannot silently drift from the code."""

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


def defines(source, name):
    """Whether CUDA ``source`` defines a function (its parameter list, then its body) or a struct ``name``."""
    return re.search(rf"\b{name}\s*\([^;{{}}]*\)\s*{{|\bstruct\s+{name}\s*[{{<]", source) is not None


def test_every_kernel_the_maths_page_names_exists():
    """The GPU section names CUDA kernels, device functions and epilogues in kernels/*: each must be defined
    there (a function or struct of that name)."""
    text = (ROOT / "docs" / "maths.md").read_text()
    refs = re.findall(r"`kernels/([\w.]+)::(\w+)`", text)
    assert len(refs) >= 8
    missing = [f"{f}::{name}" for f, name in refs
               if not (ROOT / "kernels" / f).exists() or not defines((ROOT / "kernels" / f).read_text(), name)]
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


def named_paths(text):
    """The repository paths a page names in backticks (`examples/x.py --flag` names examples/x.py)."""
    paths = set()
    for span in re.findall(r"`([^`\n]+)`", text):
        for token in span.split():
            match = re.match(r"((?:minigan|kernels|examples|tests|docs|\.ci)/[\w./-]*[\w/])", token)
            if match and "*" not in token and "<" not in token:
                paths.add(match.group(1))
    return paths


def test_every_file_the_readme_and_the_gpu_page_name_exists():
    """README.md and docs/cupy-backend.md point readers at files; moving or renaming one must mend the pages.
    `minigan/kernels/` is the installed wheel's copy of kernels/, which a checkout does not have."""
    for page in ("README.md", "docs/cupy-backend.md"):
        paths = named_paths((ROOT / page).read_text()) - {"minigan/kernels/"}
        assert len(paths) > 25, page
        missing = sorted(p for p in paths if not (ROOT / p).exists())
        assert not missing, f"{page} names files that do not exist: {missing}"


def test_every_kernel_the_readme_table_names_is_defined_in_its_file():
    """The README's table of kernels by file: each name in a row is a kernel or function of that row's files."""
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `kernels/")]
    assert len(rows) >= 5
    missing = []
    for row in rows:
        files_cell, names_cell = row.split("|")[1:3]
        source = "".join((ROOT / f).read_text() for f in re.findall(r"`(kernels/[\w.]+)`", files_cell))
        missing += [name for name in re.findall(r"`(\w+)(?:\(\))?`", names_cell) if not defines(source, name)]
    assert not missing, f"README.md's kernel table names what its files do not define: {missing}"
