# Prepared for the next GPU session (written 2026-11-28, sessions 19, 22, 23 and 24): main against three prepared
# trees of the step, three processes each, each round's with main's GEMM tiles, and against two trees of its
# kernels alone in one process each
# (examples/compare_kernels.py: the same tiles, alternating rounds, the same bits or not); the timeline
# (profile_step.py --timeline 50) of main and of three trees; the GPU tests, 50 epochs and FID-MNIST of
# exp/g-adam3, the GPU tests of Adam and the fused step in exp/l2-keep, and those of the BatchNorm GEMMs and the
# fused step in exp/bn-gemm.
# docs/prepared/exp-aside.mbox is three commits on main, each on the one before: its first and third are
# exp/real-half and exp/g-adam3, which give the same numbers as each other (checked on the CPU), not main's.
# docs/prepared/exp-prefetch.mbox is three commits on main: exp/l2-prefetch (the first two) and exp/l2-keep
# (all three), which give main's. docs/prepared/exp-bn.mbox is one commit on main, exp/bn-gemm, which gives main's
# numbers (checked on the CPU).
#   exp/real-half    D's backward over the real rows on the side stream, beside G's forward pass
#   (exp/both        + the step's counters and its next noise off the critical path: not timed on its own)
#   exp/g-adam3      + Adam over G's layers 1 and 2 beside the end of G's backward pass
#   exp/l2-prefetch  main, each GEMM block and Adam asking L2 for their operands before the wait
#   exp/l2-keep      + Adam's g, m and v the first lines L2 gives up, the parameters the last
#   exp/bn-gemm      main, G's BatchNorms (forward and backward) run by the GEMM before them: 38 launches, not 44
# Here, in the checkout: bash docs/prepared/gpu.sh prepare
#   (the trees, from main and the three mboxes applied in a worktree of their own, into .variants/, all six listed
#   in .variants/trees and the four that benchmark.py times in .variants/order; MNIST, the classifier's cache and
#   this script into .data/)
# There, carrying [".data", ".variants"]:
#   call 1: bash .data/gpu.sh compare   (timeout_s ~540: ~50 s of compilation, the six trees at once; ~15 s a
#                                        compare_kernels.py process, 6 of them; ~25 s a benchmark process, 12 of
#                                        them: ~450 s)
#   call 2: bash .data/gpu.sh checks    (timeout_s ~360: ~45 s of GPU tests, ~20 s of Adam's and the fused
#                                        step's, ~30 s of the BatchNorm GEMMs' and the fused step's, ~20 s of 50
#                                        epochs, ~20 s of FID, then the timelines of main, exp/g-adam3,
#                                        exp/bn-gemm and exp/real-half, ~40 s each, which a call cut short loses
#                                        first: ~295 s)
set -u
if [ "${1:-}" = prepare ]; then
  work=$(mktemp -d) && git worktree add -q --detach "$work" main || exit 1
  git -C "$work" am -q "$PWD/docs/prepared/exp-aside.mbox" && all=$(git -C "$work" rev-parse --short HEAD) &&
    git -C "$work" checkout -q --detach main && git -C "$work" am -q "$PWD/docs/prepared/exp-prefetch.mbox" &&
    keep=$(git -C "$work" rev-parse --short HEAD) &&
    git -C "$work" checkout -q --detach main && git -C "$work" am -q "$PWD/docs/prepared/exp-bn.mbox" &&
    bn=$(git -C "$work" rev-parse --short HEAD)
  applied=$?
  git worktree remove --force "$work"
  [ $applied = 0 ] || { echo "gpu.sh: an mbox no longer applies to main" >&2; exit 1; }
  mkdir -p .data/cache && cp ../shared/data/mnist/*-ubyte.gz .data/ && cp docs/prepared/gpu.sh .data/gpu.sh || exit 1
  cp "${MINIGAN_CACHE:-$HOME/.cache/minigan}"/mnist-classifier-*.npz .data/cache/ 2>/dev/null ||
    ls .data/cache/mnist-classifier-*.npz > /dev/null || echo "gpu.sh: no classifier in .data/cache: FID retrains it" >&2
  bash .ci/gpu-compare prepare main "$all~2" "$all" "$bn" "$keep~1" "$keep" || exit 1
  # the kernel trees (exp/l2-prefetch, exp/l2-keep) are timed by compare_kernels.py against main's kernels, not
  # by benchmark.py in processes of their own
  mv .variants/order .variants/trees && head -n 4 .variants/trees > .variants/order
  exit
fi
for v in /opt/*/.venv; do [ -x "$v/bin/python" ] && PATH=$v/bin:$PATH; done; export PATH
t0=$SECONDS; O=/tmp/o-${1:-compare}; rm -rf "$O"; mkdir -p "$O"; stamp() { echo "$1: $((SECONDS - t0)) s" >> "$O/run.txt"; }
cp .data/gpu.sh "$O/"
read -r main real all bn prefetch keep < <(tr '\n' ' ' < .variants/trees)
timeline() {
  (cd ".variants/$1" && PYTHONPATH=$PWD timeout 60 python examples/profile_step.py --timeline 50) > "$O/profile-$1.txt" 2>&1
  stamp "profile $1"
}
case "${1:-compare}" in
  compare)
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$O/gpu.txt" 2>&1
    # the L2 that exp/l2-keep's hints act on: its size, and the persisting set-aside (0 unless a program sets one)
    python -c '
