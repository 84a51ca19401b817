"""Where the GPU time of one fused training step goes, launch by launch (needs CuPy and an NVIDIA GPU).

    python examples/profile_step.py [--batch 128] [--k 1] [--timeline N]

After three warm-up steps (kernels compiled, GEMM tiles timed, graph captured) it times the graph replay,
and the replay of a graph without the side stream's branches (one stream), then runs one step launch by
launch on one stream with a CUDA event before each launch, all queued behind kernels/step.cu::hold so the
events time the GPU and not the host. Prints one JSON line per launch (kernel, grid, block, microseconds, and
the stream the graph runs it on), one per kernel family (launches, total, share) and a summary: the sum of the
launches, and of the main stream's alone, against the replayed graphs' times per step. The main stream's
launches are the step's critical path (a side stream's launch waits for the main stream's before it; the main
stream waits for the side stream only at the joins), so where the graph's time is their sum, moving more work
to the side stream cannot help.
The last launch's figure also holds the conversion of the step's statistics that follows it.

With --timeline N (needs torch with CUDA: its profiler records every kernel the GPU runs, those of our graph
among them, through CUPTI) it also replays the graph N times under torch's profiler and adds to each launch's
line what it took in the graph itself, beside the side stream and behind programmatic dependent launches: the
medians over the replays of its start and end (µs after the replay's first kernel began), its time from start
to end, and what it added to its stream's time (its end less the end of the stream's launch before it). The
summary adds the replays' median period and span, and each stream's sum of those additions, so that the
launches that lengthen the step in the graph can be told from those that lengthen it only alone.
"""

import collections
import json
import os
import re
import statistics
import sys
import tempfile

import numpy as np

from minigan.cli import ArgumentParser


def replay_ms(gan, real, replays=200):
    """GPU milliseconds per step of the replayed graph, after three warm-up steps."""
    import cupy

    for _ in range(3):
        gan.train_step(real)
    cupy.cuda.Device().synchronize()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    with gan.fused.stream:
        start.record()
        for _ in range(replays):
            gan.train_step(real)
        end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) / replays


def profile(gan, real):
    """[(kernel, grid, block, stream, us)] of one step of ``gan`` (warmed up) run launch by launch; stream is
    "side" for the launches the graph runs on the side stream, else "main"."""
    import cupy

    from minigan import cupy_backend
    from minigan.cupy_step import HOLD_CYCLES

    fused = gan.fused
    marks, launcher = [], fused.kernel

    def marked(family, name):
        launch = launcher(family, name)

        def run(grid, block, args, **cluster):
            marks.append((name + ("+cluster" if cluster else ""), tuple(grid), tuple(block),
                          "side" if fused.on_side else "main", fused.stream.record()))
            launch(grid, block, args, **cluster)

        return run

    # one stream (the side stream's branches folded in), so that consecutive events bracket one launch each
    side, fused.side = fused.side, None
    fused.kernel, fused.use_graph = marked, False
    try:
        with fused.stream:
            # ~20 ms, longer than the host takes to queue the eager step's launches: the 5 ms held before was not
            # (run 13's profile of a branch whose host code did more per launch timed its last three at 135-239 us)
            cupy_backend.kernel("step", "hold")((1,), (1,), (np.int64(HOLD_CYCLES * 20),))
            gan.train_step(real)
            last = fused.stream.record()
        last.synchronize()
    finally:
        fused.kernel, fused.use_graph, fused.side = launcher, True, side
    ends = [m[-1] for m in marks[1:]] + [last]
    return [(name, grid, block, stream, cupy.cuda.get_elapsed_time(event, after) * 1e3)
            for (name, grid, block, stream, event), after in zip(marks, ends)]


def traced_kernels(gan, real, replays):
    """The kernel events of ``replays`` steps of ``gan`` (warmed up: each a replay of its graph) as torch's profiler
    records them, in the Chrome trace format: "cat" "kernel", "ts" and "dur" in µs, and "args" that hold the
    "graph id" and "graph node id" of a kernel a graph ran."""
    import cupy
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.zeros(1, device="cuda")  # torch's CUDA state, on the primary context CuPy uses too
    cupy.cuda.Device().synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            gan.train_step(real)
        cupy.cuda.Device().synchronize()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    return [event for event in events if event.get("cat") == "kernel"]


