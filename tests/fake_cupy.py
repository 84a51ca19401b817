"""CuPy on the CPU, for the GPU code paths' tests on machines without a GPU: NumPy arrays, the CUDA kernels
compiled for the host (tests/kernel_host.py), and a stand-in for the streams, events and graphs of
``cupy.cuda``. What runs on it is minigan's GPU code unchanged; only speed and concurrency are not real.

Launch order is one legal schedule of several streams; what would make it the wrong one is checked as CUDA
checks it during a capture: no launch on the default stream, a launch on another stream only after that
stream waited for everything launched on the capturing one so far (the fork), and no capture that ends
before the capturing stream waited for the others' launches (CUDA refuses an unjoined capture). A captured
graph replays the recorded launches (a CUDA graph keeps each launch's arguments: pointers and scalar
values); an array operation during a capture would run once, at capture time, and not at every replay, so a
step that did one fails the tests, as it should: a captured step must be kernels only.

``MINIGAN_EMULATE_GPU=1 pytest tests/test_cupy.py`` runs the GPU tests on it (tests/conftest.py installs
it; slow: minutes).
"""

import sys
import time
import types

import numpy as np


class FakeCuda:
    def __init__(self, host_kernels, timings=None):
        self.host_kernels = host_kernels
        self.timings = timings  # timer(): seconds per call, in turn; None: no timer
        self.current = None  # the stream launches go to; None: the (legacy) default stream
        self.captured, self.origin, self.graph_launches, self.streams = None, None, 0, []
        self.null = self.Stream()  # the default stream, for events recorded outside any other
        self.runtime = types.SimpleNamespace(
            getDeviceCount=lambda: 1,
            getDeviceProperties=lambda device: {"name": b"emulated GPU (the kernels compiled for the CPU)"})

    def kernel(self, family, name):
        run = self.host_kernels(family, name)

        def launch(grid, block, args):
            stream = self.current
            if self.captured is not None:
                assert stream is not None, f"{name} launched on the default stream during a capture"
                if stream is not self.origin:
                    assert stream.waited.get(id(self.origin)) == self.origin.launches, \
                        f"{name} on a second stream without a fork from the capturing one"
                self.captured.append((run, grid, block, args))
            else:
                run(grid, block, args)
            if stream is not None:
                stream.launches += 1

        return launch

    def timer(self, launch):
        """A stand-in for FusedStep's GEMM timer: the next of ``timings``, in turn."""
        assert self.captured is None, "a GEMM was timed during a capture"
        seconds = self.timings[0]
        self.timings = self.timings[1:] + self.timings[:1]
        return seconds

    def Event(self, **options):
        cuda = self

        class Event:
            stream, launches, time = None, 0, 0.0

            def record(self, stream=None):
                (stream or cuda.current or cuda.null).record(self)

            def synchronize(self):
                pass

        return Event()

    @staticmethod
    def get_elapsed_time(start, end):
        """Milliseconds, as cupy.cuda.get_elapsed_time; here the host's time between the records."""
        return (end.time - start.time) * 1e3

    def Device(self, device=None):
        return types.SimpleNamespace(id=0, attributes={"MultiProcessorCount": 132}, synchronize=lambda: None)

    def Stream(self, non_blocking=False):
        cuda = self

        class Stream:
            def __init__(self):
                self.launches, self.waited, self.outer = 0, {}, []
                cuda.streams.append(self)

            def __enter__(self):
                self.outer.append(cuda.current)
                cuda.current = self
                return self

            def __exit__(self, *exc):
                cuda.current = self.outer.pop()

            def record(self, event=None):
                event = cuda.Event() if event is None else event
                event.stream, event.launches, event.time = self, self.launches, time.perf_counter()
                return event

            def wait_event(self, event):
                self.waited[id(event.stream)] = event.launches

            def synchronize(self):
                pass

            def begin_capture(self):
                cuda.captured, cuda.origin = [], self
                cuda.at_begin = {id(s): s.launches for s in cuda.streams}

            def end_capture(self):
                for other in cuda.streams:
                    if other is not self and other.launches > cuda.at_begin.get(id(other), 0):
                        assert self.waited.get(id(other)) == other.launches, "capture ended with an unjoined stream"
                launches, cuda.captured, cuda.origin = cuda.captured, None, None
                return types.SimpleNamespace(launch=lambda stream=None: cuda.replay(launches))

        return Stream()

    def replay(self, launches):
        self.graph_launches += 1
        for run, grid, block, args in launches:
            run(grid, block, args)


def fake_cupy(cuda):
    """A module that passes for ``cupy``: NumPy's functions, ``asnumpy``, and ``cuda``."""
    module = types.ModuleType("cupy")
    module.__getattr__ = lambda name: getattr(np, name)  # PEP 562: everything else is NumPy's
    module.asnumpy = lambda a: np.array(a)
    module.cuda = cuda
    module.__version__ = "emulated"
    return module


def install(host_kernels, setattr_=setattr, modules=None):
    """Make ``import cupy`` give the emulated GPU and minigan launch the host-compiled kernels; returns the
    FakeCuda. ``setattr_`` and ``modules`` let a test undo it (pytest's monkeypatch.setattr, setitem)."""
    from minigan import cupy_backend
    from minigan.cupy_step import FusedStep

    cuda = FakeCuda(host_kernels, timings=[1.0])  # every GEMM tile alike: the first is kept
    if modules is None:
        sys.modules["cupy"] = fake_cupy(cuda)
    else:
        modules("cupy", fake_cupy(cuda))
    setattr_(cupy_backend, "kernel", cuda.kernel)
    # emulated time means nothing: the stand-in timer, not CUDA events behind a spinning kernel
    setattr_(FusedStep, "_gpu_time", lambda self, launch: cuda.timer(launch))
    return cuda
