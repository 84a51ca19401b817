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

Launches run here one at a time, so a race between streams cannot show in the numbers; it is checked
instead. Each stream keeps a vector clock of the launches it is ordered after: its own, those before an
event it waited for, those before a host synchronisation, and, for the legacy default stream and the
blocking streams (non_blocking=False), each other's (CUDA's implicit synchronisation). A launch that is not
ordered after a launch on another stream, and whose memory overlaps it with either one writing (an array
argument is written unless the kernel declares it const), fails with both kernels named. NumPy's array
operations (CuPy's, on a GPU) are not tracked.

``MINIGAN_EMULATE_GPU=1 pytest tests/test_cupy.py`` runs the GPU tests on it (tests/conftest.py installs
it; slow: minutes).
"""

import re
import sys
import time
import types

import numpy as np


class FakeCuda:
    def __init__(self, host_kernels, timings=None, graph_timings=None, timed_replays=0):
        self.host_kernels, self.other_kernels = host_kernels, {}  # {folder: HostKernels} of other trees
        self.timings = timings  # timer(): {tile shape: seconds per call} (others 1.0); None: no timer
        # timer() of a graph: the sum over its GEMMs of graph_timings (else timings) of their tile shapes. The
        # first timed_replays graph timings replay the graph, as the GPU's timer does (on the CPU a training
        # step takes seconds); the others only read it.
        self.graph_timings, self.timed_replays = graph_timings or {}, timed_replays
        self.probe = None  # while the timer asks which kernel a launch runs: the names launched (not run)
        self.current = None  # the stream launches go to; None: the (legacy) default stream
        self.captured, self.origin, self.graph_launches, self.streams = None, None, 0, []
        self.host_knows = {}  # {id(stream): its launches the host has synchronised with}
        # {id(stream): [(its count, launch number, name, accesses), ...]} of launches some stream, or the host, is
        # not yet ordered after: per stream in launch order, so what a stream is ordered after is a prefix
        self.unordered, self.launch_number = {}, 0
        self.null = self.Stream()  # the legacy default stream, where launches go outside any other
        self.null.blocking = False  # (it is the one blocking streams synchronise with)
        self.runtime = types.SimpleNamespace(
            getDeviceCount=lambda: 1,
            getDeviceProperties=lambda device: {"name": b"emulated GPU (the kernels compiled for the CPU)"})

    def kernel(self, family, name, kernels=None):
        """Kernel ``name``, of the folder ``kernels`` if given (compiled for the host on first use)."""
        host_kernels = self.host_kernels
        if kernels is not None and kernels != host_kernels.folder:
            if kernels not in self.other_kernels:
                self.other_kernels[kernels] = type(host_kernels)(kernels)
            host_kernels = self.other_kernels[kernels]
        run = host_kernels(family, name)

        def launch(grid, block, args, cluster=1):
            if self.probe is not None:
                self.probe.append(launched_name(name, cluster))
                return
            stream = self.current
            accesses = host_kernels.accesses(name, args)
            if self.captured is not None:
                assert stream is not None, f"{name} launched on the default stream during a capture"
                if stream is not self.origin:
                    assert stream.waited.get(id(self.origin)) == self.origin.launches, \
                        f"{name} on a second stream without a fork from the capturing one"
                self.captured.append((name, run, grid, block, args, cluster, accesses))
            else:
                run(grid, block, args, cluster)
            self.order(stream or self.null, name, accesses)
            if stream is not None:
                stream.launches += 1

        return launch

    def order(self, stream, name, accesses):
        """Count a launch on ``stream`` and check it against every launch on another stream that it is not
        ordered after: memory one writes and the other touches would be a race on a GPU."""
        knows = stream.knows
        merge(knows, self.host_knows)
        if stream is self.null:  # the legacy stream waits for the work issued to every blocking stream,
            for other in self.streams:
                if other.blocking:
                    merge(knows, other.knows)
        elif stream.blocking:  # and a blocking stream for the legacy stream's
            merge(knows, self.null.knows)
        knows[id(stream)] = knows.get(id(stream), 0) + 1
        # every other stream's launches past what this one knows of it, in the order they were launched
        unknown = [launch for other, launches in self.unordered.items() if other != id(stream)
                   for launch in suffix_after(launches, knows.get(other, 0))]
        for _, _, other_name, other_accesses in sorted(unknown, key=lambda launch: launch[1]):
            shared = overlap(accesses, other_accesses)
            assert shared is None, (f"race: {name} may run while {other_name} (on another stream, not waited "
                                    f"for) does, and {shared}")
        self.launch_number += 1
        self.unordered.setdefault(id(stream), []).append((knows[id(stream)], self.launch_number, name, accesses))
        # a launch every stream, or the host, is ordered after can race with nothing launched from now on
        for other, launches in self.unordered.items():
            done = max(self.host_knows.get(other, 0), min(t.knows.get(other, 0) for t in self.streams))
            if launches and launches[0][0] <= done:
                self.unordered[other] = suffix_after(launches, done)

    def synchronize(self, knows=None):
        """The host waits: for what ``knows`` (a stream's or event's clock) holds, else for every stream."""
        for clock in [knows] if knows is not None else [s.knows for s in self.streams]:
            merge(self.host_knows, clock)

    def timer(self, launch, reps=None):
        """A stand-in for FusedStep's timer: ``timings`` of the tile shape a GEMM launch runs; for a graph's
        replay, the sum over its GEMMs of their tiles' ``graph_timings`` (a tile may run faster or slower in the
        graph than alone)."""
        assert self.captured is None, "a launch was timed during a capture"
        self.probe = []
        try:
            launch()
            (launched,) = self.probe
        finally:
            self.probe = None
        if isinstance(launched, str):
            return self.timings.get(tile_of(launched), 1.0)
        tiles = [tile_of(name) for name in launched if TILE.search(name)]
        return sum(self.graph_timings.get(tile, self.timings.get(tile, 1.0)) for tile in tiles)

    def Event(self, **options):
        cuda = self

        class Event:
            stream, launches, time, knows = None, 0, 0.0, {}

            def record(self, stream=None):
                (stream or cuda.current or cuda.null).record(self)

            def synchronize(self):
                cuda.synchronize(self.knows)

        return Event()

    @staticmethod
    def get_elapsed_time(start, end):
        """Milliseconds, as cupy.cuda.get_elapsed_time; here the host's time between the records."""
        return (end.time - start.time) * 1e3

    def Device(self, device=None):
        return types.SimpleNamespace(id=0, attributes={"MultiProcessorCount": 132}, synchronize=self.synchronize)

    def Stream(self, non_blocking=False, priority=0):
        cuda = self

        class Stream:
            def __init__(self):
                self.priority = priority  # (launches run in the order given here, whatever their priority)
                self.launches, self.waited, self.outer = 0, {}, []
                self.blocking, self.knows = not non_blocking, {}  # knows: its vector clock
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
                event.knows = dict(self.knows)
                return event

            def wait_event(self, event):
                self.waited[id(event.stream)] = event.launches
                merge(self.knows, event.knows)

            def synchronize(self):
                cuda.synchronize(self.knows)

            def begin_capture(self):
                cuda.captured, cuda.origin = [], self
                cuda.at_begin = {id(s): s.launches for s in cuda.streams}

            def end_capture(self):
                for other in cuda.streams:
                    if other is not self and other.launches > cuda.at_begin.get(id(other), 0):
                        assert self.waited.get(id(other)) == other.launches, "capture ended with an unjoined stream"
                launches, cuda.captured, cuda.origin = cuda.captured, None, None
                return types.SimpleNamespace(launch=lambda stream=None: cuda.replay(launches, stream))

        return Stream()

    def replay(self, launches, stream=None):
        """A graph launch: its launches in their recorded order (their races were checked at the capture), as
        one launch on ``stream`` that touches what they do."""
        if self.probe is not None:  # timed: the names launched
            self.probe.append([launched_name(name, cluster) for name, _, _, _, _, cluster, _ in launches])
            if self.timed_replays <= 0:
                return
            self.timed_replays -= 1
        self.graph_launches += 1
        for _, run, grid, block, args, cluster, _ in launches:
            run(grid, block, args, cluster)
        self.order(stream or self.current or self.null, "a replayed graph", [a for *_, accesses in launches
                                                                            for a in accesses])


