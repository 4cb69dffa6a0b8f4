#!/usr/bin/env bash
# bench_tokenizer.sh - builds bench/bench_tokenizer.c at -O2 (standalone, from the few
# pipeline sources it needs) and runs it: tokenizer load time and encode MB/s on one core.
# Usage: bench/bench_tokenizer.sh [TOKENIZER_DIR] [MB]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -I"$root/pipeline" \
  "$root/bench/bench_tokenizer.c" "$root/pipeline/tokenizer.c" "$root/pipeline/json_util.c" \
  "$root/pipeline/zi_err.c" $(pkg-config --cflags --libs libcjson libpcre2-8 libutf8proc) \
  -lpthread -o "$out/bench_tokenizer"
cd "$root"
# one core, as the target is stated per core
if command -v taskset >/dev/null; then
  taskset -c 0 "$out/bench_tokenizer" "$@"
  exit $?
fi
"$out/bench_tokenizer" "$@"
