#!/usr/bin/env bash
# test_cli_robustness.sh - bad inputs to the service-free commands (tokenize, encode,
# generate, bench) give one "zimage: error:" line on stderr, the contract's exit status
# (2 usage or configuration error, 1 other) and no sanitizer report (this runs in the ASan
# build, where a crash, a terabyte calloc or a leak adds lines to stderr). Each case once
# failed: a missing --model exiting 1 (bench), config errors exiting 1, absurd layer counts
# aborting in calloc, invalid UTF-8 to encode exiting 1. Checkpoint variants are copies of
# tests/golden/data/tiny-zimage with the weight files symlinked, so the test stays fast.
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "$0")/../lib.sh"

ZI_BINARY=${ZI_BINARY:?ZI_BINARY is not set (ctest sets it)}
ZI_SOURCE_DIR=${ZI_SOURCE_DIR:?ZI_SOURCE_DIR is not set (ctest sets it)}
golden=$ZI_SOURCE_DIR/tests/golden/data/tiny-zimage
zt_scratch clirobust
tmp=$ZT_TMP

# expect NAME STATUS ARGS...: exit STATUS, exactly one stderr line, starting "zimage: error:".
expect() {
    local name=$1 want=$2 rc=0
    shift 2
    "$ZI_BINARY" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    zt_check "$name: exit" "$want" "$rc"
    zt_check "$name: one stderr line" 1 "$(grep -c '' "$tmp/err")"
    zt_check "$name: zimage: error: line" yes \
        "$(grep -q '^zimage: error: ' "$tmp/err" && echo yes || echo no)"
}

# ckpt NAME: a checkpoint copy whose JSON files are real copies and weights symlinks.
ckpt() {
    local d=$tmp/$1 f
    mkdir -p "$d"
    (cd "$golden" && find . -type d) | while read -r f; do mkdir -p "$d/$f"; done
    (cd "$golden" && find . -type f) | while read -r f; do
        case $f in
        *.json) cp "$golden/$f" "$d/$f" ;;
        *) ln -s "$golden/$f" "$d/$f" ;;
        esac
    done
    echo "$d"
}
# setkey FILE KEY JSON-VALUE: rewrites one top-level key of a config file.
setkey() {
    python3 - "$1" "$2" "$3" <<'PY'
import json, sys
p, k, v = sys.argv[1], sys.argv[2], sys.argv[3]
c = json.load(open(p))
c[k] = json.loads(v)
json.dump(c, open(p, "w"))
PY
}

gen() { # MODEL [ARGS...]: a tiny CPU generate
    local m=$1
    shift
    expect "$GEN_NAME" "$GEN_WANT" generate --model "$m" --prompt "a cat" --output "$tmp/o.png" \
        --width 64 --height 64 --steps 1 --seed 1 --backend cpu --quiet "$@"
}
bench() { # MODEL: a tiny CPU bench
    expect "$GEN_NAME (bench)" "$GEN_WANT" bench --model "$1" --backend cpu --runs 1 --steps 1 \
        --width 64 --height 64 --size 64 --small-size 64 --small-steps 1 --tokens 8
}

# --model that is not a checkpoint folder: usage error (exit 2) for every command.
mkdir -p "$tmp/empty"
for m in /nonexistent/zimage-model /etc/hostname; do
    expect "tokenize --model $m" 2 tokenize --model "$m" --prompt cat
    expect "encode --model $m" 2 encode --model "$m" --prompt cat --output "$tmp/e.st"
    GEN_NAME="generate --model $m" GEN_WANT=2 gen "$m"
    GEN_NAME="bench --model $m" GEN_WANT=2 bench "$m"
done
GEN_NAME="generate empty folder" GEN_WANT=2 gen "$tmp/empty"
GEN_NAME="bench empty folder" GEN_WANT=2 bench "$tmp/empty"
expect "bench --config nonexistent" 2 bench --random-weights --config /nonexistent/x --backend cpu

# tokenizer.json missing: encode calls it a configuration error; tokenize, which loads
# nothing else, a failure to load (1).
d=$(ckpt notok)
rm "$d/tokenizer/tokenizer.json"
expect "tokenize without tokenizer.json" 1 tokenize --model "$d" --prompt cat
expect "encode without tokenizer.json" 2 encode --model "$d" --prompt cat --output "$tmp/e.st"

