#!/usr/bin/env bash
# lint.sh - the repository's two source checks, shared by `make lint`, `make format` and
# `make test` (tests/run-all.sh):
#
#   lint.sh format-check   clang-format --dry-run -Werror on every C/CUDA file we own
#   lint.sh format         clang-format -i on the same files
#   lint.sh cppcheck       cppcheck on every C file: warning, performance and portability
#                          checks, zero findings allowed. (.cu files are held to nvcc's
#                          warnings-as-errors by the CUDA build instead.)
#
# Sources: *.c *.h *.cu *.cuh *.cpp under pipeline/ kernels/ worker/ tests/ bench/, except the
# golden data and fuzz corpora. System headers are not read, so macros of the libraries we
# use that cppcheck must understand (cJSON_ArrayForEach, ...) are declared in
# tests/cppcheck/zimage.cfg. A finding that is wrong can be silenced on its line with
# `// cppcheck-suppress <id>` and a comment saying why.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
JOBS=${JOBS:-2}

source_files() { # EXT-REGEX
    find pipeline kernels worker tests bench -type f -regextype posix-extended \
        -regex ".*\.($1)" -not -path 'tests/golden/data/*' -not -path 'tests/fuzz/corpus/*' \
        2>/dev/null | LC_ALL=C sort
}

case ${1:-} in
format-check | format)
    mapfile -t files < <(source_files 'c|h|cu|cuh|cpp')
    ((${#files[@]})) || exit 0
    if [[ $1 == format ]]; then
        clang-format -i "${files[@]}"
    else
        rc=0
        clang-format --dry-run -Werror "${files[@]}" || rc=1
        echo "clang-format: ${#files[@]} files checked"
        exit $rc
    fi
    ;;
cppcheck)
    mapfile -t files < <(source_files 'c')
    ((${#files[@]})) || exit 0
    mkdir -p build/cppcheck
    rc=0
    cppcheck --enable=warning,performance,portability --error-exitcode=1 --inline-suppr \
        --std=c11 --quiet -j"$JOBS" --cppcheck-build-dir=build/cppcheck \
        -D_GNU_SOURCE -I pipeline -I kernels -I worker -I tests \
        --library=tests/cppcheck/zimage.cfg --suppress=missingIncludeSystem "${files[@]}" || rc=1
    echo "cppcheck: ${#files[@]} files checked"
    exit $rc
    ;;
*)
    echo "usage: lint.sh format-check|format|cppcheck" >&2
    exit 2
    ;;
esac
