# session 17, call 3: 621391c (main + the last batch takes the first batch size's tiles) against 5bfb5c2 (+ the
# graph's tuning tries 4 tiles within 30%), three processes each, again.
set -u; rm -rf /tmp/o
for v in /opt/*/.venv; do [ -x "$v/bin/python" ] && PATH=$v/bin:$PATH; done; export PATH
t0=$SECONDS; O=/tmp/o; mkdir -p $O; stamp() { echo "$1: $((SECONDS - t0)) s" >> "$O/run.txt"; }
OUT=$O LIMIT=100 STEPS=100 ROUNDS=3 LAUNCH=0 TESTS=0 timeout 230 bash .ci/gpu-compare run >> "$O/run.txt" 2>&1
stamp compare
tar -czf $OUT/compare.tgz -C $O .
