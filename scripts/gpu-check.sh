#!/usr/bin/env bash
# gpu-check.sh: the CUDA issue's check on a machine with one GPU, in under 8 minutes. It builds with CUDA
# (or takes a build folder made elsewhere), runs every CUDA test binary and the whole-model tests that
# compare the CUDA backend with the CPU (engine/*backend*: its ops, the model, the engine on it), runs the
# GPU benchmark, then reruns the CUDA tests under compute-sanitizer's memcheck, and writes a short markdown
# report: the GPU, each test's result and time, the benchmark's figures, and the tail of the log of every
# test that failed. Test binaries are run directly (not through ctest), so a build folder copied from
# another path still works; exit code 77 is "skipped", as in CTest.
# The borrowed GPU machine kills a command at 10 minutes, so nothing waits for the end: the report's header
# is written first, each result row is echoed and appended as its test finishes, the slowest and least
# needed step (memcheck) runs last, steps not started by --deadline are recorded as "not run (deadline)",
# and an EXIT trap appends the failed logs and a closing line, which says when the run was cut short.
#
#   scripts/gpu-check.sh --report gpu-report.md                     # configure + build in build-gpu-check
#   scripts/gpu-check.sh --build-dir build-cuda2 --report out.md    # use a prebuilt folder (no compiler)
#   scripts/gpu-check.sh --build-dir build-cuda2 --stage gpu-stage  # here: pack what a GPU machine without
#       the Debian libraries needs (stripped test and bench binaries, their non-CUDA shared libraries, the
#       tokenizer), small enough to carry; there: scripts/gpu-check.sh --build-dir gpu-stage --libs
#       gpu-stage/libs --tokenizer-dir gpu-stage/tokenizer --report out.md
#   options: --bench-args "--preset small"  (default: the Qwen3-30B-A3B shape)
#            --libs DIR   (shared libraries the prebuilt binaries need, put on LD_LIBRARY_PATH)
#            --tokenizer-dir DIR  (Qwen3's tokenizer.json + tokenizer_config.json, for a prebuilt folder whose
#                          compiled-in tokenizer path does not exist here; the tiny test model needs them)
#            --jobs N     (build parallelism, default: all cores)
#            --deadline SECONDS  (default 450, counted from the start, build included: no step starts after
#                          it, and no test's or the build's timeout (300 s a test, 240 s the bench) reaches
#                          past it; leaves room under a 10-minute limit)
#            --no-sanitize  (skip the second run of each CUDA test under compute-sanitizer's memcheck, which
#                          catches out-of-bounds and misaligned device accesses the results alone can hide)
# Exit status: 0 when no test failed and none was left unrun (skips allowed), 1 otherwise; 2 for bad usage.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir=""
report=""
bench_args=""
libs=""
tokenizer_dir=""
stage=""
jobs="$(nproc)"
sanitize=1
deadline=450
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-dir) build_dir="$2"; shift 2 ;;
    --report) report="$2"; shift 2 ;;
    --bench-args) bench_args="$2"; shift 2 ;;
    --libs) libs="$2"; shift 2 ;;
    --tokenizer-dir) tokenizer_dir="$2"; shift 2 ;;
    --stage) stage="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --deadline) deadline="$2"; shift 2 ;;
    --no-sanitize) sanitize=0; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown option $1" >&2; exit 2 ;;
  esac
done
if ! [[ "$deadline" =~ ^[0-9]+$ ]]; then
  echo "gpu-check: --deadline takes whole seconds" >&2
  exit 2
fi
if [[ -n "$stage" ]]; then
  if [[ -z "$build_dir" || ! -e "$build_dir/CMakeCache.txt" ]]; then
    echo "gpu-check: --stage needs --build-dir" >&2
    exit 2
  fi
  mkdir -p "$stage/tests" "$stage/bench" "$stage/libs" "$stage/tokenizer"
  cp "$build_dir/CMakeCache.txt" "$stage/"
  bins=()
  for b in "$build_dir"/tests/cuda_* "$build_dir"/tests/engine_*backend*_test \
           "$build_dir/bench/gpu_decode_bench"; do
    [[ -x "$b" && -f "$b" ]] || continue
    dest="$stage/$(basename "$(dirname "$b")")/$(basename "$b")"
    strip -o "$dest" "$b" && bins+=("$dest")
  done
  # Shared libraries other than glibc's and CUDA's (the GPU machine has those).
  ldd "${bins[@]}" 2>/dev/null | awk '/=>/ {print $3}' | sort -u |
    grep -v -E '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*)\.so|libcu|libnccl|libnv' |
    while read -r lib; do cp -L "$lib" "$stage/libs/"; done
  tok="$(sed -n 's/^AGENTSERVE_TOKENIZER_DIR:PATH=//p' "$build_dir/CMakeCache.txt")"
  [[ -n "$tok" ]] && cp "$tok"/tokenizer.json "$tok"/tokenizer_config.json "$stage/tokenizer/" 2>/dev/null
  echo "gpu-check: staged $(du -sh "$stage" | cut -f1) in $stage"
  exit 0