def graph_timeline(kernels, launches):
    """Each launch's figures in the replayed graph, from the profiler's ``kernels`` (traced_kernels) and the step's
    ``launches`` [(kernel, stream)] in the order the step launches them (profile()): a list of {"start_us",
    "end_us", "us", "adds_us"}, medians over the replays, and {"replays", "period_us", "span_us", "adds_us": the
    sum of each stream's launches' "adds_us", "matched_by"}.

    The graph's kernels are those named as the step's launches (the others, such as CuPy's copy of the batch
    before each replay, are not). Replays run one after another, so sorted by their starts they come in whole
    replays. Within a replay, the order of their graph node ids is taken to be the order of capture, which is the
    order of ``launches``, where it gives the launches' names ("matched_by": "graph node id"); else each launch
    takes the first kernel of its name not yet taken, in the order of their starts ("name and start": two
    launches of one kernel, one on each stream, may then be each other's). "adds_us" is a launch's end less the
    end of the launch before it on its stream (the replay's start for a stream's first): what it adds to that
    stream's time, where "us", from its first block's start to its last block's end, also counts the time its
    blocks wait for the launch before it (a dependent launch starts before that one ends)."""
    def node(kernel):
        return kernel.get("args", {}).get("graph node id") or 0

    names = [name.removesuffix("+cluster") for name, _ in launches]
    known = set(names)
    in_graph = sorted((kernel for kernel in kernels if kernel["name"] in known), key=lambda kernel: kernel["ts"])
    count = len(launches)
    if len(in_graph) < 2 * count or len(in_graph) % count:
        raise ValueError(f"the profiler recorded {len(in_graph)} kernels of the step's, not two or more whole "
                         f"replays of its {count} launches")
    replays, matched_by = [], set()
    for replay in (in_graph[i:i + count] for i in range(0, len(in_graph), count)):
        by_node = sorted(replay, key=node)
        if all(map(node, replay)) and [kernel["name"] for kernel in by_node] == names:
            replays.append(by_node)
            matched_by.add("graph node id")
            continue
        unmatched = collections.defaultdict(collections.deque)  # (replay is in the order of the starts)
        for kernel in replay:
            unmatched[kernel["name"]].append(kernel)
        if any(len(unmatched[name]) != names.count(name) for name in set(names)):
            raise ValueError("a replay's kernels are not the step's launches")
        replays.append([unmatched[name].popleft() for name in names])
        matched_by.add("name and start")
    starts = [min(kernel["ts"] for kernel in replay) for replay in replays]
    figures = [collections.defaultdict(list) for _ in launches]
    for replay, begin in zip(replays, starts):
        last_end = {}
        for (_, stream), kernel, launch in zip(launches, replay, figures):
            start, end = kernel["ts"] - begin, kernel["ts"] + kernel["dur"] - begin
            launch["start_us"].append(start)
            launch["end_us"].append(end)
            launch["us"].append(kernel["dur"])
            launch["adds_us"].append(end - last_end.get(stream, 0.0))
            last_end[stream] = end
    figures = [{key: statistics.median(values) for key, values in launch.items()} for launch in figures]
    adds = collections.defaultdict(float)  # per stream: the sum of its launches' additions
    for (_, stream), launch in zip(launches, figures):
        adds[stream] += launch["adds_us"]
    summary = {"replays": len(replays),
               "period_us": statistics.median(b - a for a, b in zip(starts, starts[1:])),
               "span_us": statistics.median(max(k["ts"] + k["dur"] for k in replay) - start
                                            for replay, start in zip(replays, starts)),
               "adds_us": dict(adds), "matched_by": " / ".join(sorted(matched_by))}
    return figures, summary


def rounded(figures):
    """``figures`` (a dict of numbers and dicts of numbers) with every float to 0.01."""
    return {key: rounded(value) if isinstance(value, dict) else round(value, 2) if isinstance(value, float) else value
            for key, value in figures.items()}


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--timeline", type=int, default=0, metavar="N",
                   help="also time each launch in N replays of the graph with torch's profiler (needs torch with CUDA)")
    args = p.parse_args(argv)
    if args.timeline < 0 or args.timeline == 1:
        p.error("--timeline needs at least 2 replays")
    if args.timeline:
        try:
            import torch
        except ImportError:
            torch = None
        if torch is None or not torch.cuda.is_available():
            print("profile_step.py: error: --timeline needs torch with CUDA (its profiler records the graph's kernels)",
                  file=sys.stderr)
            return 1
    from minigan.backend import BackendError, get_backend
    from minigan.gan import GAN

    try:
        backend = get_backend("cupy")
    except BackendError as e:
        print(f"profile_step.py: error: {e}", file=sys.stderr)
        return 1
    gan, one_stream = GAN(backend, k=args.k, seed=0), GAN(backend, k=args.k, seed=0)
    one_stream.fused.side = None  # its graph has no branch: the side stream's launches wait their turn
    real = backend.asarray(np.random.default_rng(0).random((args.batch, 784), dtype=np.float32))
    graph_ms, one_stream_ms = replay_ms(gan, real), replay_ms(one_stream, real)
    launches = profile(gan, real)
    in_graph, timeline, refused = [{}] * len(launches), None, None
    if args.timeline:
        try:
            in_graph, timeline = graph_timeline(traced_kernels(gan, real, args.timeline),
                                                [(name, stream) for name, _, _, stream, _ in launches])
        except ValueError as e:  # the rest is printed all the same
            refused = f"profile_step.py: error: --timeline: {e}"
    families = collections.defaultdict(lambda: [0, 0.0])
    for i, ((name, grid, block, stream, us), figures) in enumerate(zip(launches, in_graph)):
        line = {"launch": i, "kernel": name, "grid": grid, "block": block, "stream": stream, "us": round(us, 2)}
        if figures:
            line["graph"] = rounded(figures)
        print(json.dumps(line))
        family = re.sub(r"_\d+x\d+_\d+x\d+(_s\d+)?(\+cluster)?$", "", name)  # a GEMM's kind, whatever its tile
        families[family][0] += 1
        families[family][1] += us
    total = sum(us for *_, us in launches)
    main_stream = [us for *_, stream, us in launches if stream == "main"]
    for family, (count, us) in sorted(families.items(), key=lambda f: -f[1][1]):
        print(json.dumps({"kernel": family, "launches": count, "us": round(us, 1), "share": round(us / total, 3)}))
    print(json.dumps({"device": backend.device, "batch": args.batch, "k": args.k, "launches": len(launches),
                      "sum_of_launches_ms": round(total / 1e3, 4), "main_stream_launches": len(main_stream),
                      "main_stream_sum_ms": round(sum(main_stream) / 1e3, 4), "graph_ms_per_step": round(graph_ms, 4),
                      "graph_one_stream_ms_per_step": round(one_stream_ms, 4)}
                     | ({"timeline": rounded(timeline)} if timeline else {})))
    if refused:
        print(refused, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
