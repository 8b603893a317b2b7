#!/usr/bin/env bash
# Durable event ingestion and check-in updates per second, on SQLite and on PostgreSQL.
#
#   bench/store.sh                 SQLite in a temporary folder, and PostgreSQL when
#                                  PORTICO_BENCH_POSTGRES_URL is set
#
# Builds portico-bench in release mode and runs its `store` command (16 writers of
# 100-event batches; 256 concurrent check-ins), printing one line per engine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
(cd "$root" && swift build -c release --product portico-bench >/dev/null)
bin="$root/.build/release/portico-bench"
work=$(mktemp -d /tmp/portico-store-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "data_dir: $work/data" > "$work/sqlite.yaml"
"$bin" store --config "$work/sqlite.yaml" "$@"
if [ -n "${PORTICO_BENCH_POSTGRES_URL:-}" ]; then
  printf 'data_dir: %s/data\nstorage:\n  postgres:\n    url: "%s"\n    pool_size: 8\n' "$work" "$PORTICO_BENCH_POSTGRES_URL" > "$work/postgres.yaml"
  "$bin" store --config "$work/postgres.yaml" "$@" | tail -1
fi
