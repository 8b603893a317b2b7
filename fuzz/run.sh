#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer and the address sanitizer, and runs one.
#   fuzz/run.sh --list             names the targets
#   fuzz/run.sh TARGET SECONDS     runs TARGET for SECONDS from its seed corpus (fuzz/corpus/TARGET)
#   fuzz/run.sh --all SECONDS      runs every target for SECONDS each (what .ci/run does)
# Extra libFuzzer options go in FUZZ_OPTIONS (e.g. FUZZ_OPTIONS="-runs=10000000"); FUZZ_CONFIG=debug
# builds without optimization (quicker to build, slower to run).
# New inputs the fuzzer finds go to .build-fuzz/corpus/TARGET, never into the committed seeds;
# a crash leaves its input in .build-fuzz/crashes/ and the run fails.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(http1 http2 proxy config agent replication api)

if [ "${1:-}" = "--list" ]; then
  printf '%s\n' "${targets[@]}"
  exit 0
fi

# Optimized (with the address sanitizer all the same): several times the executions per second
# of a debug build. The harnesses reach internal types, so the modules are built testable.
config=${FUZZ_CONFIG:-release}

build() {
  PORTICO_FUZZ=1 swift build -c "$config" --scratch-path .build-fuzz --product PorticoFuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -enable-testing -Xswiftc -g >&2
}

run() {
  local target=$1 seconds=$2
  local binary=.build-fuzz/$config/PorticoFuzz
  [ -d "fuzz/corpus/$target" ] || { echo "fuzz: no target $target (fuzz/run.sh --list)" >&2; exit 2; }
  mkdir -p ".build-fuzz/corpus/$target" .build-fuzz/crashes
  echo "fuzz: $target for ${seconds}s" >&2
  # The first corpus folder collects what is new; the seeds are read only.
  PORTICO_FUZZ_TARGET=$target ASAN_OPTIONS=detect_leaks=0 "$binary" \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=4096 \
    -artifact_prefix=".build-fuzz/crashes/$target-" ${FUZZ_OPTIONS:-} \
    ".build-fuzz/corpus/$target" "fuzz/corpus/$target"
}

case "${1:-}" in
  --all)
    build
    for target in "${targets[@]}"; do run "$target" "${2:-60}"; done
    ;;
  "" | -h | --help)
    sed -n 2,8p "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    build
    run "$1" "${2:-60}"
    ;;
esac
