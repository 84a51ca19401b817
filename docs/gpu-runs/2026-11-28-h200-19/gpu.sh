# session 18, call 2: main (285ea9d) against main + a second tuning pass and split-7 + a second pass, 3 processes each
set -u
for v in /opt/*/.venv; do [ -x "$v/bin/python" ] && PATH=$v/bin:$PATH; done; export PATH
t0=$SECONDS; O=/tmp/o; rm -rf $O; mkdir -p $O; stamp() { echo "$1: $((SECONDS - t0)) s" >> "$O/run.txt"; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $O/gpu.txt 2>&1
cp .data/gpu8.sh $O/
OUT=$O LIMIT=100 STEPS=100 ROUNDS=3 LAUNCH=0 TESTS=0 GEMM=0 timeout 300 bash .ci/gpu-compare run >> "$O/run.txt" 2>&1
stamp compare
tar -czf $OUT/run.tgz -C $O .