# Broken config files: exit 2, before any weight is read.
d=$(ckpt badjson)
printf '{"dim": ' >"$d/transformer/config.json"
GEN_NAME="generate transformer config not JSON" GEN_WANT=2 gen "$d"
GEN_NAME="bench transformer config not JSON" GEN_WANT=2 bench "$d"
d=$(ckpt nokey)
python3 -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); del c['n_heads']; json.dump(c,open(p,'w'))" \
    "$d/transformer/config.json"
GEN_NAME="generate transformer config without n_heads" GEN_WANT=2 gen "$d"
d=$(ckpt heads)
setkey "$d/transformer/config.json" n_heads 3
GEN_NAME="generate n_heads not dividing dim" GEN_WANT=2 gen "$d"

# Absurd layer counts must fail in the config check, not as a terabyte calloc.
d=$(ckpt ditlayers)
setkey "$d/transformer/config.json" n_layers 1000000000
GEN_NAME="generate n_layers 1e9" GEN_WANT=2 gen "$d"
zt_check "n_layers 1e9 names the key" yes "$(grep -q 'n_layers' "$tmp/err" && echo yes || echo no)"
d=$(ckpt telayers)
setkey "$d/text_encoder/config.json" num_hidden_layers 1000000000
expect "encode num_hidden_layers 1e9" 2 encode --model "$d" --prompt cat --output "$tmp/e.st" \
    --backend cpu
zt_check "num_hidden_layers 1e9 names the key" yes \
    "$(grep -q 'num_hidden_layers' "$tmp/err" && echo yes || echo no)"
d=$(ckpt vaelayers)
setkey "$d/vae/config.json" layers_per_block 1000000000
GEN_NAME="generate vae layers_per_block 1e9" GEN_WANT=2 gen "$d"

# A prompt that is not UTF-8 is a usage error for every command.
expect "tokenize invalid UTF-8" 2 tokenize --model "$golden" --prompt $'a\xff'
expect "encode invalid UTF-8" 2 encode --model "$golden" --prompt $'a\xe2\x82' \
    --output "$tmp/e.st" --backend cpu
expect "generate invalid UTF-8" 2 generate --model "$golden" --prompt $'a\xff' \
    --output "$tmp/o.png"

# tokenize --prompts-file: a bad line is a usage error naming the file and line; the lines
# before it are still printed.
printf '"a cat"\n' >"$tmp/ok.jsonl"
expect "tokenize --prompt and --prompts-file" 2 tokenize --model "$golden" --prompt cat \
    --prompts-file "$tmp/ok.jsonl"
expect "tokenize --prompts-file missing" 1 tokenize --model "$golden" \
    --prompts-file "$tmp/none.jsonl"
bad_line() { # NAME LINE2: line 1 is fine, line 2 is LINE2
    printf '"first"\n%s\n"third"\n' "$2" >"$tmp/bad.jsonl"
    expect "tokenize --prompts-file $1" 2 tokenize --model "$golden" \
        --prompts-file "$tmp/bad.jsonl"
    zt_check "tokenize --prompts-file $1: names line 2" yes \
        "$(grep -q 'bad.jsonl:2: ' "$tmp/err" && echo yes || echo no)"
    zt_check "tokenize --prompts-file $1: line 1 printed" 1 "$(grep -c '"ids"' "$tmp/out")"
}
bad_line "bare text" 'a cat'
bad_line "a number" '42'
bad_line "two strings" '"a" "b"'
bad_line "escaped NUL" '"a\u0000b"'
bad_line "raw control byte" $'"a\x01b"'
bad_line "invalid UTF-8" $'"a\xffb"'
bad_line "empty line" ''
printf '"a cat"\n"a\\nnew line"\n""\n' | "$ZI_BINARY" tokenize --model "$golden" \
    --prompts-file - >"$tmp/out"
zt_check "tokenize --prompts-file -: a line per prompt" 3 "$(grep -c '"ids"' "$tmp/out")"
zt_check "tokenize --prompts-file: same ids as --prompt" \
    "$("$ZI_BINARY" tokenize --model "$golden" --prompt 'a cat')" "$(head -n 1 "$tmp/out")"