import cupy
props = cupy.cuda.runtime.getDeviceProperties(0)
print({k: props.get(k) for k in ("l2CacheSize", "persistingL2CacheMaxSize", "accessPolicyMaxWindowSize")},
      "persisting L2 limit:", cupy.cuda.runtime.deviceGetLimit(0x06))' >> "$O/gpu.txt" 2>&1
    # every tree's kernels at once, so that each process below finds them in CuPy's cache
    for t in "$main" "$real" "$all" "$bn" "$prefetch" "$keep"; do
      (cd ".variants/$t" && PYTHONPATH=$PWD timeout 150 python -c '
from minigan import cupy_backend
cupy_backend.compile_kernels()') > "$O/compile-$t.txt" 2>&1 &
    done
    wait
    stamp compile
    # the kernel trees against main's kernels (and exp/l2-keep against exp/l2-prefetch's, which it adds to), each in
    # one process: the same step and tiles, alternating rounds, and whether the bits are main's; main against
    # itself first, the spread of the method itself. A tree's tiles are its process's, so each comparison twice.
    kernels() {  # (~15 s a process)
      (cd ".variants/$1" && PYTHONPATH=$PWD timeout 40 python examples/compare_kernels.py "../$2" --rounds 15 --replays 400) >> "$O/kernels.txt" 2>&1
      local status=$?
      echo "exit status $status ($1 against $2)" >> "$O/kernels.txt"
      return $status
    }
    rounds=3
    if kernels "$main" "$main"; then
      for round in 1 2; do kernels "$main" "$prefetch"; kernels "$main" "$keep"; done
      kernels "$prefetch" "$keep"
    else  # compare_kernels.py did not run (its first GPU run): benchmark.py times the kernel trees too, as before
      printf '%s\n' "$prefetch" "$keep" >> .variants/order
      rounds=2  # six trees: three rounds would not fit the call
    fi
    stamp kernels
    tar -czf "$OUT/compare.tgz" -C "$O" .
    # the step trees, three rounds (two where the kernel trees joined them), each round's trees with main's tiles
    # (TILES=1: benchmark.py --tiles), so that a round compares the trees and not the tiles each process's timings
    # chose
    OUT=$O LIMIT=100 STEPS=100 ROUNDS=$rounds TILES=1 LAUNCH=0 TESTS=0 GEMM=0 timeout 480 bash .ci/gpu-compare run >> "$O/run.txt" 2>&1
    stamp compare
    tar -czf "$OUT/compare.tgz" -C "$O" . ;;
  checks)
    export MINIGAN_CACHE=/tmp/mc; mkdir -p /tmp/mc; cp .data/cache/*.npz /tmp/mc/
    t=$all
    (cd ".variants/$t" && PYTHONPATH=$PWD timeout 80 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_cupy.py) > "$O/pytest-$t.txt" 2>&1
    stamp "pytest $t"
    tar -czf "$OUT/checks.tgz" -C "$O" .
    # the hinted loads and stores run only on a GPU: Adam and the fused step against NumPy there
    (cd ".variants/$keep" && PYTHONPATH=$PWD timeout 60 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_cupy.py -k "adam or fused_steps or layer_path") > "$O/pytest-$keep.txt" 2>&1
    stamp "pytest $keep"
    # the BatchNorm run by the GEMMs' last block of a strip: bit for bit the BatchNorm kernels', with the blocks of a
    # strip really at once; the fused step against NumPy, its graph and its 38 launches
    (cd ".variants/$bn" && PYTHONPATH=$PWD timeout 90 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_cupy.py -k "batchnorm or fused_steps or captured_graph or profile") > "$O/pytest-$bn.txt" 2>&1
    stamp "pytest $bn"
    (cd ".variants/$t" && PYTHONPATH=$PWD timeout 40 python examples/train_mnist.py --backend cupy --data-dir ../../.data --out /tmp/r50-$t) > "$O/train-cupy-50-$t.txt" 2>&1
    stamp "train $t"
    (cd ".variants/$t" && PYTHONPATH=$PWD timeout 40 python examples/evaluate.py --checkpoint /tmp/r50-$t --data-dir ../../.data --backend cupy --out "$O/evaluation-$t.json") > "$O/evaluate-$t.txt" 2>&1
    cp /tmp/r50-$t/metrics.jsonl "$O/metrics-$t.jsonl"; cp /tmp/r50-$t/samples/epoch_050.png "$O/epoch_050-$t.png"
    stamp "evaluate $t"
    tar -czf "$OUT/checks.tgz" -C "$O" .
    # last, so that a call cut short loses only these (exp/l2-prefetch's and exp/l2-keep's timelines, and
    # bench_compile.py, left for a later run: session 24 gave their time to exp/bn-gemm)
    for t in "$main" "$all" "$bn" "$real"; do timeline "$t"; tar -czf "$OUT/checks.tgz" -C "$O" .; done ;;
esac
