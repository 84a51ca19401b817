"""The whole training step as our own kernels: the fused GPU path of ``GAN.train_step``.

The layers in minigan/layers.py are the reference; this is the same step written for the GPU, llm.c style:
buffers allocated once, elementwise ops fused into the GEMM epilogues (kernels/linear.cu: the tile shape
timed per product, split-K by a fixed rule, the bias gradient summed by the weight gradient's blocks), D's
last layer fused with the sigmoid + BCE head (kernels/linear.cu), BatchNorm as batch reductions
(kernels/layers.cu), noise and dropout masks from Philox counters (element / 4, draw, step), four elements to
a block, with ``step`` in device memory, Adam over the flat buffers in two launches per model with its step
count in device memory (kernels/optim.cu), and the step's counters advanced on the device (kernels/step.cu).
Nothing in a step reads a host value, so the step can be captured once as a CUDA graph and replayed for every
batch. The weight gradients go to a second stream (a branch of the graph), off the critical path of input
gradients, except a layer's with no input gradient to run beside it; so do D's forward pass over the real
half of its batch, which needs nothing from G, beside G's forward pass, and the Adam update of the part of
each model whose gradients are complete first.

It runs on any "device": ``xp`` and ``kernel`` are CuPy and cupy.RawModule kernels on a GPU, or NumPy and
kernels compiled for the CPU (tests/kernel_host.py) in the tests, which check it against the NumPy layers.

Random draws: the noise of D-iteration i is draw ``NOISE + i``; the dropout mask of D's layer j is draw
``D_STEP_DROPOUT + 16 i + j`` in D-iteration i and ``G_STEP_DROPOUT + j`` in the G step. Draw 0 is never used: at
step 0 its counters would be the layer path's first blocks (PhiloxRng's, which G's fixed noise comes from). The ids
are distinct for k up to MAX_K; a GAN with more D updates a step trains on the layer path.
"""

import contextlib
import json
import re
import warnings
from pathlib import Path

import numpy as np

from minigan.backend import same_array
from minigan.fileio import atomic_write_bytes
from minigan.layers import BatchNorm1d, Dropout, LeakyReLU, Linear

ACT_NONE, ACT_LEAKY, ACT_LEAKY_DROPOUT, ACT_SIGMOID = 0, 1, 2, 3
NOISE, D_STEP_DROPOUT, G_STEP_DROPOUT = 1, 1 << 16, 1 << 24
MAX_K = D_STEP_DROPOUT - NOISE  # the D updates a step's draw ids keep apart: its noise draws end below D's masks'
THREADS = 256
BN_COLUMNS = 8  # the columns of a BatchNorm block (kernels/layers.cu)
HEAD_ROWS = 8  # the rows of a head_forward_backward block (kernels/linear.cu)
# The tile shapes of kernels/linear.cu's GEMMs, "BMxBN_TMxTN" (a block's output patch and a thread's) with
# "_sS" where S thread groups of the block share the splits of the inner dimension. At a given split count
# they give bit-identical results, so each product of the step runs with the one measured fastest on the GPU
# at hand, among those whose groups divide its splits.
GEMM_TILES = ("32x32_4x4", "64x64_4x4", "64x64_8x8", "128x64_8x4", "128x128_8x8",
              "32x32_4x4_s2", "32x32_4x4_s4", "32x64_4x8_s2", "64x64_8x8_s2")
DEFAULT_TILE = "32x32_4x4"  # where nothing is timed: the kernels compiled for the CPU, where 64 threads run fastest
MAX_CLUSTER = 8  # blocks per thread block cluster: CUDA's portable most
MAX_SPLITS, MIN_SPLIT_INNER = 16, 48
H100_SMS = 132  # H100 and H200 SXM: the SM count the splits are planned for where there is no GPU to ask
SPLIT_BLOCKS_PER_SM = 8  # split products keep at most this many 32 x 32 tiles' splits per SM
# The critical path's stream runs at a higher priority than the side stream (lower numbers are higher; CUDA
# clamps them to the device's range), so that where blocks of both wait for room on the SMs, the critical
# path's go first.
MAIN_PRIORITY, SIDE_PRIORITY = -1, 0
HOLD_CYCLES = 2_000_000  # about 1 ms of kernels/step.cu::hold
TUNING_ROUNDS = 2  # each tile shape is timed this often, in interleaved rounds, and its best time kept
# The first graph captured is tuned in the graph itself: each product's next STEP_TUNING_CANDIDATES tile shapes
# within STEP_TUNING_SPREAD of its fastest alone are tried, each graph timed over STEP_TUNING_REPLAYS replays.
STEP_TUNING_SPREAD, STEP_TUNING_CANDIDATES, STEP_TUNING_REPLAYS = 1.3, 4, 5

# A device's tile table: each product's tile as measured fastest in the step's graph on that GPU, in write_tiles'
# format, named after the device (tile_table). Its products are neither timed nor tuned: on an H200 the tuner's
# choice moved the step by 15% from one process to the next (0.33-0.38 ms, runs 20 and 21, docs/gpu-history.md),
# one set of tiles gave 0.330-0.335 ms in each of five processes, and the H200's table, searched in the graph
# (examples/search_tiles.py), 0.316-0.320 ms in each of seven (run 22).
TILE_TABLES = Path(__file__).parent / "tiles"


