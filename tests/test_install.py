"""minigan installed from its wheel, away from a checkout: the CuPy backend compiles kernels/*.cu at run time, so
the wheel must carry them, and minigan.cupy_backend must read them from the installed package."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNEL_FILES = sorted(p for p in (ROOT / "kernels").iterdir() if p.suffix in (".cu", ".cuh"))


def build_wheel(tmp_path):
    """The wheel of a copy of the checkout (the build writes build/ and *.egg-info where it runs)."""
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(ROOT / "setup.py", source)
    for folder in ("minigan", "kernels"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("minigan-*.whl")
    return wheel


def test_the_wheel_carries_the_kernels_and_the_backend_reads_them_there(tmp_path):
    assert {p.name for p in KERNEL_FILES} >= {"linear.cu", "layers.cu", "philox.cuh", "dependent_launch.cuh"}
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        for kernel in KERNEL_FILES:
            assert archive.read(f"minigan/kernels/{kernel.name}") == kernel.read_bytes(), kernel.name
        archive.extractall(tmp_path / "site")

    # A fresh interpreter that sees the unpacked wheel and not the checkout: it runs elsewhere, and the wheel's
    # folder comes first on its path, before any install of this checkout.
    families = sorted(p.stem for p in KERNEL_FILES if p.suffix == ".cu")
    script = ("import json, minigan.cupy_backend as c; "
              f"print(json.dumps([c.__file__, str(c.KERNELS), {{f: c.kernel_source(f) for f in {families!r}}}]))")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    module, kernels, sources = json.loads(proc.stdout)
    site = (tmp_path / "site").resolve()
    assert Path(module).resolve().is_relative_to(site) and Path(kernels).resolve() == site / "minigan" / "kernels"

    from minigan.cupy_backend import kernel_source  # the checkout's

    assert sources == {family: kernel_source(family) for family in families}


def test_missing_kernels_are_a_one_line_backend_error(tmp_path):
    import pytest

    from minigan import cupy_backend
    from minigan.backend import BackendError

    with pytest.raises(BackendError, match=r"^minigan's CUDA kernels are missing: no .*linear\.cu \(reinstall minigan\)$"):
        cupy_backend.kernel_source("linear", kernels=tmp_path / "nowhere")
