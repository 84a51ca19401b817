# Run 21 (session 25): main with Adam's and the running statistics' sums of products written as fmaf. One call.
set -u
for v in /opt/*/.venv; do [ -x "$v/bin/python" ] && PATH=$v/bin:$PATH; done; export PATH
t0=$SECONDS; O=/tmp/o-fma; rm -rf "$O"; mkdir -p "$O"; stamp() { echo "$1: $((SECONDS - t0)) s" >> "$O/run.txt"; }
save() { tar -czf "$OUT/fma.tgz" -C "$O" .; }
cp .data/fma.sh "$O/"; git log --oneline -1 > "$O/commit.txt" 2>&1
export MINIGAN_CACHE=/tmp/mc MINIGAN_DATA=$PWD/.data; mkdir -p /tmp/mc; cp .data/cache/*.npz /tmp/mc/
# main: every GPU test (the new rounding test of Adam among them)
PYTHONPATH=$PWD timeout 120 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_cupy.py > "$O/pytest-main.txt" 2>&1
echo "exit status $?" >> "$O/pytest-main.txt"; stamp pytest; save
# main before (12e2b35), under the new test: its element-by-element Adam should fail it (fused the other way)
old=.variants/12e2b35; cp tests/test_fused_step.py tests/test_cupy.py "$old/tests/"
(cd "$old" && PYTHONPATH=$PWD timeout 40 python -m pytest -q -p no:cacheprovider tests/test_cupy.py -k "round_with_fused") > "$O/pytest-before.txt" 2>&1
echo "exit status $?" >> "$O/pytest-before.txt"; stamp before; save
# run 20's tile sets: round 1's gave its four trees 0.331-0.335 ms, round 3's 0.368-0.380. The same tiles in
# alternating processes, none timed or tuned: is it the tiles or the hour?
R=docs/gpu-runs/2026-11-28-h200-20
for set in 1 3 1 3; do
  echo "== tiles-$set" >> "$O/tiles.txt"
  PYTHONPATH=$PWD timeout 40 python examples/benchmark.py --backend cupy --steps 100 --tiles "$R/tiles-$set.jsonl" >> "$O/tiles.txt" 2>&1
  echo "exit status $?" >> "$O/tiles.txt"; stamp "tiles-$set"
done
save
PYTHONPATH=$PWD timeout 40 python examples/train_mnist.py --backend cupy --data-dir .data --out /tmp/r50 > "$O/train-cupy-50.txt" 2>&1
stamp train
PYTHONPATH=$PWD timeout 40 python examples/evaluate.py --checkpoint /tmp/r50 --data-dir .data --backend cupy --out "$O/evaluation.json" > "$O/evaluate.txt" 2>&1
cp /tmp/r50/metrics.jsonl "$O/metrics.jsonl"; cp /tmp/r50/samples/epoch_050.png "$O/epoch_050.png"; stamp evaluate; save
PYTHONPATH=$PWD timeout 45 python examples/benchmark.py --backend cupy --compare-torch > "$O/benchmark.txt" 2>&1
stamp benchmark; save