def device_name(cupy):
    """The name of CuPy's current device ("NVIDIA H200")."""
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else name


def tile_table(name):
    """The path of the tile table of the GPU called ``name``: its words joined by '-' (NVIDIA-H200.jsonl)."""
    return TILE_TABLES / (re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") + ".jsonl")


def write_tiles(path, tiles):
    """A step's tiles ({(kernel, rows, cols, inner): tile}) as JSON lines: a tile table, or benchmark.py --tiles."""
    lines = [json.dumps({"product": list(key), "tile": tile}) for key, tile in tiles.items()]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def read_tiles(path):
    """write_tiles' file back; a file that is not one raises ValueError, in one line that names it."""
    try:
        tiles = {}
        for line in Path(path).read_text().splitlines():
            record = json.loads(line)
            name, rows, cols, inner = record["product"]
            if not (isinstance(name, str) and all(type(n) is int for n in (rows, cols, inner))
                    and isinstance(record["tile"], str)):
                raise ValueError(line)
            tiles[(name, rows, cols, inner)] = record["tile"]
        return tiles
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a file of tiles that write_tiles wrote ({type(e).__name__})") from None


def tile_shape(tile):
    """(BM, BN, TM, TN, S) of a GEMM_TILES or CLUSTER_TILES name: S = 1 without a "_sS" part."""
    block, thread, *groups = tile.removesuffix("+cluster").split("_")
    (bm, bn), (tm, tn) = (map(int, part.split("x")) for part in (block, thread))
    return bm, bn, tm, tn, int(groups[0][1:]) if groups else 1


def cluster_parks(tile):
    """Whether the blocks of ``tile`` can hand a split tile over in a cluster: their groups' sums and row sums fit
    over their shared memory's stages (kernels/linear.cu::cluster_parks)."""
    bm, bn, _, _, slices = tile_shape(tile)
    return slices * bm * (bn + 1) <= slices * 2 * 16 * (bm + bn + 8)  # two stages of 16 (TILE_K) per group


# The same tile shapes with the blocks of a split tile launched as one thread block cluster, which add up the
# splits' sums from each other's shared memory (kernels/linear.cu's gemm): the same kernels, the same bits.
CLUSTER_TILES = tuple(f"{tile}+cluster" for tile in GEMM_TILES if cluster_parks(tile))


def cluster_size(tile, splits):
    """The blocks of a cluster along z where ``tile`` runs ``splits`` splits: 1 unless a "+cluster" tile."""
    return splits // tile_shape(tile)[4] if tile.endswith("+cluster") else 1


def tile_fits(tile, splits):
    """Whether ``tile`` can run a product with ``splits`` splits: its groups take whole blocks' worth, and a
    cluster tile's blocks, 2, 4 or 8 of them, make one cluster."""
    return splits % tile_shape(tile)[4] == 0 and (not tile.endswith("+cluster")
                                                  or cluster_size(tile, splits) in (2, 4, MAX_CLUSTER))


def split_k(rows, cols, inner, sms):
    """How many ranges the inner dimension of a (rows, cols) output is cut into: doubled while the 32 x 32
    tiles times the splits stay within SPLIT_BLOCKS_PER_SM per SM and each split keeps MIN_SPLIT_INNER of the
    inner dimension.

    Most of the step's products have 128 or 256 rows, too few tiles to keep an H100's 132 SMs busy through
    the latency of each slice of the inner dimension. This is a fixed rule and not a timing, because the
    splits group the sums and so set the last bits of the result: a run must not depend on a stopwatch.
    """
    tiles, splits = -(-rows // 32) * -(-cols // 32), 1
    while (splits < MAX_SPLITS and tiles * splits * 2 <= SPLIT_BLOCKS_PER_SM * sms
           and inner >= splits * 2 * MIN_SPLIT_INNER):
        splits *= 2
    return splits


def split_scratch(rows, cols, splits, tile):
    """(floats of partial sums, tile counters) that ``tile`` needs for a (rows, cols) output in ``splits``:
    each split's sums of each tile, and of each row (the weight gradient's bias)."""
    bm, bn, _, _, slices = tile_shape(tile)
    tiles = -(-rows // bm) * -(-cols // bn)
    if splits == slices or cluster_size(tile, splits) > 1:
        return (0, 0)
    return (splits * (tiles * bm * bn + rows), tiles)


def launch_gemm(kernel, name, tile, rows, cols, splits, args):
    """Launch kernels/linear.cu's ``name`` (linear_forward, ...) with ``tile`` for a (rows, cols) output (a
    "+cluster" tile through a kernel launcher that takes ``cluster``, the blocks of a cluster along z)."""
    bm, bn, tm, tn, slices = tile_shape(tile)
    launch = kernel("linear", f"{name}_{tile.removesuffix('+cluster')}")
    grid, block = (-(-cols // bn), -(-rows // bm), splits // slices), ((bm // tm) * (bn // tn) * slices,)
    cluster = cluster_size(tile, splits)
    if cluster > 1:
        launch(grid, block, args, cluster=cluster)
    else:
        launch(grid, block, args)


def gpu_seconds_per_launch(cupy, kernel, launch, reps=20):
    """Seconds per ``launch()`` on the GPU: after a warm-up, ``reps`` launches queued behind
    kernels/step.cu::hold and timed with CUDA events, so the host's launch rate is hidden."""
    cuda = cupy.cuda
    cuda.Device().synchronize()  # nothing else running (another stream's work included)
    launch()
    start, end = cuda.Event(), cuda.Event()
    hold_cycles = HOLD_CYCLES * -(-reps // 20)  # ~1 ms per 20 launches: longer than the host takes to queue them
    kernel("step", "hold")((1,), (1,), (np.int64(hold_cycles),))
    start.record()
    for _ in range(reps):
        launch()
    end.record()
    end.synchronize()
    return cuda.get_elapsed_time(start, end) / 1e3 / reps


def flat_range(model, layer):
    """[start, end) of a Linear layer's W and b in its model's flat buffers (W, then b)."""
    i = model.layers.index(layer)
    start, end = model.slices[f"{i}.W"][0], model.slices[f"{i}.b"][0] + layer.out_features
    assert end - start == layer.params["W"].size + layer.params["b"].size
    return start, end


def cupy_capture(stream, work):
    """The launches of ``work()`` on ``stream`` (and on the streams it forks from it) as a CUDA graph, by CuPy's
    capture: every kernel then runs at the priority of the stream the graph is launched into."""
    with stream:
        stream.begin_capture()
        try:
            work()
        finally:
            graph = stream.end_capture()
    return graph


def draw_ids(k):
    """(noise draws, D-step dropout draws per D iteration, G-step dropout draws) of a step with k D-steps."""
    noise = [NOISE + i for i in range(k)]
    d_step = [[D_STEP_DROPOUT + 16 * i + j for j in range(3)] for i in range(k)]
    g_step = [G_STEP_DROPOUT + j for j in range(3)]
    return noise, d_step, g_step


class FusedStep:
    """The step for ``gan``, whose ``rng`` has ``seed`` and ``step`` (minigan.cupy_backend.PhiloxRng): the
    random counters are (element, draw, rng.step). ``kernel(family, name)`` returns a launchable kernel.

    The first step of each batch size runs launch by launch and times every GEMM tile shape on each of its
    products (``timer(launch, reps)`` -> seconds per launch over reps; on a GPU, CUDA events), but for a batch size
    smaller than the first, which takes the first one's tiles, product for product (``_first_batch_tile``). From
    the second step on the step is one CUDA graph with the fastest tiles. The first graph captured is then tuned
    as a whole (``_tune``): a tile that came close alone replaces the fastest where the graph runs faster with it.
    Where ``timer`` is None (the CPU) every product uses DEFAULT_TILE. ``clusters``: CLUSTER_TILES are timed too
    (the kernel launcher takes ``cluster``: on a GPU, cupy_backend.DependentLaunch). ``sms`` (the GPU's SM count,
    H100_SMS without one) sets the split-K rule. ``capture(stream, work)`` captures the graph
    (minigan.cupy_backend.PriorityGraph: each kernel at its stream's priority); None: cupy_capture.
    """

    def __init__(self, gan, xp, kernel, timer=None, sms=None, capture=None, clusters=False):
        self.gan, self.xp, self.kernel = gan, xp, kernel
        self.tile_choices = GEMM_TILES + CLUSTER_TILES if clusters else GEMM_TILES
        self.capture = capture or cupy_capture
        self.seed = np.uint64(gan.rng.seed)
        G, D = gan.G, gan.D
        self.g_linear = [l for l in G.layers if isinstance(l, Linear)]
        self.g_norm = [l for l in G.layers if isinstance(l, BatchNorm1d)]
        self.d_linear = [l for l in D.layers if isinstance(l, Linear)]
        slopes = {l.negative_slope for l in G.layers + D.layers if isinstance(l, LeakyReLU)}
        drops = {l.p for l in D.layers if isinstance(l, Dropout)}
        if len(slopes) != 1 or len(drops) != 1 or len(self.g_linear) != 4 or len(self.d_linear) != 4:
            raise ValueError("the fused step implements the reference GAN only")
        if gan.k > MAX_K:
            raise ValueError(f"the fused step draws distinct numbers for at most {MAX_K} D updates a step")
        self.slope, self.drop_p = np.float32(slopes.pop()), np.float32(drops.pop())
        self.drop_scale = np.float32(1.0 / (1.0 - float(self.drop_p)))  # as Dropout: float32(1 / (1 - p))
        # Adam in two launches per model, so that the part whose gradients are complete first is updated
        # beside the rest of the backward pass: D's layers but the first (their gradients come from the side
        # stream, before D's first layer's), and G's last layer (its gradient is the first of G's). The flat
        # buffers hold the layers in order, so each part is one range.
        (d_start, d_first_end), (g_last_start, g_end) = flat_range(D, self.d_linear[0]), flat_range(G, self.g_linear[3])
        assert d_start == 0 and g_end == G.params.size
        self.d_first, self.d_rest = slice(0, d_first_end), slice(d_first_end, D.params.size)
        self.g_rest, self.g_last = slice(0, g_last_start), slice(g_last_start, g_end)
        self.step = xp.zeros(1, np.uint64)  # feeds the random streams; +1 per step
        self.t_G, self.t_D = xp.zeros(1, np.int64), xp.zeros(1, np.int64)  # Adam step counts
        self.stats = xp.zeros(4, np.float32)  # loss_D, loss_G, D(x), D(G(z)) of the current step
        self._device_counters = None  # the host counters the device counters are known to equal
        self._buffers = {}
        # On a GPU each batch size's step is captured once as a CUDA graph (on a stream of its own, which
        # synchronises with the default stream) and replayed: one launch per step instead of 44 (K = 1).
        on_gpu = hasattr(xp, "cuda")
        self.stream = xp.cuda.Stream(non_blocking=False, priority=MAIN_PRIORITY) if on_gpu else None
        self.use_graph = on_gpu
        # The weight gradients run on a second stream, beside the chain of input gradients that is the step's
        # critical path (nothing reads them before Adam, which waits for them), and so does D on the real rows,
        # beside G's forward pass (the head waits for it): branches of the graph.
        self.side = xp.cuda.Stream(non_blocking=False, priority=SIDE_PRIORITY) if on_gpu else None
        self.forked, self.joined = ((xp.cuda.Event(disable_timing=True), xp.cuda.Event(disable_timing=True))
                                    if on_gpu else (None, None))
        self.on_side = False  # while launches go to the side stream (inside branch())
        self._graphs, self._ran = {}, set()  # batch sizes captured; batch sizes run (and tuned) once
        self.timer = self._gpu_time if on_gpu and timer is None else timer
        self.sms = sms or (xp.cuda.Device().attributes["MultiProcessorCount"] if on_gpu else H100_SMS)
        self.tiles = {}  # (kernel, rows, cols, inner) -> the fastest tile shape
        self.tile_times = {}  # (kernel, rows, cols, inner) -> {tile shape: seconds per launch alone}
        # the graph tuner's trials: {"product", "tile", "ratio": the graph's time with the tile / without, "kept"}
        self.trials = []
        self.products, self.batch = [], None  # the GEMM products the step launched, in order, and its rows
        self.first_products, self.first_batch = None, None  # the same of the first step (the first batch size)
        # Split-K scratch: one for the products on each stream, which run one at a time. The split rule
        # keeps the 32 x 32 tiles times the splits within SPLIT_BLOCKS_PER_SM per SM; larger tiles pad the
        # output, so room for twice that, and the tuner passes over a tile shape that would need more.
        blocks = SPLIT_BLOCKS_PER_SM * self.sms
        self.scratch = {side: (xp.empty(2 * blocks * 32 * 32, np.float32), xp.zeros(blocks, np.uint32))
                        for side in (False, True)}  # (partials, tile counters: zero between launches)
        self.table = None  # the tile table the tiles were taken from, if any (take_tiles)

    def batch_input(self, n):
        """The rows of D's input that a step on n rows reads its batch from (GAN.batch_input)."""
        return self.buffers(n)["x"][:n]

    def buffers(self, n):
        """Activations and gradients for a batch of n rows, allocated on first use."""
        if n in self._buffers:
            return self._buffers[n]
        xp, f32 = self.xp, np.float32
        latent = self.g_linear[0].in_features
        b = {"z": [xp.empty((n, latent), f32) for _ in range(self.gan.k)],
             "x": xp.empty((2 * n, 784), f32)}  # D's input: [real; fake]
        for i, layer in enumerate(self.g_linear[:3]):
            c = layer.out_features
            for name in ("a", "x_hat", "y", "dy", "dpre"):  # a: LeakyReLU out; y: BatchNorm out
                b[f"g{name}{i}"] = xp.empty((n, c), f32)
            b[f"ginv_std{i}"] = xp.empty(c, f32)
        b["dfake"] = xp.empty((n, 784), f32)
        for rows, tag in ((2 * n, "d"), (n, "g")):  # D over [real; fake] in the D step, over fake in the G step
            for j, layer in enumerate(self.d_linear[:3]):
                b[f"{tag}h{j}"] = xp.empty((rows, layer.out_features), f32)
                b[f"{tag}dh{j}"] = xp.empty((rows, layer.out_features), f32)
            b[f"{tag}logit"] = xp.empty((rows, 1), f32)
        # the D step's head: per block of HEAD_ROWS rows, its share of D's last layer's dW and db
        b["head_partials"] = xp.empty((-(-2 * n // HEAD_ROWS), self.d_linear[3].in_features + 1), f32)
        self._buffers[n] = b
        return b

    # -- launches ------------------------------------------------------------------------------------

    def _launch(self, family, name, threads, args, block=THREADS):
        self.kernel(family, name)(((threads + block - 1) // block,), (block,), args)

    def _bn_threads(self, columns):
        return -(-columns // BN_COLUMNS) * THREADS  # blocks of 256 threads, BN_COLUMNS columns each

    def _gemm(self, name, rows, cols, inner, args):
        """Launch GEMM kernel ``name`` for a (rows, cols) output, with the split-K scratch of the stream it goes
        to: split-K by rule, the tile by timing (at a later batch size, the first one's where it can run)."""
        splits, args = split_k(rows, cols, inner, self.sms), args + self.scratch[self.on_side]
        key = (name, rows, cols, inner)
        self.products.append(key)
        tile = self.tiles.get(key)
        if tile is None:
            tile = self.tiles[key] = self._first_batch_tile(key, splits) or (
                self._fastest_tile(key, splits, args) if self.timer else DEFAULT_TILE)
        assert self._tile_runs(tile, rows, cols, splits), (key, splits, tile)
        launch_gemm(self.kernel, name, tile, rows, cols, splits, args)

    def _first_batch_tile(self, key, splits):
        """For a batch size smaller than the first, the tile of the product launched at the same place in the
        first batch size's step, where it can run this one; else None. Every batch size launches the same
        products in the same order, and an epoch's smaller last batch runs once in an epoch: timing its tiles
        would cost more (~0.8 s on an H200, run 15) than all its steps could gain from them. A larger batch size
        is timed: a run resumed at an epoch's last step starts with the small batch, and the epochs' batch size
        is the one the graph's tuning needs the times of."""
        if self.first_products is None or self.batch > self.first_batch:
            return None
        first = self.first_products[len(self.products) - 1]
        tile = self.tiles[first]
        assert first[0] == key[0], (first, key)
        return tile if self._tile_runs(tile, *key[1:3], splits) else None

    def take_tiles(self, tiles, table=None):
        """The step's tiles become ``tiles`` ({(kernel, rows, cols, inner): tile shape}: a tile table, another step's
        ``self.tiles``) for the products they name, where the tile can run the product here (this step's split
        count, scratch and tile shapes), so that two steps can be timed with the same tiles; any tiles it had are
        dropped, and every other product is timed as usual. ``table``: the tile table they come from, if any.
        Returns the set of products taken. A product taken is not tried again by the graph's tuning."""
        self.tiles.clear()
        self.table = table
        taken = set()
        for key, tile in tiles.items():
            _, rows, cols, inner = key
            splits = split_k(rows, cols, inner, self.sms)
            if tile in self.tile_choices and self._tile_runs(tile, rows, cols, splits):
                self.tiles[key] = tile
                taken.add(key)
        return taken

    def _tile_runs(self, tile, rows, cols, splits):
        """Whether ``tile`` can run a (rows, cols) output in ``splits`` splits here: its groups and cluster fit the
        split count (tile_fits), and its split-K scratch fits the current stream's."""
        if not tile_fits(tile, splits):
            return False
        partials, counters = split_scratch(rows, cols, splits, tile)
        have_partials, have_counters = self.scratch[self.on_side]
        return partials <= have_partials.size and counters <= have_counters.size

    def _fastest_tile(self, key, splits, args):
        """Time every tile shape that can run this product (all give the same bits, so the launches do no
        harm) and keep the fastest."""
        name, rows, cols, _ = key
        candidates = [tile for tile in self.tile_choices if self._tile_runs(tile, rows, cols, splits)]
        try:
            times = self.tile_times[key] = self._best_times(
                {tile: lambda tile=tile: launch_gemm(self.kernel, name, tile, rows, cols, splits, args)
                 for tile in candidates})
        except RuntimeError as e:  # a cluster the driver would not launch: the step goes on without clusters
            if self.tile_choices == GEMM_TILES:
                raise
            warnings.warn(f"minigan: {e}: the GEMM tiles are timed without clusters", RuntimeWarning, stacklevel=2)
            self.tile_choices = GEMM_TILES
            return self._fastest_tile(key, splits, args)
        return min(times, key=times.get)

    def _best_times(self, launches, reps=20):
        """{key: seconds per launch of launches[key]()} over ``reps`` launches, each timed TUNING_ROUNDS times in
        interleaved rounds and its best time kept: the first steps run as the GPU's clocks rise, so a single
        pass would favour whichever came last."""
        times = {}
        for _ in range(TUNING_ROUNDS):
            for key, launch in launches.items():
                seconds = self.timer(launch, reps)
                times[key] = min(times.get(key, seconds), seconds)
        return times

    def _gpu_time(self, launch, reps=20):
        return gpu_seconds_per_launch(self.xp, self.kernel, launch, reps)

    def linear_forward(self, y, x, layer, rows, activation, draw=0, first_row=0):
        """y = act(x W^T + b) for ``rows`` rows, the batch's rows from ``first_row`` on (dropout's counters)."""
        W, b = layer.params["W"], layer.params["b"]
        self._gemm("linear_forward", rows, layer.out_features, layer.in_features,
                   (y, x, W, b, np.int32(rows), np.int32(layer.out_features), np.int32(layer.in_features),
                    np.int32(activation), self.slope, self.drop_p, self.drop_scale, self.seed, self.step,
                    np.uint32(draw), np.int32(first_row)))

    @contextlib.contextmanager
    def branch(self):
        """Launches inside go to the side stream, after all launched so far on the main one (on a GPU)."""
        self.on_side = True
        try:
            if self.side is None:
                yield
                return
            self.stream.record(self.forked)
            self.side.wait_event(self.forked)
            with self.side:
                yield
        finally:
            self.on_side = False

    def join(self):
        """The main stream waits for the side stream's launches so far (before what reads their outputs)."""
        if self.side is not None:
            self.side.record(self.joined)
            self.stream.wait_event(self.joined)

    def linear_backward(self, dy, x, layer, rows, dx=None, y_prev=None, activation=ACT_NONE, draw=0,
                        param_grads=True):
        """dW, db of ``layer`` (unless param_grads is False) and dx * act'(y_prev) into ``dx`` (if given)."""
        n_out, n_in = layer.out_features, layer.in_features
        if param_grads:
            # beside the input gradient on the main stream; a layer with none leaves the main stream idle, so
            # its weight gradient runs there and not queued behind the others on the side stream
            with self.branch() if dx is not None else contextlib.nullcontext():
                self._gemm("linear_backward_weight", n_out, n_in, rows,
                           (layer.grads["W"], layer.grads["b"], dy, x, np.int32(rows), np.int32(n_out),
                            np.int32(n_in)))
        if dx is not None:
            self._gemm("linear_backward_input", rows, n_in, n_out,
                       (dx, dy, layer.params["W"], dx if y_prev is None else y_prev, np.int32(rows), np.int32(n_out),
                        np.int32(n_in), np.int32(activation), self.slope, self.drop_p, self.drop_scale, self.seed,
                        self.step, np.uint32(draw)))

    def adam(self, opt, t, part, t_offset=0):
        """Adam over ``part`` (a slice) of the model's flat buffers, whose gradients must be complete."""
        n = part.stop - part.start
        # 8 blocks of 256 per SM fill an H100's SMs (2048 threads each); the kernel strides over the rest. On
        # the side stream, 2 per SM: the main stream's kernels beside it need the rest of the SMs' slots
        blocks_per_sm = 2 if self.on_side else 8
        self._launch("optim", "adam_step_counted", min(-(-n // 4), blocks_per_sm * self.sms * THREADS),
                     (opt.params[part], opt.grads[part], opt.m[part], opt.v[part], np.int64(n), np.float64(opt.lr),
                      np.float64(opt.betas[0]), np.float64(opt.betas[1]), np.float64(opt.eps), t,
                      np.int32(t_offset)))

    # -- the step ------------------------------------------------------------------------------------

    def generator_forward(self, b, z, n):
        h = z
        for i, (layer, norm) in enumerate(zip(self.g_linear, self.g_norm)):
            self.linear_forward(b[f"ga{i}"], h, layer, n, ACT_LEAKY)
            self._launch("layers", "batchnorm_forward", self._bn_threads(layer.out_features),
                         (b[f"gy{i}"], b[f"gx_hat{i}"], b[f"ginv_std{i}"], b[f"ga{i}"], norm.params["gamma"],
                          norm.params["beta"], norm.buffers["running_mean"], norm.buffers["running_var"],
                          np.int32(n), np.int32(layer.out_features), np.float32(norm.eps),
                          np.float32(norm.momentum)))
            h = b[f"gy{i}"]
        fake = b["x"][n:]
        self.linear_forward(fake, h, self.g_linear[3], n, ACT_SIGMOID)  # straight into D's input rows
        return fake

    def discriminator_forward(self, b, x, tag, draws, first_row=0):
        """D's layers up to the head (which head() runs) on the rows of x, which are the rows of the batch (and
        of the tag's buffers) from ``first_row`` on."""
        h, rows = x, x.shape[0]
        for j, layer in enumerate(self.d_linear[:3]):
            out = b[f"{tag}h{j}"][first_row:first_row + rows]
            self.linear_forward(out, h, layer, rows, ACT_LEAKY_DROPOUT, draws[j], first_row)
            h = out

    def head(self, b, n, tag, draws, g_step, first=True):
        """D's last layer and the sigmoid + BCE head, forward and backward: d loss / d h2 on the main stream;
        the losses into stats (loss_D added up over the D updates after the ``first``) and (D step) the
        layer's dW and db on the side stream."""
        layer, rows = self.d_linear[3], n if g_step else 2 * n
        h, k = b[f"{tag}h2"], np.int32(layer.in_features)
        self._launch("linear", "head_forward_backward", -(-rows // HEAD_ROWS) * THREADS,
                     (b[f"{tag}dh2"], b[f"{tag}logit"], b["head_partials"], h, layer.params["W"],
                      layer.params["b"], np.int32(rows), np.int32(n), k, np.int32(g_step), np.int32(ACT_LEAKY_DROPOUT),
                      self.slope, self.drop_p, self.drop_scale, self.seed, self.step, np.uint32(draws[2])))
        with self.branch():
            self._launch("linear", "head_reduce", THREADS, (self.stats, layer.grads["W"], layer.grads["b"],
                                                            b[f"{tag}logit"], b["head_partials"], np.int32(n), k,
                                                            np.int32(g_step), np.int32(first)))

    def discriminator_backward(self, b, x, rows, tag, draws, param_grads, dx=None, layers=(2, 1, 0)):
        """From d loss / d h2 (b[tag + 'dh2'], from head()) back through D's other ``layers`` (from the last);
        into dx * sigmoid'(x) if dx is given."""
        for j in layers:
            layer, dy = self.d_linear[j], b[f"{tag}dh{j}"]
            layer_in = x if j == 0 else b[f"{tag}h{j - 1}"]
            if j > 0:
                self.linear_backward(dy, layer_in, layer, rows, b[f"{tag}dh{j - 1}"], layer_in, ACT_LEAKY_DROPOUT,
                                     draws[j - 1], param_grads)
            else:
                self.linear_backward(dy, layer_in, layer, rows, dx, x, ACT_SIGMOID, 0, param_grads)

    def generator_backward(self, b, z, n, layers=(3, 2, 1, 0)):
        """From d loss / d (G's last pre-activation) (b['dfake']) back through G's ``layers`` (from the last)."""
        for i in layers:
            layer, dy = self.g_linear[i], b["dfake"] if i == 3 else b[f"gdpre{i}"]
            layer_in = z if i == 0 else b[f"gy{i - 1}"]
            self.linear_backward(dy, layer_in, layer, n, b[f"gdy{i - 1}"] if i > 0 else None)
            if i > 0:
                norm, c = self.g_norm[i - 1], self.g_linear[i - 1].out_features
                self._launch("layers", "batchnorm_leaky_backward", self._bn_threads(c),
                             (b[f"gdpre{i - 1}"], norm.grads["gamma"], norm.grads["beta"], b[f"gdy{i - 1}"],
                              b[f"gx_hat{i - 1}"], b[f"ginv_std{i - 1}"], norm.params["gamma"], b[f"ga{i - 1}"],
                              np.int32(n), np.int32(c), self.slope))

    def run(self, n):
        """One training step on the batch already in buffers(n)["x"][:n]; statistics into self.stats."""
        gan, b = self.gan, self.buffers(n)
        self.products, self.batch = [], n
        noise, d_draws, g_draws = draw_ids(gan.k)
        for i in range(gan.k):
            with self.branch():  # D on the real rows [0, n), beside G's forward pass
                self.discriminator_forward(b, b["x"][:n], "d", d_draws[i])
            z = b["z"][i]
            self._launch("random", "normal_step_fill", (z.size + 3) // 4,
                         (z, np.int32(z.size), self.seed, self.step, np.uint32(noise[i])))
            self.generator_forward(b, z, n)
            self.discriminator_forward(b, b["x"][n:], "d", d_draws[i], first_row=n)  # and on the fake rows
            self.join()
            self.head(b, n, "d", d_draws[i], g_step=0, first=i == 0)
            self.discriminator_backward(b, b["x"], 2 * n, "d", d_draws[i], param_grads=True, layers=(2, 1))
            with self.branch():  # after the side stream's weight gradients, beside D's first layer's
                self.adam(gan.opt_D, self.t_D, self.d_rest, t_offset=i)
            self.discriminator_backward(b, b["x"], 2 * n, "d", d_draws[i], param_grads=True, layers=(0,))
            self.adam(gan.opt_D, self.t_D, self.d_first, t_offset=i)
            self.join()
        fake = b["x"][n:]
        self.discriminator_forward(b, fake, "g", g_draws)
        self.head(b, n, "g", g_draws, g_step=1)
        self.discriminator_backward(b, fake, n, "g", g_draws, param_grads=False, dx=b["dfake"])
        z = b["z"][gan.k - 1]
        self.generator_backward(b, z, n, layers=(3,))
        with self.branch():  # after its weight gradient, beside the rest of G's backward pass
            self.adam(gan.opt_G, self.t_G, self.g_last)
        self.generator_backward(b, z, n, layers=(2, 1, 0))
        self.join()  # the side stream's weight gradients are complete (and its Adam has read t_G)
        self.adam(gan.opt_G, self.t_G, self.g_rest)
        self._launch("step", "step_finish", 1, (self.step, self.t_G, self.t_D, np.int32(gan.k)), block=1)
        if self.first_products is None:
            self.first_products, self.first_batch = self.products, n

    def graph(self, n):
        """The step for n rows, captured as a CUDA graph on first use (after one eager step: every kernel is
        loaded and every tile chosen, since neither may happen during a capture). The first graph captured is
        tuned (``_tune``)."""
        graph = self._graphs.get(n)
        if graph is None:
            graph, products = self._capture(n)
            if not self._graphs and self.timer is not None:
                graph = self._tune(n, graph, products)
            self._graphs[n] = graph
        return graph

    def _capture(self, n):
        """(the step for n rows as a graph, the GEMM products it launches in order)"""
        try:
            return self.capture(self.stream, lambda: self.run(n)), self.products
        except RuntimeError as e:  # a driver call of PriorityGraph refused (a launch error recurs below)
            if self.capture is cupy_capture:
                raise
            warnings.warn(f"minigan: {e}: the step's graph is captured by CuPy instead, every kernel at one "
                          "priority", RuntimeWarning, stacklevel=3)
            self.capture = cupy_capture
            return self._capture(n)

    def _tune(self, n, graph, products):
        """``graph`` (the step for n rows, which launches ``products``) with each product's tile shape chosen
        in the graph itself.

        A tile's time alone, back to back, is not its time in the graph, beside the side stream's kernels, and
        several tiles of a product come within a few percent of each other alone. So, longest product first,
        each product's next STEP_TUNING_CANDIDATES tiles within STEP_TUNING_SPREAD of its fastest are tried: the
        step captured with the trial tile, timed against the graph it would replace in interleaved rounds, and
        kept where it runs faster. Every tile gives the same bits, but the timing replays are training steps on
        the batch at hand, so the state a step changes is copied first and put back after each trial.
        """
        saved = self._state()
        products = [key for key in dict.fromkeys(products) if key in self.tile_times]
        for key in sorted(products, key=lambda key: -min(self.tile_times[key].values())):
            times, tile = self.tile_times[key], self.tiles[key]
            close = [t for t in sorted(times, key=times.get)
                     if t != tile and times[t] <= STEP_TUNING_SPREAD * min(times.values())]
            for trial_tile in close[:STEP_TUNING_CANDIDATES]:
                self.tiles[key] = trial_tile
                trial, _ = self._capture(n)
                ratio = self._time_ratio(trial, graph)
                self._restore(saved)
                self.trials.append({"product": key, "tile": trial_tile, "ratio": ratio, "kept": ratio < 1})
                if ratio < 1:
                    graph, tile = trial, trial_tile
                self.tiles[key] = tile
        return graph

    def _time_ratio(self, trial, graph):
        """The seconds per replay of graph ``trial`` over those of ``graph`` (_best_times of each)."""
        times = self._best_times({"graph": lambda: graph.launch(stream=self.stream),
                                  "trial": lambda: trial.launch(stream=self.stream)}, STEP_TUNING_REPLAYS)
        return times["trial"] / times["graph"]

    def search_tiles(self, n, rounds=5, replays=100, margin=0.005, report=lambda trial: None):
        """A tile table searched in the graph of the step for n rows (examples/search_tiles.py): product by product
        in launch order, every other tile shape that can run it, captured in the step and timed against the best
        graph so far in ``rounds`` rounds of ``replays`` replays each, the order swapped every round. The trial is
        kept where it ran faster in every round and by more than ``margin`` at the median: the tuner's single
        ratio kept its noise as often as a gain (runs 18 and 19), and a round of compare_kernels.py's 400 replays
        varied by ~0.15% in run 20 (a round here has 100). Both graphs run on this step's buffers, so the 0.5% by
        which two GANs with the same tiles differed there is not between them. The timing replays are training
        steps; the state they trained is put back at the end. Returns (the trials, each {"product", "tile",
        "ratios", "kept"}; the searched graph's time over the first one's, round by round); the step then replays
        the searched graph, and ``self.tiles`` is the table. ``report`` is called with each trial as it ends, the
        tiles already updated where it was kept."""
        saved = self._state()
        graph, products = self._capture(n)
        first = graph
        trials = []
        for key in dict.fromkeys(products):
            _, rows, cols, inner = key
            splits, best = split_k(rows, cols, inner, self.sms), self.tiles[key]
            for tile in self.tile_choices:
                if tile == best or not self._tile_runs(tile, rows, cols, splits):
                    continue
                self.tiles[key] = tile
                trial, _ = self._capture(n)
                ratios = self._round_ratios(trial, graph, rounds, replays)
                kept = max(ratios) < 1 and sorted(ratios)[len(ratios) // 2] < 1 - margin
                trials.append({"product": key, "tile": tile, "ratios": ratios, "kept": kept})
                if kept:
                    graph, best = trial, tile
                self.tiles[key] = best
                report(trials[-1])
        overall = self._round_ratios(graph, first, rounds, replays)
        self._restore(saved)
        self._graphs[n] = graph
        return trials, overall

    def _round_ratios(self, trial, graph, rounds, replays):
        """Graph ``trial``'s seconds per replay over ``graph``'s, in each of ``rounds`` rounds, which time the two
        in turns and swap the order every round."""
        launches = {"graph": lambda: graph.launch(stream=self.stream),
                    "trial": lambda: trial.launch(stream=self.stream)}
        ratios = []
        for round_ in range(rounds):
            order = ("graph", "trial") if round_ % 2 == 0 else ("trial", "graph")
            seconds = {name: self.timer(launches[name], replays) for name in order}
            ratios.append(seconds["trial"] / seconds["graph"])
        return ratios

    def state_arrays(self):
        """{name: array} of every array a step changes that a later step reads: the parameters, gradients,
        Adam's moments, BatchNorm's running statistics, the device counters and the losses."""
        gan = self.gan
        arrays = {"G.params": gan.G.params, "G.grads": gan.G.grads, "D.params": gan.D.params,
                  "D.grads": gan.D.grads, "opt_G.m": gan.opt_G.m, "opt_G.v": gan.opt_G.v, "opt_D.m": gan.opt_D.m,
                  "opt_D.v": gan.opt_D.v}
        for model_name, model in (("G", gan.G), ("D", gan.D)):
            arrays.update({f"{model_name}.{name}": array for name, array in model.named_buffers()})
        arrays.update({"step": self.step, "t_G": self.t_G, "t_D": self.t_D, "losses": self.stats})
        return arrays

    def _state(self):
        """(array, copy) of each of state_arrays()."""
        return [(array, array.copy()) for array in self.state_arrays().values()]

    @staticmethod
    def _restore(state):
        for array, copy in state:
            array[...] = copy

    def train_step(self, real):
        """GAN.train_step's contract: a batch in, [loss_D, loss_G, D(x), D(G(z))] out (as float64).

        The host's counters (rng.step, the optimizers' t) are the checkpointed truth: they are written to
        the device before the step and advanced with it.
        """
        gan, n = self.gan, real.shape[0]
        rows = self.batch_input(n)
        counters = (gan.rng.step, gan.opt_G.t, gan.opt_D.t)
        with self.stream if self.stream is not None else contextlib.nullcontext():
            if not same_array(real, rows):  # a copy, one more launch before the graph's
                rows[...] = real
            if counters != self._device_counters:  # first step, or a checkpoint was loaded
                self.step[...], self.t_G[...], self.t_D[...] = counters
            if self.use_graph and n in self._ran:
                self.graph(n).launch(stream=self.stream)
            else:
                self.run(n)
                self._ran.add(n)
            stats = self.stats.astype(np.float64)
        gan.rng.step += 1
        gan.opt_G.t += 1
        gan.opt_D.t += gan.k
        self._device_counters = (gan.rng.step, gan.opt_G.t, gan.opt_D.t)  # advanced on the device too
        return stats
