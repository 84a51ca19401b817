# Prepared for the next GPU session (written 2026-11-28, session 25): one call.
#   1. the kernels compiled (~40 s, so that each process below finds them in CuPy's cache);
#   2. examples/search_tiles.py from the H200's tile table, the first run of the search (~130 s by its arithmetic:
#      272 trials of ~0.4 s);
#   3. the searched table against the table, in alternating processes of benchmark.py --tiles, twice each (~50 s);
#   4. main's GPU tests (~70 s), the table in effect (and set aside in the graph test, which tunes);
#   5. the 50 epochs with the table (start-up and epochs without tile timing) and their FID-MNIST (~35 s).
# Here, in the checkout: bash docs/prepared/gpu.sh prepare   (MNIST, the classifier's cache, this script and the
#   commit it was prepared at into .data/)
# There, carrying [".data"]: bash .data/gpu.sh   (timeout_s ~420; ~330 s by the figures above; each step's files
#   are in $OUT/next.tgz as soon as it ends, so a call cut short keeps what it did)
# Then, only if the search kept something and the machine is still warm (within 30 s; the first call's files are
#   in /tmp/o-next there): bash .data/gpu.sh again   (timeout_s ~240: a second pass of the search from what the
#   first found, ~130 s, and the two searched tables against each other, ~50 s)
set -u
if [ "${1:-}" = prepare ]; then
  mkdir -p .data/cache && cp ../shared/data/mnist/*-ubyte.gz .data/ && cp docs/prepared/gpu.sh .data/gpu.sh &&
    git log --oneline -1 > .data/commit.txt || exit 1
  cp "${MINIGAN_CACHE:-$HOME/.cache/minigan}"/mnist-classifier-*.npz .data/cache/ 2>/dev/null ||
    ls .data/cache/mnist-classifier-*.npz > /dev/null || echo "gpu.sh: no classifier in .data/cache: FID retrains it" >&2
  exit
fi
for v in /opt/*/.venv; do [ -x "$v/bin/python" ] && PATH=$v/bin:$PATH; done; export PATH
t0=$SECONDS
export PYTHONPATH=$PWD MINIGAN_CACHE=/tmp/mc MINIGAN_DATA=$PWD/.data
ab() {  # benchmark.py --tiles with each of the files given, in turns, twice: $1 the log, then the files
  local log=$1; shift
  for tiles in "$@" "$@"; do
    echo "== $tiles" >> "$log"
    timeout 40 python examples/benchmark.py --backend cupy --steps 100 --tiles "$tiles" >> "$log" 2>&1
    echo "exit status $?" >> "$log"; stamp "benchmark $(basename "$tiles")"
  done
}
if [ "${1:-}" = again ]; then
  O=/tmp/o-next/again; mkdir -p "$O"
  stamp() { echo "$1: $((SECONDS - t0)) s" >> "$O/run.txt"; }
  save() { tar -czf "$OUT/again.tgz" -C "$O" .; }
  timeout 240 python examples/search_tiles.py --start /tmp/o-next/searched.jsonl --out "$O/searched2.jsonl" > "$O/search2.txt" 2>&1
  echo "exit status $?" >> "$O/search2.txt"; stamp search2; save
  ab "$O/tiles2.txt" /tmp/o-next/searched.jsonl "$O/searched2.jsonl"; save
  exit
fi
O=/tmp/o-next; rm -rf "$O"; mkdir -p "$O"
stamp() { echo "$1: $((SECONDS - t0)) s" >> "$O/run.txt"; }
save() { tar -czf "$OUT/next.tgz" -C "$O" .; }
cp .data/gpu.sh .data/commit.txt "$O/"
mkdir -p /tmp/mc && cp .data/cache/*.npz /tmp/mc/ 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$O/gpu.txt" 2>&1
timeout 150 python -c 'from minigan import cupy_backend; cupy_backend.compile_kernels()' > "$O/compile.txt" 2>&1
stamp compile
# the search, from minigan/tiles/NVIDIA-H200.jsonl (the default); searched.jsonl is written after every kept trial
timeout 240 python examples/search_tiles.py --out "$O/searched.jsonl" > "$O/search.txt" 2>&1
echo "exit status $?" >> "$O/search.txt"; stamp search; save
# what the search found, against where it started: the same step, each process's tiles from one file, none timed
ab "$O/tiles.txt" minigan/tiles/NVIDIA-H200.jsonl "$O/searched.jsonl"; save
timeout 120 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_cupy.py > "$O/pytest.txt" 2>&1
echo "exit status $?" >> "$O/pytest.txt"; stamp pytest; save
timeout 40 python examples/train_mnist.py --backend cupy --data-dir .data --out /tmp/r50 > "$O/train-cupy-50.txt" 2>&1
stamp train
timeout 40 python examples/evaluate.py --checkpoint /tmp/r50 --data-dir .data --backend cupy --out "$O/evaluation.json" > "$O/evaluate.txt" 2>&1
cp /tmp/r50/metrics.jsonl "$O/metrics.jsonl"; cp /tmp/r50/samples/epoch_050.png "$O/epoch_050.png"
stamp evaluate; save
