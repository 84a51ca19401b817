# Prepared for the next GPU session (written 2026-11-29, sessions 29 to 31): one call of ~500 s, three trees.
#   tree: exp/d-pass (D's passes in one launch each); plus: exp/d-pass-plus, on tree (the same, and D's first weight
#   gradient in two launches, the real rows' beside G's forward pass, G's last input gradient in the G step's pass,
#   and the pass's cluster barriers in halves); gpass: exp/g-pass, on plus (and G's forward pass in one cooperative
#   launch, grid barriers between its products and BatchNorms).
#   1. main's kernels and the trees' compiled at once (~20 s);
#   2. the gates, each tree's passes against the separate launches bit for bit on this GPU (~20 s each, ~40 s for
#      gpass's two passes): a tree whose gate fails (or hangs) is left out of every step below;
#   3. the step's timeline in the graph (profile_step.py --timeline 50) of each tree and of main (~13 s each);
#   4. main against the trees, each with its own table (the trees': main's tiles on their 14, 13 and 9 products), in
#      alternating processes, three rounds (~100 s); the fastest tree by its median, "best", goes on;
#   5. benchmark.py --compare-torch, best and main (~40 s); bench_grid_sync.py, the probe of grid barriers (~10 s);
#   6. best's GPU tests, then main's (~60 s each): main's have not run with the searched tile table or the file writer;
#   7. 50 epochs of main and of best, evaluated (~50 s): both give main's bits, so every loss of every epoch should be
#      the same in both (and run 22's, FID-MNIST 14.74);
#   8. if time is left, compute-sanitizer's racecheck and memcheck over two steps of best.
#   (Best's tile search, step 7 of the two-tree call, is left for a later call: the third tree took its time.)
# Here, in the checkout: bash docs/prepared/gpu.sh prepare   (MNIST, the classifier's cache, this script, the trees as
#   files in .data/tree, .data/plus and .data/gpass: this checkout's HEAD with docs/prepared/exp-d-pass.mbox, then
#   exp-d-pass-plus.mbox and exp-g-pass.mbox on top, and the commits prepared, into .data/)
# There, carrying [".data"]: bash .data/gpu.sh   (timeout_s ~560; each step's files are in $OUT/next.tgz as soon
#   as it ends, so a call cut short keeps what it did)
set -u
TREES="tree plus gpass"
mbox_of() { case $1 in tree) echo exp-d-pass;; plus) echo exp-d-pass-plus;; gpass) echo exp-g-pass;; esac; }
if [ "${1:-}" = prepare ]; then
  # each tree from its patches, on the one before (tree on HEAD): what would be merged on main, whatever branches
  # this clone has
  rm -rf /tmp/tree-wt && git worktree prune && git worktree add -q --detach /tmp/tree-wt HEAD &&
    mkdir -p .data/cache && echo "main: $(git log --oneline -1)" > .data/commit.txt || exit 1
  for name in $TREES; do
    git -C /tmp/tree-wt am -q -3 "$PWD/docs/prepared/$(mbox_of $name).mbox" || exit 1
    rm -rf ".data/$name" && mkdir -p ".data/$name" && git -C /tmp/tree-wt archive HEAD | tar -x -C ".data/$name" || exit 1
    echo "$name: $(git -C /tmp/tree-wt log --oneline -1)" >> .data/commit.txt
  done
  git worktree remove --force /tmp/tree-wt
  cp ../shared/data/mnist/*-ubyte.gz .data/ && cp docs/prepared/gpu.sh .data/gpu.sh || exit 1
  cp "${MINIGAN_CACHE:-$HOME/.cache/minigan}"/mnist-classifier-*.npz .data/cache/ 2>/dev/null ||
    ls .data/cache/mnist-classifier-*.npz > /dev/null || echo "gpu.sh: no classifier in .data/cache: FID retrains it" >&2
  exit
fi
for v in /opt/*/.venv; do [ -x "$v/bin/python" ] && PATH=$v/bin:$PATH; done; export PATH
t0=$SECONDS; MAIN=$PWD
export MINIGAN_CACHE=/tmp/mc MINIGAN_DATA=$PWD/.data
O=/tmp/o-next; rm -rf "$O"; mkdir -p "$O"
stamp() { echo "$1: $((SECONDS - t0)) s" >> "$O/run.txt"; }
save() { tar -czf "$OUT/next.tgz" -C "$O" .; }
in_() { local at=$MAIN; [ "$1" = main ] || at=$MAIN/.data/$1; shift; (cd "$at" && PYTHONPATH=$at "$@"); }
train50() {  # $1: main or a tree
  in_ $1 timeout 40 python examples/train_mnist.py --backend cupy --data-dir "$MAIN/.data" --out "/tmp/r50-$1" > "$O/train-cupy-50-$1.txt" 2>&1
  stamp "train $1"
  in_ $1 timeout 40 python examples/evaluate.py --checkpoint "/tmp/r50-$1" --data-dir "$MAIN/.data" --backend cupy --out "$O/evaluation-$1.json" > "$O/evaluate-$1.txt" 2>&1
  cp "/tmp/r50-$1/metrics.jsonl" "$O/metrics-$1.jsonl"; stamp "evaluate $1"; save
}
logged() {  # $1: a file in $O, $2: the stamp, then main or a tree and its command: its output and exit status
  local file=$1 label=$2 status; shift 2
  in_ "$@" > "$O/$file" 2>&1; status=$?
  echo "exit status $status" >> "$O/$file"; stamp "$label"; return $status
}
bench() {  # $1: main or a tree, $2: its table, $3: the file
  echo "== $1" >> "$O/$3"
  in_ $1 timeout 40 python examples/benchmark.py --backend cupy --steps 100 --tiles "$2" >> "$O/$3" 2>&1
  echo "exit status $?" >> "$O/$3"
}
cp .data/gpu.sh .data/commit.txt "$O/"
mkdir -p /tmp/mc && cp .data/cache/*.npz /tmp/mc/ 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$O/gpu.txt" 2>&1
compile='from minigan import cupy_backend; cupy_backend.compile_kernels()'
for name in main $TREES; do in_ $name timeout 150 python -c "$compile" > "$O/compile-$name.txt" 2>&1 & done; wait
stamp compile
# the gates: each tree's passes against the separate launches, bit for bit, on this GPU. A tree that fails (or hangs)
# would time something else than main's arithmetic: it is left out, and the call keeps its time for the rest
ok=""
for name in $TREES; do
  logged pytest-$name-passes.txt "pytest $name passes" $name timeout 120 python -m pytest -q -s -p no:cacheprovider \
    -m gpu tests/test_cupy.py -k "d_pass or g_pass" && ok="$ok $name"
done
save
for name in $ok main; do
  logged profile-$name.txt "profile $name" $name timeout 60 python examples/profile_step.py --timeline 50
done
save
for round in 1 2 3; do
  bench main minigan/tiles/NVIDIA-H200.jsonl ab.txt
  for name in $ok; do bench $name minigan/tiles/NVIDIA-H200.jsonl ab.txt; done
  stamp "ab round $round"
done
save
# the tree with the lowest median over the rounds goes on (none: main's steps only)
best=$(python - "$O/ab.txt" <<'EOF'
import json, statistics, sys
times, name = {}, None
for line in open(sys.argv[1]):
    if line.startswith("== "):
        name = line[3:].strip()
    elif line.startswith("{") and name != "main":
        row = json.loads(line)
        if row.get("impl") == "minigan-cupy":
            times.setdefault(name, []).append(row["ms_per_step"])
print(min(times, key=lambda n: statistics.median(times[n])) if times else "")
EOF
)
echo "best: ${best:-none}" >> "$O/run.txt"
for name in $best main; do
  logged benchmark-$name.txt "benchmark $name" $name timeout 60 python examples/benchmark.py --backend cupy --compare-torch
done
logged grid-sync.txt "grid sync" main timeout 60 python examples/bench_grid_sync.py
save
for name in $best main; do
  logged pytest-$name.txt "pytest $name" $name timeout 150 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_cupy.py
  save
done
train50 main
[ -n "$best" ] && { train50 $best; cp "/tmp/r50-$best/samples/epoch_050.png" "$O/epoch_050-$best.png"; save; }
# last, if time is left: compute-sanitizer's racecheck and memcheck over two steps of best at batch 128 (the
# table's batch: no tile timed). The passes' shared memory is new: their chunks, parked sums and outputs share one
# array.
sanitize='import cupy, numpy as np
from minigan.backend import get_backend
from minigan.gan import GAN
gan = GAN(get_backend("cupy"), seed=1)
real = cupy.asarray(np.random.default_rng(0).random((128, 784), dtype=np.float32))
for _ in range(2):
    gan.train_step(real)
cupy.cuda.Device().synchronize()
print("d_pass", gan.fused.d_pass, "g_pass", getattr(gan.fused, "g_pass", None))'
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
for tool in racecheck memcheck; do
  [ -n "$best" ] || break
  logged sanitize-$tool.txt $tool $best timeout 150 "${SAN:-compute-sanitizer}" --tool $tool --error-exitcode 9 \
    python -c "$sanitize"
  save
done
