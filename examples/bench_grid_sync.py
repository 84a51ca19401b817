"""What a grid barrier inside one kernel costs against a kernel boundary, in a CUDA graph like the fused step's
(needs CuPy and an NVIDIA GPU of compute capability 9.0, with a driver that has cuLaunchKernelEx).

    python examples/bench_grid_sync.py [--blocks 64] [--work 256] [--pieces 7] [--replays 200] [--rounds 5]

The probe for a G pass: G's forward layers and BatchNorms as one cooperative launch, each BatchNorm needing every
row of its columns, so a grid barrier between each two of the 7 pieces (docs/prepared/README.md). Its kernel,
kernels/step.cu::grid_sync_probe, runs pieces of --work dependent FMAs a thread on --blocks blocks of 256 threads,
each piece reading what the next block wrote in the piece before. Each design is captured as a graph of 1 piece and
of --pieces, and replayed:
- "launches": a chain of launches of one piece each, with dependent launch, as the step's kernels run;
- "barriers": one cooperative launch of all the pieces, with a grid barrier between each two;
- "barriers_dependent": the same, also with dependent launch.
Each again beside a side stream that runs the launches' chain of --pieces on as many blocks, as the step's two
streams do ("side": true), to see whether a cooperative launch waits for room the side stream's kernels hold.
Prints one JSON line per graph (microseconds per replay, the median over --rounds) and one per design: what each
boundary or barrier adds (the slope from 1 piece to --pieces) and its ratio to a boundary's. A design the driver
refuses prints its error and the rest go on. Every count the kernel leaves must be what the pieces' order gives, else
the probe stops with an error.
"""

import json
import statistics
import sys

import numpy as np

from minigan.cli import ArgumentParser

THREADS = 256
DESIGNS = {"launches": dict(), "barriers": dict(cooperative=True, programmatic=False),
           "barriers_dependent": dict(cooperative=True)}


def expected_counts(pieces_launched):
    """What every count of each half holds after the pieces (first, number) launched in this order, from zeros."""
    count = [0, 0]
    for first, pieces in pieces_launched:
        for p in range(first, first + pieces):
            count[(p + 1) % 2] = count[p % 2] + 1
    return count


class Probe:
    """Each design's graphs on ``blocks`` blocks, captured and replayed on a stream of their own (and its side
    stream)."""

    def __init__(self, cupy, launchers, blocks, work):
        self.cupy, self.launchers, self.blocks, self.work = cupy, launchers, blocks, work
        self.stream, self.side = cupy.cuda.Stream(non_blocking=True), cupy.cuda.Stream(non_blocking=True)

    def buffers(self):
        cupy = self.cupy
        return (cupy.zeros(2 * self.blocks * THREADS, np.uint32), cupy.zeros(self.blocks * THREADS, np.float32),
                cupy.zeros(1, np.uint32))

    def launch(self, design, buffers, first, pieces):
        count, sink, arrived = buffers
        self.launchers[design]((self.blocks,), (THREADS,), (count, sink, arrived, np.int32(first), np.int32(pieces),
                                                            np.int32(self.work)))

    def pieces_of(self, design, pieces):
        """(first, number) of each launch of the design."""
        return [(p, 1) for p in range(pieces)] if design == "launches" else [(0, pieces)]

    def graph(self, design, pieces, side):
        """The captured graph, its buffers and the side stream's, and what one replay launches on each."""
        cupy = self.cupy
        main_buffers, side_buffers = self.buffers(), self.buffers() if side else None
        main_launches, side_launches = self.pieces_of(design, pieces), self.pieces_of("launches", pieces)
        with self.stream:
            for first, number in main_launches:  # loaded before the capture (and the counts' first state known)
                self.launch(design, main_buffers, first, number)
            self.stream.synchronize()
            main_buffers[0].fill(0)
            forked, joined = cupy.cuda.Event(disable_timing=True), cupy.cuda.Event(disable_timing=True)
            self.stream.begin_capture()
            try:
                if side:
                    forked.record(self.stream)
                    self.side.wait_event(forked)
                    with self.side:
                        for first, number in side_launches:
                            self.launch("launches", side_buffers, first, number)
                    joined.record(self.side)
                for first, number in main_launches:
                    self.launch(design, main_buffers, first, number)
                if side:
                    self.stream.wait_event(joined)
            except RuntimeError:  # a capture left open would break every later call on the stream
                try:
                    self.stream.end_capture()
                except RuntimeError:
                    pass
                raise
            graph = self.stream.end_capture()
        return graph, (main_buffers, main_launches), (side_buffers, side_launches) if side else None

    def us_per_replay(self, graph, replays):
        cupy = self.cupy
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        with self.stream:
            start.record(self.stream)
            for _ in range(replays):
                graph.launch(stream=self.stream)
            end.record(self.stream)
            end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) * 1e3 / replays