fi
if [[ -z "$report" ]]; then
  echo "gpu-check: --report PATH is required" >&2
  exit 2
fi
report="$(realpath -m "$report")"
logs="$(mktemp -d)"
started=$(date +%s)
if [[ -n "$libs" ]]; then
  export LD_LIBRARY_PATH="$(realpath "$libs")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export PATH="/usr/local/cuda/bin:$PATH"

build_note=""
if [[ -z "$build_dir" ]]; then
  build_dir="$repo/build-gpu-check"
  targets="agentserve gpu_decode_bench"
  if ! cmake -S "$repo" -B "$build_dir" -G Ninja -DAGENTSERVE_CUDA=ON >"$logs/configure.log" 2>&1; then
    build_note="configure failed (log below)"
  else
    # Every CUDA test and the backend tests; their names come from the sources, as CMake globs them.
    for src in "$repo"/tests/cuda/*_test.cpp; do targets+=" cuda_$(basename "$src" .cpp)"; done
    for src in "$repo"/tests/engine/*backend*_test.cpp; do
      [[ -e "$src" ]] && targets+=" engine_$(basename "$src" .cpp)"
    done
    targets+=" cuda_device_check"
    # shellcheck disable=SC2086
    timeout "$(( deadline > 1 ? deadline : 1 ))" ninja -C "$build_dir" -j "$jobs" $targets \
      >"$logs/build.log" 2>&1
    case $? in
      0) ;;
      124) build_note="build failed: stopped at the deadline (log below)" ;;
      *) build_note="build failed (log below)" ;;
    esac
  fi
fi
build_dir="$(realpath "$build_dir")"

# Binaries built on another machine carry that machine's source path (AGENTSERVE_SOURCE_DIR, the tiny model's
# agentserve binary): point that path at this checkout when it is missing here.
built_src="$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build_dir/CMakeCache.txt" 2>/dev/null)"
if [[ -n "$built_src" && ! -e "$built_src" ]]; then
  mkdir -p "$(dirname "$built_src")" && ln -s "$repo" "$built_src" 2>/dev/null &&
    build_note+="${build_note:+; }linked $built_src to $repo"
fi
old_build="$(sed -n 's/^CMAKE_CACHEFILE_DIR:INTERNAL=//p' "$build_dir/CMakeCache.txt" 2>/dev/null)"
if [[ -n "$old_build" && "$old_build" != "$build_dir" && ! -e "$old_build" ]]; then
  mkdir -p "$(dirname "$old_build")" && ln -s "$build_dir" "$old_build" 2>/dev/null &&
    build_note+="${build_note:+; }linked $old_build to $build_dir"
fi

# Shared libraries the binaries cannot find (libcublas, libnccl on a machine whose CUDA comes with Python
# wheels): look in the usual places and put the folders that hold them on LD_LIBRARY_PATH.
missing="$(for b in "$build_dir"/tests/cuda_* "$build_dir"/tests/engine_*backend* \
                    "$build_dir"/bench/gpu_decode_bench; do
  [[ -x "$b" ]] && ldd "$b" 2>/dev/null | awk '/not found/ {print $1}'
done | sort -u)"
for lib in $missing; do
  found="$(find /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/lib /usr/local/lib /opt -name "$lib" \
    2>/dev/null | head -1)"
  if [[ -n "$found" ]]; then
    export LD_LIBRARY_PATH="$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    build_note+="${build_note:+; }$lib from $(dirname "$found")"
  else
    build_note+="${build_note:+; }$lib not found"
  fi
done

built_tok="$(sed -n 's/^AGENTSERVE_TOKENIZER_DIR:PATH=//p' "$build_dir/CMakeCache.txt" 2>/dev/null)"
if [[ -n "$built_tok" && ! -e "$built_tok" && -n "$tokenizer_dir" ]]; then
  mkdir -p "$(dirname "$built_tok")" && ln -s "$(realpath "$tokenizer_dir")" "$built_tok" 2>/dev/null &&
    build_note+="${build_note:+; }linked $built_tok to $tokenizer_dir"
fi

gpu="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
gpu_present="$gpu"
[[ -z "$gpu" ]] && gpu="(nvidia-smi gave nothing)"

n_pass=0 n_fail=0 n_skip=0 n_late=0
finished=0
failed_logs="$logs/failed.md"
: >"$failed_logs"
remaining() { echo $(( started + deadline - $(date +%s) )); }
# Runs "$@" in folder $2 under `timeout $1`, in the background: bash runs a trap only between commands, and
# `wait` is where a TERM from the machine's limit gets in; the EXIT trap then stops the test (timeout passes
# the TERM on) instead of waiting for it.
child=""
bounded() {  # limit, folder, command...
  local limit="$1" dir="$2" rc
  shift 2
  (cd "$dir" && exec timeout "$limit" "$@") &
  child=$!
  wait "$child"
  rc=$?
  child=""
  return $rc
}
say() { echo "$*" | tee -a "$report"; }  # one line to stdout and to the report at once
table() { say ""; say "## $1"; say ""; say "| test | result | seconds |"; say "| --- | --- | --- |"; }
row() { say "| $1 | $2 | $3 |"; }

# The closing line, also when the run is cut short (the GPU machine's limit sends TERM, then KILL).
close_report() {
  local rc=$?
  [[ -n "$child" ]] && kill -TERM "$child" 2>/dev/null
  if [[ -s "$failed_logs" ]]; then
    echo >>"$report"
    echo "## Logs of failed tests" >>"$report"
    cat "$failed_logs" >>"$report"
  fi
  for f in configure build; do
    if [[ -e "$logs/$f.log" && "$build_note" == *"$f failed"* ]]; then
      { echo; echo "## $f log (tail)"; echo '```'; tail -n 40 "$logs/$f.log"; echo '```'; } >>"$report"
    fi
  done
  local how="complete"
  [[ $finished -eq 1 ]] || how="**cut short (exit $rc)**"
  echo >>"$report"
  say "- end: $how; $n_pass passed, $n_fail failed, $n_skip skipped, $n_late not run (deadline);" \
    "whole check $(( $(date +%s) - started )) s; report in $report"
}
trap close_report EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
trap 'exit 129' HUP

{
  echo "# GPU check"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC');" \
    "commit: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- GPU: $gpu"
  echo "- build: $build_dir${build_note:+ ($build_note)}"
  echo "- deadline: ${deadline} s from the start; $(remaining) s left when the tests began"
} >"$report"
cat "$report"

run_test() {  # name, binary [wrapper command...]
  local name="$1" bin="$2" t0 rc ms secs result log left limit
  shift 2
  log="$logs/${name//[\/ ()]/_}.log"
  if [[ ! -x "$bin" ]]; then
    row "$name" "not built" "-"
    n_fail=$((n_fail + 1))
    return
  fi
  left=$(remaining)
  if (( left < 5 )); then
    row "$name" "not run (deadline)" "-"
    n_late=$((n_late + 1))
    return
  fi
  limit=$(( left < 300 ? left : 300 ))
  t0=$(date +%s%N)
  bounded "$limit" "$(dirname "$bin")" "$@" "$bin" >"$log" 2>&1
  rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  secs="$((ms / 1000)).$(( (ms % 1000) / 100 ))"
  case $rc in
    0) result="passed"; n_pass=$((n_pass + 1)) ;;
    77) result="skipped: $(head -c 200 "$log" | tr '\n|' ' /')"; n_skip=$((n_skip + 1)) ;;
    124) result="**timed out ($limit s)**"; n_fail=$((n_fail + 1)) ;;
    *) result="**failed (exit $rc)**"; n_fail=$((n_fail + 1)) ;;
  esac
  row "$name" "$result" "$secs"
  if [[ $rc -ne 0 && $rc -ne 77 ]]; then
    printf '\n### %s\n\n```\n%s\n```\n' "$name" "$(tail -n 40 "$log")" >>"$failed_logs"
  fi
}

table "CUDA tests"
run_test cuda/device_check "$build_dir/tests/cuda_device_check"
for bin in "$build_dir"/tests/cuda_*_test; do
  [[ -e "$bin" ]] && run_test "cuda/$(basename "$bin" | sed 's/^cuda_//')" "$bin"
done
table "Engine backend tests (CUDA against CPU)"
for bin in "$build_dir"/tests/engine_*backend*_test; do
  [[ -e "$bin" ]] && run_test "engine/$(basename "$bin" | sed 's/^engine_//')" "$bin"
done

bench_bin="$build_dir/bench/gpu_decode_bench"
say ""
say "## gpu_decode_bench ${bench_args}"
say ""
left=$(remaining)
if [[ ! -x "$bench_bin" ]]; then
  say "(not built)"
elif (( left < 5 )); then
  say "not run (deadline)"
  n_late=$((n_late + 1))
else
  limit=$(( left < 240 ? left : 240 ))
  # shellcheck disable=SC2086
  bounded "$limit" "$build_dir/bench" "$bench_bin" $bench_args >"$logs/bench.log" 2>&1
  bench_rc=$?
  say '```'
  tee -a "$report" <"$logs/bench.log"
  [[ $bench_rc -eq 124 ]] && say "(timed out after $limit s)"
  [[ $bench_rc -ne 0 && $bench_rc -ne 124 ]] && say "(exit $bench_rc)"
  say '```'
fi

sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)"
if [[ $sanitize -eq 1 && -n "$sanitizer" && -n "$gpu_present" ]]; then
  table "CUDA tests under compute-sanitizer memcheck"
  for bin in "$build_dir"/tests/cuda_*_test; do
    # NCCL's proxy threads and IPC make memcheck slow and noisy; its kernels are NCCL's own.
    [[ "$bin" == *nccl* ]] && continue
    [[ -e "$bin" ]] && run_test "cuda/$(basename "$bin" | sed 's/^cuda_//') (memcheck)" "$bin" \
      "$sanitizer" --tool memcheck --error-exitcode 1 --print-limit 20
  done
fi

finished=1
if [[ $n_fail -eq 0 && $n_late -eq 0 && "$build_note" != *failed* ]]; then exit 0; fi
exit 1
