#!/usr/bin/env bash
# test_tokenizer_diff.sh - the C tokenizer against an independent reference on prompts
# nobody chose: tests/golden/tokenizer_ref.py (Python, written from tokenizer.json, with
# another regex engine and another Unicode library) is first checked against the
# transformers ids of vectors/tokenizer_golden.json, then both encode the same generated
# prompts (fixed hard cases: scripts, combining marks, NFC pairs, emoji sequences, control
# and space characters, contractions in upper case, special-token text, prompts cut at 512
# ids; then random mixes) and every line of ids must be equal. `zimage tokenize
# --prompts-file` runs them with one load of the tokenizer. ZI_TOKDIFF_N sets how many
# prompts (default 2000); the golden set is ZI_GOLDEN_DIR's when set, like the C tests'.
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "$0")/../lib.sh"

ZI_BINARY=${ZI_BINARY:?ZI_BINARY is not set (ctest sets it)}
ZI_SOURCE_DIR=${ZI_SOURCE_DIR:?ZI_SOURCE_DIR is not set (ctest sets it)}
zt_require_tools python3
python3 -c 'import regex' 2>/dev/null ||
    zt_die "python3-regex is not installed (deploy/local/install-deps.sh)"
ref=$ZI_SOURCE_DIR/tests/golden/tokenizer_ref.py
set_dir=${ZI_GOLDEN_DIR:-$ZI_SOURCE_DIR/tests/golden/data}
n=${ZI_TOKDIFF_N:-2000}
zt_scratch tokdiff
tmp=$ZT_TMP

# The checkpoint folder: tiny-zimage/ when the set has one, else its one subfolder with a
# model_index.json (as zi_test_model() finds it).
model=$set_dir/tiny-zimage
if [[ ! -f $model/model_index.json ]]; then
    mapfile -t found < <(find "$set_dir" -mindepth 2 -maxdepth 2 -name model_index.json)
    ((${#found[@]} == 1)) || zt_die "$set_dir: ${#found[@]} checkpoint folders, want 1"
    model=$(dirname "${found[0]}")
fi
tokjson=$model/tokenizer/tokenizer.json

# 1. The reference is trusted only where it reproduces transformers.
python3 "$ref" check "$tokjson" "$set_dir/vectors/tokenizer_golden.json"

# 2. The same prompts through both.
python3 "$ref" prompts "$n" 2026 >"$tmp/prompts.jsonl"
zt_check "prompts generated" "$n" "$(grep -c '' "$tmp/prompts.jsonl")"
python3 "$ref" encode "$tokjson" <"$tmp/prompts.jsonl" >"$tmp/want.jsonl"
"$ZI_BINARY" tokenize --model "$model" --prompts-file "$tmp/prompts.jsonl" >"$tmp/got.jsonl"
python3 - "$tmp/prompts.jsonl" "$tmp/want.jsonl" "$tmp/got.jsonl" >"$tmp/report" <<'EOF'
import json, sys
prompts, want, got = ([json.loads(l) for l in open(f, encoding="utf-8")] for f in sys.argv[1:])
bad = 0
for p, w, g in zip(prompts, want, got):
    g_ids = g["ids"]
    if g_ids != w or g["n"] != len(g_ids):
        bad += 1
        i = next((k for k, (a, b) in enumerate(zip(g_ids, w)) if a != b), min(len(g_ids), len(w)))
        if bad <= 10:
            print("differs: %r at id %d: zimage %s, reference %s"
                  % (p[:60], i, g_ids[i:i + 4], w[i:i + 4]), file=sys.stderr)
cut = sum(len(w) == 512 for w in want)
print("lines %d %d %d" % (len(prompts), len(want), len(got)))
print("differ %d" % bad)
print("cut %d" % cut)
EOF
zt_check "one line of ids per prompt" "lines $n $n $n" "$(grep '^lines' "$tmp/report")"
zt_check "prompts where zimage and the reference differ" "differ 0" \
    "$(grep '^differ' "$tmp/report")"
zt_check "some prompts are cut at 512 ids" yes \
    "$(awk '/^cut/ { print ($2 > 0) ? "yes" : "no" }' "$tmp/report")"

zt_finish
