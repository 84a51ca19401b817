# Run 22, call 3 (session 26): main with the twice-searched table taken as minigan/tiles/NVIDIA-H200.jsonl.
#   1. the kernels compiled; 2. benchmark.py --compare-torch (same-run ratio with the new table);
#   3. the 50 epochs and FID-MNIST with it; 4. a third pass of the search and, if it kept a tile, an A/B;
#   5. bench_compile.py on the H200's 16 cores (never measured there).
set -u
for v in /opt/*/.venv; do [ -x "$v/bin/python" ] && PATH=$v/bin:$PATH; done; export PATH
t0=$SECONDS; O=/tmp/o3; rm -rf "$O"; mkdir -p "$O"; stamp() { echo "$1: $((SECONDS - t0)) s" >> "$O/run.txt"; }
save() { tar -czf "$OUT/third.tgz" -C "$O" .; }
export PYTHONPATH=$PWD MINIGAN_CACHE=/tmp/mc MINIGAN_DATA=$PWD/.data; mkdir -p /tmp/mc; cp .data/cache/*.npz /tmp/mc/
cp .data/gpu3.sh minigan/tiles/NVIDIA-H200.jsonl "$O/"
timeout 150 python -c 'from minigan import cupy_backend; cupy_backend.compile_kernels()' > "$O/compile.txt" 2>&1; stamp compile
timeout 60 python examples/benchmark.py --backend cupy --compare-torch > "$O/benchmark.txt" 2>&1
echo "exit status $?" >> "$O/benchmark.txt"; stamp benchmark; save
timeout 40 python examples/train_mnist.py --backend cupy --data-dir .data --out /tmp/r50 > "$O/train-cupy-50.txt" 2>&1; stamp train
timeout 40 python examples/evaluate.py --checkpoint /tmp/r50 --data-dir .data --backend cupy --out "$O/evaluation.json" > "$O/evaluate.txt" 2>&1
cp /tmp/r50/metrics.jsonl "$O/metrics.jsonl"; cp /tmp/r50/samples/epoch_050.png "$O/epoch_050.png"; stamp evaluate; save
timeout 150 python examples/search_tiles.py --out "$O/searched3.jsonl" > "$O/search3.txt" 2>&1
echo "exit status $?" >> "$O/search3.txt"; stamp search3; save
if [ -f "$O/searched3.jsonl" ]; then
  for tiles in minigan/tiles/NVIDIA-H200.jsonl "$O/searched3.jsonl" minigan/tiles/NVIDIA-H200.jsonl "$O/searched3.jsonl"; do
    echo "== $tiles" >> "$O/tiles3.txt"
    timeout 40 python examples/benchmark.py --backend cupy --steps 100 --tiles "$tiles" >> "$O/tiles3.txt" 2>&1
    echo "exit status $?" >> "$O/tiles3.txt"; stamp "benchmark $(basename "$tiles")"
  done; save
fi
timeout 70 python examples/bench_compile.py > "$O/bench_compile.txt" 2>&1
echo "exit status $?" >> "$O/bench_compile.txt"; stamp bench_compile; save