def launched_name(name, cluster):
    """A GEMM launch's name as the stand-in timer reads it: the kernel's, "+cluster" where its blocks were."""
    return name + ("+cluster" if cluster > 1 else "")


TILE = re.compile(r"_(\d+x\d+_\d+x\d+(?:_s\d+)?(?:\+cluster)?)$")


def tile_of(kernel_name):
    """The tile shape of a kernels/linear.cu GEMM kernel's name: linear_forward_32x32_4x4_s2 -> 32x32_4x4_s2."""
    return TILE.search(kernel_name)[1]


def suffix_after(launches, known):
    """The launches (a stream's, by increasing count) past the first ``known`` of its launches."""
    first = len(launches)
    while first > 0 and launches[first - 1][0] > known:
        first -= 1
    return launches[first:]


def merge(clock, other):
    """clock = the elementwise maximum of the two vector clocks ({id(stream): launches})."""
    for stream, count in other.items():
        if count > clock.get(stream, 0):
            clock[stream] = count


def overlap(accesses, others):
    """How two launches' memory clash (one writes what the other touches), or None."""
    for start, end, writes, name, _ in accesses:
        for other_start, other_end, other_writes, other_name, _ in others:
            if (writes or other_writes) and start < other_end and other_start < end:
                return f"its {name} overlaps the other's {other_name} ({'written' if writes else 'read'} / " \
                       f"{'written' if other_writes else 'read'})"
    return None


