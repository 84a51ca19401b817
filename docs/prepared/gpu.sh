# Prepared for the next GPU session (written 2026-11-28, session 18): main against main with the step's counters
# and next noise off the critical path (docs/prepared/exp-counters-aside.mbox), three processes each; then the
# branch's GPU tests and 50 epochs (every loss of every epoch should equal run 11's: the same numbers), and
# profile_step.py --timeline 50 in both trees (each launch in the replayed graph, from torch's profiler).
# Here:  git checkout -B exp/counters-aside main && git am docs/prepared/exp-counters-aside.mbox && git checkout main
#        bash .ci/gpu-compare prepare main exp/counters-aside && cp docs/prepared/gpu.sh .data/gpu.sh
# There: bash .data/gpu.sh   (carry [".data", ".variants"]; timeout_s ~560: ~30 s of compilation, ~25 s a
#        benchmark process, ~45 s of GPU tests, ~20 s of 50 epochs, ~40 s a profile)
set -u
for v in /opt/*/.venv; do [ -x "$v/bin/python" ] && PATH=$v/bin:$PATH; done; export PATH
t0=$SECONDS; O=/tmp/o; rm -rf $O; mkdir -p $O; stamp() { echo "$1: $((SECONDS - t0)) s" >> "$O/run.txt"; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $O/gpu.txt 2>&1
cp .data/gpu.sh $O/
read -r base branch < <(tr '\n' ' ' < .variants/order)
OUT=$O LIMIT=100 STEPS=100 ROUNDS=3 LAUNCH=0 TESTS=0 GEMM=0 timeout 240 bash .ci/gpu-compare run >> "$O/run.txt" 2>&1
stamp compare
tar -czf $OUT/run.tgz -C $O .
for t in $branch $base; do
  (cd .variants/$t && PYTHONPATH=$PWD timeout 60 python examples/profile_step.py --timeline 50) > $O/profile-$t.txt 2>&1
  stamp "profile $t"
done
tar -czf $OUT/run.tgz -C $O .
export MINIGAN_CACHE=/tmp/mc; mkdir -p /tmp/mc; cp .data/cache/*.npz /tmp/mc/
(cd .variants/$branch && PYTHONPATH=$PWD timeout 70 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_cupy.py) > $O/pytest-$branch.txt 2>&1
stamp "pytest $branch"
(cd .variants/$branch && PYTHONPATH=$PWD timeout 40 python examples/train_mnist.py --backend cupy --data-dir ../../.data --out /tmp/r50) > $O/train-cupy-50.txt 2>&1
stamp train
cp /tmp/r50/metrics.jsonl $O/ 2>/dev/null
tar -czf $OUT/run.tgz -C $O .