def check_counts(cupy, buffers, launches, replays, what):
    count = cupy.asnumpy(buffers[0]).reshape(2, -1)
    expected = expected_counts(launches * replays)
    if not all((count[h] == expected[h]).all() for h in (0, 1)):
        raise SystemExit(f"bench_grid_sync.py: error: {what}: counts {sorted(set(count.ravel().tolist()))[:6]} where "
                         f"{expected} were due: a barrier or a launch did not order the pieces")


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=64, help="blocks of 256 threads (the G pass's: 64)")
    p.add_argument("--work", type=int, default=256, help="dependent FMAs a thread per piece")
    p.add_argument("--pieces", type=int, default=7, help="pieces (G's forward pass: 4 products and 3 BatchNorms)")
    p.add_argument("--replays", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    if min(args.blocks, args.replays, args.rounds, args.pieces - 1) < 1 or args.work < 0:
        p.error("--blocks, --replays and --rounds must be at least 1, --pieces at least 2, --work at least 0")
    from minigan import cupy_backend
    from minigan.backend import BackendError, get_backend

    try:
        cupy = get_backend("cupy").xp
    except BackendError as e:
        print(f"bench_grid_sync.py: error: {e}", file=sys.stderr)
        return 1
    if not cupy_backend.dependent_launch_available(cupy):
        print("bench_grid_sync.py: error: cooperative and dependent launches through cuLaunchKernelEx need compute "
              "capability 9.0 and a driver with cuLaunchKernelEx (CUDA 12.0)", file=sys.stderr)
        return 1
    raw = cupy_backend.kernel("step", "grid_sync_probe")
    launchers = {design: cupy_backend.DependentLaunch(raw, **options) for design, options in DESIGNS.items()}
    probe = Probe(cupy, launchers, args.blocks, args.work)
    graphs = {}
    for design in DESIGNS:
        for pieces in (1, args.pieces):
            for side in (False, True):
                try:
                    graphs[design, pieces, side] = probe.graph(design, pieces, side)
                except RuntimeError as e:  # a launch or capture the driver refused (cupy's or ours)
                    print(json.dumps({"design": design, "pieces": pieces, "side": side, "error": str(e)}))
    times = {key: [] for key in graphs}
    for _ in range(args.rounds):
        for key, (graph, _, _) in graphs.items():
            times[key].append(probe.us_per_replay(graph, args.replays))
    replays = args.rounds * args.replays
    for (design, pieces, side), (graph, main_part, side_part) in graphs.items():
        for part, what in ((main_part, design), (side_part, "side stream")):
            if part is not None:
                check_counts(cupy, part[0], part[1], replays, f"{what}, {pieces} pieces")
    medians = {key: statistics.median(ts) for key, ts in times.items()}
    for (design, pieces, side), us in medians.items():
        print(json.dumps({"design": design, "pieces": pieces, "side": side, "blocks": args.blocks, "work": args.work,
                          "us_per_replay": round(us, 3), "rounds": [round(t, 3) for t in times[design, pieces, side]]}))
    for side in (False, True):
        slopes = {design: (medians[design, args.pieces, side] - medians[design, 1, side]) / (args.pieces - 1)
                  for design in DESIGNS if (design, 1, side) in medians and (design, args.pieces, side) in medians}
        for design, slope in slopes.items():
            line = {"design": design, "side": side, "us_per_boundary" if design == "launches" else "us_per_barrier":
                    round(slope, 3)}
            if design != "launches" and "launches" in slopes:
                line["ratio_to_a_boundary"] = round(slope / slopes["launches"], 3)
            print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
