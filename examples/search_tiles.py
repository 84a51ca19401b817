"""Search a tile table for this GPU in the fused step's graph (needs CuPy and an NVIDIA GPU).

    python examples/search_tiles.py --out tiles.jsonl [--start FILE] [--rounds 5] [--replays 100] [--margin 0.005]

The step starts from the GPU's tile table (minigan/tiles/), or from --start FILE (a table, or benchmark.py
--tiles' file), or, where there is neither, from the tiles its first steps time and tune. Then, product by
product, every other tile shape that can run the product is captured in the step's graph and timed against the
best graph so far, in --rounds alternating rounds of --replays replays (FusedStep.search_tiles). A tile is kept
where it ran faster in every round and by more than --margin at the median. Every tile gives the same bits, so
the search changes nothing but time.

Prints a JSON line for the start (the GPU, the batch, where the tiles came from), one per trial as it ends (the
product, the tile, its time over the best graph's in each round, whether it was kept), and a last one with the
searched graph's time over the starting one's, round by round. Writes the tiles to --out at the start and after
every kept trial, so a search cut short leaves what it found: a tile table, which, copied to minigan/tiles/ under
the name minigan.cupy_step.tile_table gives the GPU, becomes the step's default there.
Where CuPy or the GPU is missing, or --start is not a file of tiles: a one-line error and exit status 1.
"""

import json
import statistics
import sys
from pathlib import Path

import numpy as np

from minigan.cli import ArgumentParser


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="where to write the searched tile table")
    p.add_argument("--start", type=Path, help="the tiles to start from (default: the GPU's tile table)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--replays", type=int, default=100, help="replays of each graph a round")
    p.add_argument("--margin", type=float, default=0.005, help="how much faster a kept tile's median round is")
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args(argv)
    if min(args.rounds, args.replays, args.batch - 1) < 1 or not 0 <= args.margin < 1:
        p.error("--rounds and --replays must be at least 1, --batch at least 2, --margin in [0, 1)")
    from minigan.backend import BackendError, get_backend
    from minigan.cupy_step import read_tiles, write_tiles
    from minigan.gan import GAN

    try:
        backend = get_backend("cupy")
        gan = GAN(backend, seed=0)
        fused = gan.fused
        start = str(fused.table) if fused.table else "timed and tuned"
        if args.start is not None:
            fused.take_tiles(read_tiles(args.start))
            start = str(args.start)
        batch = gan.batch_input(args.batch)  # where the step reads its batch: no copy per step
        batch[...] = backend.asarray(np.random.default_rng(0).random((args.batch, 784), dtype=np.float32))
        for _ in range(2):  # tiles timed where none was taken, then the graph captured (and tuned)
            gan.train_step(batch)
        print(json.dumps({"device": backend.device, "batch": args.batch, "k": 1, "start": start,
                          "products": len(set(fused.products))}), flush=True)
        products = list(dict.fromkeys(fused.products))

        def write_table():  # the step's tiles as they stand, for its products
            write_tiles(args.out, {key: fused.tiles[key] for key in products})

        def report(trial):  # each trial as it ends, and the table as it stands after a kept one
            print(json.dumps({**trial, "product": list(trial["product"]),
                              "ratios": [round(r, 4) for r in trial["ratios"]]}), flush=True)
            if trial["kept"]:
                write_table()

        write_table()

        trials, overall = fused.search_tiles(args.batch, args.rounds, args.replays, args.margin, report)
    except (BackendError, ValueError) as e:
        print(f"search_tiles.py: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"trials": len(trials), "kept": sum(trial["kept"] for trial in trials),
                      "searched_over_start": round(statistics.median(overall), 4),
                      "rounds": [round(r, 4) for r in overall], "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
