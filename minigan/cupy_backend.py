"""The CuPy backend: the same layers on an NVIDIA GPU.

Until the fused kernels land (see kernels/), this module only checks that a GPU can be used and says
clearly why not, so that ``--backend cupy`` never ends in a bare traceback.
"""

from minigan.backend import BackendError


def _import_cupy():
    try:
        import cupy
    except ImportError as e:
        raise BackendError(
            f"--backend cupy needs CuPy (pip install cupy-cuda12x or cupy-cuda13x): {e}"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError when there is no driver or no device
        raise BackendError(f"--backend cupy needs an NVIDIA GPU, and CUDA reports none: {e}") from None
    if count < 1:
        raise BackendError("--backend cupy needs an NVIDIA GPU, and CUDA reports none")
    return cupy


class CupyBackend:
    name = "cupy"

    def __init__(self):
        self.xp = _import_cupy()
        raise BackendError("--backend cupy is not implemented yet: use --backend numpy")