# Every command's usage error ends by pointing at that command's --help (docs/contract.md).
for c in tokenize encode generate bench submit status worker top devbroker dlq "dlq list" \
    "dlq replay"; do
    # shellcheck disable=SC2086 # "dlq list" is two words on purpose
    expect "$c --bogus" 2 $c --bogus
    zt_check "$c --bogus: points at its --help" yes \
        "$(grep -q "(.*see 'zimage ${c%% *} --help')\$" "$tmp/err" && echo yes || echo no)"
done

# The same for a missing or unknown subcommand of dlq, and at the top level (zimage --help).
expect "dlq (no subcommand)" 2 dlq
zt_check "dlq (no subcommand): names both and points at its --help" yes \
    "$(grep -q "list or replay (see 'zimage dlq --help')\$" "$tmp/err" && echo yes || echo no)"
expect "dlq purge" 2 dlq purge
zt_check "dlq purge: names it and points at its --help" yes \
    "$(grep -q "'purge'.* (see 'zimage dlq --help')\$" "$tmp/err" && echo yes || echo no)"
for c in "" bogus; do
    # shellcheck disable=SC2086 # no argument at all for ""
    expect "zimage $c" 2 $c
    zt_check "zimage $c: points at zimage --help" yes \
        "$(grep -q "(see 'zimage --help')\$" "$tmp/err" && echo yes || echo no)"
done

# An option's value missing at the end of the line is a usage error with the hint, for every
# command; and every option that takes a value also reads it from --name=value (the value is
# used: a bad one is named in the error). Both once failed for top, dlq, bench, devbroker.
for c in "tokenize --model" "encode --model" "generate --model" "bench --model" \
    "submit --prompt" "status --config" "worker --config" "top --config" "devbroker --topic" \
    "dlq list --config" "dlq replay --config"; do
    # shellcheck disable=SC2086 # each case is several words on purpose
    expect "$c (no value)" 2 $c
    zt_check "$c (no value): points at its --help" yes \
        "$(grep -q "(.*see 'zimage ${c%% *} --help')\$" "$tmp/err" && echo yes || echo no)"
done
eq_value() { # NAME WANT_IN_ERROR ARGS...: a usage error whose line names WANT_IN_ERROR
    local name=$1 want=$2
    shift 2
    expect "$name" 2 "$@"
    zt_check "$name: names the value" yes \
        "$(grep -qF -- "$want" "$tmp/err" && echo yes || echo no)"
}
eq_value "top --interval=abc" "'abc'" top --interval=abc
# NaN is no number in 0.1..3600 (refused while parsing, before the config or Redis is read)
eq_value "top --interval nan" "'nan'" top --config "$tmp/none.yaml" --interval nan
eq_value "top --events=-1" "'-1'" top --config=x.yaml --events=-1
eq_value "dlq list --limit=0" "'0'" dlq list --limit=0
eq_value "dlq replay --error-code=Bad" "'Bad'" dlq replay --error-code=Bad
eq_value "devbroker --brokers=0" "'0'" devbroker --brokers=0
eq_value "devbroker --topic=t:0" "'0'" devbroker --topic=t:0
eq_value "bench --runs=0" "'0'" bench --random-weights --runs=0
eq_value "bench --backend=gpu" "gpu" bench --random-weights --backend=gpu
# --config=FILE is read (a missing file is a configuration error naming it)
for c in "top" "dlq list" "dlq replay"; do
    # shellcheck disable=SC2086
    eq_value "$c --config=FILE" "$tmp/none.yaml" $c --config="$tmp/none.yaml"
done

# Weight-file damage is "other failure" (1), reported without a sanitizer trace.
d=$(ckpt trunc)
rm "$d/transformer/diffusion_pytorch_model.safetensors"
head -c 100000 "$golden/transformer/diffusion_pytorch_model.safetensors" \
    >"$d/transformer/diffusion_pytorch_model.safetensors"
GEN_NAME="generate truncated transformer weights" GEN_WANT=1 gen "$d"

zt_finish
