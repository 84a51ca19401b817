# session 18, call 1: main (285ea9d) against 544682c (split products keep 7 tiles' splits per SM, not 8), 03c99f6
# (+ 10 replays a tuning trial) and 18f957d (+ a second tuning pass), three processes each; then the GPU tests,
# the 50 epochs and FID of 544682c and of main; bench_gemm.py of main.
set -u
for v in /opt/*/.venv; do [ -x "$v/bin/python" ] && PATH=$v/bin:$PATH; done; export PATH
t0=$SECONDS; O=/tmp/o; rm -rf $O; mkdir -p $O; stamp() { echo "$1: $((SECONDS - t0)) s" >> "$O/run.txt"; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $O/gpu.txt 2>&1
cp .data/gpu7.sh $O/
OUT=$O LIMIT=100 STEPS=100 ROUNDS=3 LAUNCH=0 TESTS=0 GEMM=0 timeout 400 bash .ci/gpu-compare run >> "$O/run.txt" 2>&1
stamp compare
tar -czf $OUT/run.tgz -C $O .
export MINIGAN_CACHE=/tmp/mc; mkdir -p /tmp/mc; cp .data/cache/*.npz /tmp/mc/
for t in 544682c 285ea9d; do
  (cd .variants/$t && PYTHONPATH=$PWD timeout 70 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_cupy.py) > $O/pytest-$t.txt 2>&1
  stamp "pytest $t"
  (cd .variants/$t && PYTHONPATH=$PWD timeout 40 python examples/train_mnist.py --backend cupy --data-dir ../../.data --out /tmp/r50-$t) > $O/train-cupy-50-$t.txt 2>&1
  stamp "train $t"
  (cd .variants/$t && PYTHONPATH=$PWD timeout 40 python examples/evaluate.py --checkpoint /tmp/r50-$t --data-dir ../../.data --backend cupy --out $O/evaluation-$t.json) > $O/evaluate-$t.txt 2>&1
  cp /tmp/r50-$t/metrics.jsonl $O/metrics-$t.jsonl; cp /tmp/r50-$t/samples/epoch_050.png $O/epoch_050-$t.png
  stamp "evaluate $t"
  tar -czf $OUT/run.tgz -C $O .
done
(cd .variants/285ea9d && PYTHONPATH=$PWD timeout 30 python examples/bench_gemm.py) > $O/gemm.txt 2>&1; stamp gemm
tar -czf $OUT/run.tgz -C $O .
