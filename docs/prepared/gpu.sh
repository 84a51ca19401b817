# Prepared for the next GPU session (written 2026-11-28, session 26): one call of ~150 s.
#   1. the kernels compiled (~15 s, so that each process below finds them in CuPy's cache);
#   2. main's GPU tests (~60 s): the searched tile table in effect;
#   3. the 50 epochs twice, each evaluated (~25 s each): the epoch-end files now written by minigan.fileio.FileWriter,
#      so the wall time after start-up should be the epochs' own time plus what the training thread does at each
#      epoch's end (the grid's pass of G, the snapshot's copies to the host), whatever the disk does;
#   4. benchmark.py --compare-torch twice (~20 s each): main's table beside torch-cuda-graph.
# Here, in the checkout: bash docs/prepared/gpu.sh prepare   (MNIST, the classifier's cache, this script and the
#   commit it was prepared at into .data/)
# There, carrying [".data"]: bash .data/gpu.sh   (timeout_s ~240; each step's files are in $OUT/next.tgz as soon
#   as it ends, so a call cut short keeps what it did)
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
O=/tmp/o-next; rm -rf "$O"; mkdir -p "$O"
stamp() { echo "$1: $((SECONDS - t0)) s" >> "$O/run.txt"; }
save() { tar -czf "$OUT/next.tgz" -C "$O" .; }
cp .data/gpu.sh .data/commit.txt "$O/"
mkdir -p /tmp/mc && cp .data/cache/*.npz /tmp/mc/ 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$O/gpu.txt" 2>&1
timeout 150 python -c 'from minigan import cupy_backend; cupy_backend.compile_kernels()' > "$O/compile.txt" 2>&1
stamp compile
timeout 120 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_cupy.py > "$O/pytest.txt" 2>&1
echo "exit status $?" >> "$O/pytest.txt"; stamp pytest; save
for i in 1 2; do
  timeout 40 python examples/train_mnist.py --backend cupy --data-dir .data --out /tmp/r50-$i > "$O/train-cupy-50-$i.txt" 2>&1
  stamp "train $i"
  timeout 40 python examples/evaluate.py --checkpoint /tmp/r50-$i --data-dir .data --backend cupy --out "$O/evaluation-$i.json" > "$O/evaluate-$i.txt" 2>&1
  cp /tmp/r50-$i/metrics.jsonl "$O/metrics-$i.jsonl"; stamp "evaluate $i"; save
done
cp /tmp/r50-1/samples/epoch_050.png "$O/epoch_050.png"
for i in 1 2; do
  timeout 60 python examples/benchmark.py --backend cupy --compare-torch > "$O/benchmark-$i.txt" 2>&1
  echo "exit status $?" >> "$O/benchmark-$i.txt"; stamp "benchmark $i"; save
done
