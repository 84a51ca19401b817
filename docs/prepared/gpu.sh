# Prepared for the next GPU session (written 2026-11-28, session 26; step 7's timelines added in session 27): one
#   call of ~450 s.
#   1. main's kernels and the tree's (exp/real-half-2, in .data/tree) compiled at once (~20 s);
#   2. main's GPU tests (~60 s): the searched tile table in effect;
#   3. main's 50 epochs, evaluated (~25 s): the epoch-end files now written by minigan.fileio.FileWriter, so the
#      wall time after start-up should be the epochs' own time plus the training thread's work at each epoch's end
#      (the grid's pass of G, the snapshot's copies to the host), whatever the disk does;
#   4. the tree's tile search from main's table (~120 s: it has 23 products, 3 of them new or of new shapes);
#   5. main with its table against the tree with the searched one, in alternating processes, three each (~50 s);
#   6. benchmark.py --compare-torch, main (~20 s);
#   7. the step's timeline in the graph (profile_step.py --timeline 50), main's and the tree's, each with its own
#      table (~30 s); the tree's GPU tests with its searched table (~60 s), and main's 50 epochs once more (~25 s).
# Here, in the checkout: bash docs/prepared/gpu.sh prepare   (MNIST, the classifier's cache, this script, the
#   tree exp/real-half-2 as files in .data/tree (from docs/prepared/exp-real-half-2.mbox on HEAD where the branch
#   is missing), and the commits prepared into .data/)
# There, carrying [".data"]: bash .data/gpu.sh   (timeout_s ~540; each step's files are in $OUT/next.tgz as soon
#   as it ends, so a call cut short keeps what it did)
set -u
TREE=exp/real-half-2
if [ "${1:-}" = prepare ]; then
  if ! git rev-parse -q --verify "$TREE" > /dev/null; then  # a fresh clone: the tree from its patches
    rm -rf /tmp/tree-wt && git worktree add -q --detach /tmp/tree-wt HEAD &&
      git -C /tmp/tree-wt am -q -3 "$PWD/docs/prepared/exp-real-half-2.mbox" &&
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
train50() {  # $1: the run's name
  in_main timeout 40 python examples/train_mnist.py --backend cupy --data-dir "$MAIN/.data" --out "/tmp/r50-$1" > "$O/train-cupy-50-$1.txt" 2>&1
  stamp "train $1"
  in_main timeout 40 python examples/evaluate.py --checkpoint "/tmp/r50-$1" --data-dir "$MAIN/.data" --backend cupy --out "$O/evaluation-$1.json" > "$O/evaluate-$1.txt" 2>&1
  cp "/tmp/r50-$1/metrics.jsonl" "$O/metrics-$1.jsonl"; stamp "evaluate $1"; save
}
cp .data/gpu.sh .data/commit.txt "$O/"
mkdir -p /tmp/mc && cp .data/cache/*.npz /tmp/mc/ 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$O/gpu.txt" 2>&1
compile='from minigan import cupy_backend; cupy_backend.compile_kernels()'
in_main timeout 150 python -c "$compile" > "$O/compile-main.txt" 2>&1 & in_tree timeout 150 python -c "$compile" > "$O/compile-tree.txt" 2>&1; wait
stamp compile
in_main timeout 120 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_cupy.py > "$O/pytest-main.txt" 2>&1
echo "exit status $?" >> "$O/pytest-main.txt"; stamp "pytest main"; save
train50 1
cp /tmp/r50-1/samples/epoch_050.png "$O/epoch_050.png"
in_tree timeout 200 python examples/search_tiles.py --out "$O/tree-searched.jsonl" > "$O/search-tree.txt" 2>&1
echo "exit status $?" >> "$O/search-tree.txt"; stamp "search tree"; save
for round in 1 2 3; do
  echo "== main, round $round" >> "$O/ab.txt"
  in_main timeout 40 python examples/benchmark.py --backend cupy --steps 100 --tiles minigan/tiles/NVIDIA-H200.jsonl >> "$O/ab.txt" 2>&1
  echo "exit status $?" >> "$O/ab.txt"
  echo "== tree, round $round" >> "$O/ab.txt"
  in_tree timeout 40 python examples/benchmark.py --backend cupy --steps 100 --tiles "$O/tree-searched.jsonl" >> "$O/ab.txt" 2>&1
  echo "exit status $?" >> "$O/ab.txt"; stamp "a/b round $round"
done
save
in_main timeout 60 python examples/benchmark.py --backend cupy --compare-torch > "$O/benchmark.txt" 2>&1
echo "exit status $?" >> "$O/benchmark.txt"; stamp benchmark; save
# the tree's table tests then name its own 23 products, as its searched table does
[ -s "$O/tree-searched.jsonl" ] && cp "$O/tree-searched.jsonl" "$T/minigan/tiles/NVIDIA-H200.jsonl"
# where each launch's time goes in the graph with today's tiles (the last timelines are run 20's, with tuned tiles)
in_main timeout 60 python examples/profile_step.py --timeline 50 > "$O/profile-main.txt" 2>&1
echo "exit status $?" >> "$O/profile-main.txt"; stamp "profile main"
in_tree timeout 60 python examples/profile_step.py --timeline 50 > "$O/profile-tree.txt" 2>&1
echo "exit status $?" >> "$O/profile-tree.txt"; stamp "profile tree"; save
in_tree timeout 120 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_cupy.py > "$O/pytest-tree.txt" 2>&1
echo "exit status $?" >> "$O/pytest-tree.txt"; stamp "pytest tree"; save
train50 2
