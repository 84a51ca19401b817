# session 17: 621391c (main + a later batch size takes the first one's tiles) against 5bfb5c2 (+ the graph's
# tuning tries 4 tiles within 30%), three processes each; 621391c's GPU tests; the first epoch of 4c14cd2 (main
# before) and 621391c, twice each; 621391c's 50 epochs, FID, profile, memcheck, racecheck over one tile test.
set -u
for v in /opt/*/.venv; do [ -x "$v/bin/python" ] && PATH=$v/bin:$PATH; done; export PATH
t0=$SECONDS; O=/tmp/o; mkdir -p $O; stamp() { echo "$1: $((SECONDS - t0)) s" >> "$O/run.txt"; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $O/gpu.txt 2>&1
read -r new tuned < <(tr '\n' ' ' < .variants/order)
base=$(cat .variants/base)
OUT=$O LIMIT=130 STEPS=100 ROUNDS=3 LAUNCH=0 TESTS=0 timeout 280 bash .ci/gpu-compare run >> "$O/run.txt" 2>&1
stamp compare
tar -czf $OUT/compare.tgz -C $O .
(cd ".variants/$new" && PYTHONPATH=$PWD timeout 100 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_cupy.py) > "$O/pytest-$new.txt" 2>&1
stamp "pytest $new"
export MINIGAN_CACHE=/tmp/mc; mkdir -p /tmp/mc; cp .data/cache/*.npz /tmp/mc/
for r in 1 2; do for t in $base $new; do
  (cd ".variants/$t" && PYTHONPATH=$PWD timeout 40 python examples/train_mnist.py --backend cupy --data-dir ../../.data \
     --epochs 1 --out /tmp/e1-$t-$r) > "$O/epoch1-$t-$r.txt" 2>&1
  cp /tmp/e1-$t-$r/metrics.jsonl "$O/epoch1-$t-$r.jsonl" 2>/dev/null
done; done
stamp epoch1
cd ".variants/$new"; export PYTHONPATH=$PWD
timeout 60 python examples/train_mnist.py --backend cupy --data-dir ../../.data --out /tmp/r50 > $O/train-cupy-50.txt 2>&1; stamp train
timeout 60 python examples/evaluate.py --checkpoint /tmp/r50 --data-dir ../../.data --backend cupy --out $O/evaluation.json > $O/evaluate.txt 2>&1; stamp evaluate
cp /tmp/r50/metrics.jsonl /tmp/r50/samples/epoch_050.png $O/
timeout 60 python examples/profile_step.py > $O/profile.txt 2>&1; stamp profile
timeout 100 compute-sanitizer --tool memcheck --error-exitcode 9 python examples/benchmark.py --backend cupy --steps 2 \
  --warmup 1 --repeats 1 --batch 64 > $O/memcheck.txt 2>&1; echo "memcheck rc $?" >> $O/run.txt; stamp memcheck
tar -czf $OUT/run.tgz -C $O .
timeout 90 compute-sanitizer --tool racecheck --error-exitcode 9 python -m pytest -q -p no:cacheprovider -m gpu \
  tests/test_cupy.py -k "gemm_tiles_on_the_gpu and 128-784-1024" > $O/racecheck.txt 2>&1; echo "racecheck rc $?" >> $O/run.txt
stamp racecheck
tar -czf $OUT/run.tgz -C $O .