def fake_cupy(cuda):
    """A module that passes for ``cupy``: NumPy's functions, ``asnumpy``, and ``cuda``."""
    module = types.ModuleType("cupy")
    module.__getattr__ = lambda name: getattr(np, name)  # PEP 562: everything else is NumPy's
    module.asnumpy = lambda a: np.array(a)
    module.cuda = cuda
    module.__version__ = "emulated"
    return module


def plain_launch(launch):
    """``launch`` as CuPy's RawKernel takes it: (grid, block, args), no clusters."""
    return lambda grid, block, args: launch(grid, block, args)


def install(host_kernels, setattr_=setattr, modules=None):
    """Make ``import cupy`` give the emulated GPU and minigan launch the host-compiled kernels; returns the
    FakeCuda. ``setattr_`` and ``modules`` let a test undo it (pytest's monkeypatch.setattr, setitem)."""
    from minigan import cupy_backend
    from minigan.cupy_step import FusedStep

    cuda = FakeCuda(host_kernels, timings={})  # every GEMM tile alike: the first is kept
    if modules is None:
        sys.modules["cupy"] = fake_cupy(cuda)
    else:
        modules("cupy", fake_cupy(cuda))
    setattr_(cupy_backend, "kernel",
             lambda family, name, kernels=None: plain_launch(cuda.kernel(family, name, kernels)))
    setattr_(cupy_backend, "compile_kernels", lambda note=None, kernels=None: None)  # tests/kernel_host.py compiles them
    # an H100's launch path, taken as an H100 would take it; the order of launches is what counts here
    setattr_(cupy_backend, "dependent_launch_available", lambda cupy: True)
    setattr_(cupy_backend, "dependent_kernel", cuda.kernel)
    setattr_(cupy_backend, "cluster_kernel", cuda.kernel)
    # and CuPy's capture, which the stand-in records, not the driver's (PriorityGraph)
    setattr_(cupy_backend, "priority_graphs_available", lambda: False)
    # emulated time means nothing: the stand-in timer, not CUDA events behind a spinning kernel
    setattr_(FusedStep, "_gpu_time", lambda self, launch, reps=20: cuda.timer(launch, reps))
    return cuda
