# Prepared for the next GPU session (written 2026-11-28, session 27): one call of ~450 s.
#   1. main's kernels and the tree's (exp/d-pass, in .data/tree) compiled at once (~20 s);
#   2. the gate, d_pass against the separate launches bit for bit on this GPU (~20 s): where it fails, only main's
#      steps below run; then the tree's GPU tests (~60 s);
#   3. the step's timeline in the graph (profile_step.py --timeline 50), the tree's and main's (~30 s);
#   4. main against the tree, each with its own table (the tree's: main's tiles on its 14 products), in alternating
#      processes, three rounds (~50 s);
#   5. benchmark.py --compare-torch, the tree and main (~40 s);
#   6. the tree's tile search from its table (~70 s), then main against the searched tree, two rounds (~35 s);
#   7. main's GPU tests (~60 s): the searched tile table and the file writer on a GPU;
#   8. 50 epochs of main and of the tree, evaluated (~50 s): d_pass gives the same bits, so every loss of every epoch
#      should be the same in both (and run 22's, FID-MNIST 14.74);
#   9. if time is left, compute-sanitizer's racecheck and memcheck over two steps of the tree.
# Here, in the checkout: bash docs/prepared/gpu.sh prepare   (MNIST, the classifier's cache, this script, the
#   tree exp/d-pass as files in .data/tree (from docs/prepared/exp-d-pass.mbox on HEAD where the branch is
#   missing), and the commits prepared into .data/)
# There, carrying [".data"]: bash .data/gpu.sh   (timeout_s ~560; each step's files are in $OUT/next.tgz as soon
#   as it ends, so a call cut short keeps what it did)
set -u
TREE=exp/d-pass
if [ "${1:-}" = prepare ]; then
  if ! git rev-parse -q --verify "$TREE" > /dev/null; then  # a fresh clone: the tree from its patches
    rm -rf /tmp/tree-wt && git worktree add -q --detach /tmp/tree-wt HEAD &&
      git -C /tmp/tree-wt am -q -3 "$PWD/docs/prepared/exp-d-pass.mbox" &&
      git branch "$TREE" "$(git -C /tmp/tree-wt rev-parse HEAD)" || exit 1
    git worktree remove --force /tmp/tree-wt
  fi
  mkdir -p .data/cache && cp ../shared/data/mnist/*-ubyte.gz .data/ && cp docs/prepared/gpu.sh .data/gpu.sh &&
    rm -rf .data/tree && mkdir .data/tree && git archive "$TREE" | tar -x -C .data/tree &&
    { git log --oneline -1; git log --oneline -1 "$TREE"; } > .data/commit.txt || exit 1
  cp "${MINIGAN_CACHE:-$HOME/.cache/minigan}"/mnist-classifier-*.npz .data/cache/ 2>/dev/null ||
    ls .data/cache/mnist-classifier-*.npz > /dev/null || echo "gpu.sh: no classifier in .data/cache: FID retrains it" >&2
  exit
fi
for v in /opt/*/.venv; do [ -x "$v/bin/python" ] && PATH=$v/bin:$PATH; done; export PATH
t0=$SECONDS; MAIN=$PWD; T=$PWD/.data/tree
export MINIGAN_CACHE=/tmp/mc MINIGAN_DATA=$PWD/.data
O=/tmp/o-next; rm -rf "$O"; mkdir -p "$O"
stamp() { echo "$1: $((SECONDS - t0)) s" >> "$O/run.txt"; }
save() { tar -czf "$OUT/next.tgz" -C "$O" .; }
in_main() { (cd "$MAIN" && PYTHONPATH=$MAIN "$@"); }
in_tree() { (cd "$T" && PYTHONPATH=$T "$@"); }
train50() {  # $1: main or tree
  in_$1 timeout 40 python examples/train_mnist.py --backend cupy --data-dir "$MAIN/.data" --out "/tmp/r50-$1" > "$O/train-cupy-50-$1.txt" 2>&1
  stamp "train $1"
  in_$1 timeout 40 python examples/evaluate.py --checkpoint "/tmp/r50-$1" --data-dir "$MAIN/.data" --backend cupy --out "$O/evaluation-$1.json" > "$O/evaluate-$1.txt" 2>&1
  cp "/tmp/r50-$1/metrics.jsonl" "$O/metrics-$1.jsonl"; stamp "evaluate $1"; save
}
ab() {  # $1: the tree's table, $2: rounds, $3: the file
  for round in $(seq "$2"); do
    echo "== main, round $round" >> "$O/$3"
    in_main timeout 40 python examples/benchmark.py --backend cupy --steps 100 --tiles minigan/tiles/NVIDIA-H200.jsonl >> "$O/$3" 2>&1
    echo "exit status $?" >> "$O/$3"
    echo "== tree, round $round" >> "$O/$3"
    in_tree timeout 40 python examples/benchmark.py --backend cupy --steps 100 --tiles "$1" >> "$O/$3" 2>&1
    echo "exit status $?" >> "$O/$3"; stamp "$3 round $round"
  done
  save
}
cp .data/gpu.sh .data/commit.txt "$O/"
mkdir -p /tmp/mc && cp .data/cache/*.npz /tmp/mc/ 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$O/gpu.txt" 2>&1
compile='from minigan import cupy_backend; cupy_backend.compile_kernels()'
in_main timeout 150 python -c "$compile" > "$O/compile-main.txt" 2>&1 & in_tree timeout 150 python -c "$compile" > "$O/compile-tree.txt" 2>&1; wait
stamp compile
# the gate: d_pass against the separate launches, bit for bit, on this GPU. Where it fails (or hangs), the tree's
# timings would mean nothing: only main's steps run, and the call keeps its time for them
in_tree timeout 90 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_cupy.py -k d_pass > "$O/pytest-tree-d-pass.txt" 2>&1
gate=$?; echo "exit status $gate" >> "$O/pytest-tree-d-pass.txt"; stamp "pytest tree d_pass"; save
tree() { [ "$gate" = 0 ]; }
tree && { in_tree timeout 150 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_cupy.py > "$O/pytest-tree.txt" 2>&1
  echo "exit status $?" >> "$O/pytest-tree.txt"; stamp "pytest tree"; save
  in_tree timeout 60 python examples/profile_step.py --timeline 50 > "$O/profile-tree.txt" 2>&1
  echo "exit status $?" >> "$O/profile-tree.txt"; stamp "profile tree"; }
in_main timeout 60 python examples/profile_step.py --timeline 50 > "$O/profile-main.txt" 2>&1
echo "exit status $?" >> "$O/profile-main.txt"; stamp "profile main"; save
tree && ab minigan/tiles/NVIDIA-H200.jsonl 3 ab.txt
tree && { in_tree timeout 60 python examples/benchmark.py --backend cupy --compare-torch > "$O/benchmark-tree.txt" 2>&1
  echo "exit status $?" >> "$O/benchmark-tree.txt"; stamp "benchmark tree"; }
in_main timeout 60 python examples/benchmark.py --backend cupy --compare-torch > "$O/benchmark-main.txt" 2>&1
echo "exit status $?" >> "$O/benchmark-main.txt"; stamp "benchmark main"; save
tree && { in_tree timeout 150 python examples/search_tiles.py --out "$O/tree-searched.jsonl" > "$O/search-tree.txt" 2>&1
  echo "exit status $?" >> "$O/search-tree.txt"; stamp "search tree"; save; }
tree && [ -s "$O/tree-searched.jsonl" ] && ab "$O/tree-searched.jsonl" 2 ab-searched.txt
in_main timeout 120 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_cupy.py > "$O/pytest-main.txt" 2>&1
echo "exit status $?" >> "$O/pytest-main.txt"; stamp "pytest main"; save
train50 main
tree && { train50 tree; cp /tmp/r50-tree/samples/epoch_050.png "$O/epoch_050-tree.png"; save; }
# last, if time is left: compute-sanitizer's racecheck and memcheck over two steps of the tree at batch 128 (the
# table's batch: no tile timed). d_pass's shared memory is new: its chunks, parked sums and outputs share one array.
sanitize='import cupy, numpy as np
from minigan.backend import get_backend
from minigan.gan import GAN
gan = GAN(get_backend("cupy"), seed=1)
real = cupy.asarray(np.random.default_rng(0).random((128, 784), dtype=np.float32))
for _ in range(2):
    gan.train_step(real)
cupy.cuda.Device().synchronize()
print("d_pass", gan.fused.d_pass)'
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
for tool in racecheck memcheck; do
  tree || break
  in_tree timeout 150 "${SAN:-compute-sanitizer}" --tool $tool --error-exitcode 9 python -c "$sanitize" > "$O/sanitize-$tool.txt" 2>&1
  echo "exit status $?" >> "$O/sanitize-$tool.txt"; stamp "$tool"; save
done
