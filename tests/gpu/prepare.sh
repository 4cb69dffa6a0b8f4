#!/usr/bin/env bash
# tests/gpu/prepare.sh - run HERE (Debian 12, with apt) before a GPU machine runs
# tests/gpu/run.sh. The GPU machine has CUDA, cmake, gcc and python but none of our Debian
# -dev packages, and it can fetch nothing. This script downloads the packages that the
# ZI_WORKER=OFF build (pipeline, kernels, the pipeline commands, tests/gpu) needs, with the
# runtime libraries they pull in that such an image may lack, into .gpu-debs/ (ignored by
# git; the device call carries it). run.sh unpacks them into a private prefix, never into /.
#
# To fit the device call's 64 MiB (tracked + untracked-not-ignored files + carried paths),
# each .deb is repacked without what the build does not use: static libraries, docs, man
# pages, OpenBLAS's LAPACK/BLAS copies, PCRE2's 16/32-bit and POSIX variants. Debian's own
# bytes are otherwise unchanged (dpkg-deb -R / -b).
#
# Prints the size of what will travel and the exact device call. Exits 1 when the download
# fails or the total passes 64 MiB.
# Usage: bash tests/gpu/prepare.sh          (from anywhere; needs apt-get and dpkg-deb)
#        bash tests/gpu/prepare.sh --check  (then also run tests/gpu/run.sh here in a clean
#            environment that sees only .gpu-debs: configure + build must pass, the GPU
#            stages fail for want of a GPU; needs nvcc; build dir $ZI_CHECK_BUILD)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1
DEST=$ROOT/.gpu-debs
LIMIT=$((64 * 1024 * 1024))
WANT=$((60 * 1024 * 1024))

# What the ZI_WORKER=OFF build links: pcre2-8, utf8proc, cJSON (tokenizer, safetensors),
# spng + zlib (PNG), OpenBLAS (CPU backend, the GPU tests' reference), cmocka (test
# harness); OpenBLAS needs libgfortran5 -> libquadmath0; pkgconf is CMake's pkg-config.
# glibc, libgcc-s and libstdc++ are not carried: the GPU image has its own (newer) ones.
PKGS=(
    libpcre2-dev libpcre2-8-0
    libutf8proc-dev libutf8proc2
    libcjson-dev libcjson1
    libspng-dev libspng0
    zlib1g-dev zlib1g
    libopenblas-pthread-dev libopenblas0-pthread libgfortran5 libquadmath0
    libcmocka-dev libcmocka0
    pkgconf-bin libpkgconf3
)

for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || {
        echo "prepare.sh: $tool not found (run this on the Debian development machine)" >&2
        exit 1
    }
done

WORK=$(mktemp -d /tmp/zi-gpu-debs.XXXXXX) || exit 1
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/dl" "$WORK/out"

echo "== downloading ${#PKGS[@]} packages"
if ! (cd "$WORK/dl" && apt-get download "${PKGS[@]}" >"$WORK/apt.log" 2>&1); then
    echo "apt-get download failed; refreshing the package lists once" >&2
    apt-get update >>"$WORK/apt.log" 2>&1
    if ! (cd "$WORK/dl" && apt-get download "${PKGS[@]}" >>"$WORK/apt.log" 2>&1); then
        tail -n 20 "$WORK/apt.log" >&2
        echo "prepare.sh: apt-get download failed" >&2
        exit 1
    fi
fi

# Repack without the parts no build step reads.
echo "== repacking"
for deb in "$WORK"/dl/*.deb; do
    name=$(basename "$deb")
    tree=$WORK/tree
    rm -rf "$tree"
    dpkg-deb -R "$deb" "$tree" || exit 1
    rm -rf "$tree"/usr/share/doc "$tree"/usr/share/man "$tree"/usr/share/info \
        "$tree"/usr/share/lintian "$tree"/usr/share/bug "$tree"/DEBIAN/md5sums
    find "$tree" \( -name '*.a' -o -name 'liblapack*' -o -name 'libblas*' \
        -o -name 'lapack-openblas.pc' -o -name 'blas-openblas.pc' -o -name 'libpcre2-16*' \
        -o -name 'libpcre2-32*' -o -name 'libpcre2-posix*' -o -name 'pcre2posix.h' \) \
        -exec rm -rf {} +
    # keep the archive's owners (root) without fakeroot
    dpkg-deb --root-owner-group -Zxz -z9 -b "$tree" "$WORK/out/$name" >/dev/null || exit 1
    printf '  %-48s %9d -> %9d bytes\n' "$name" "$(stat -c %s "$deb")" \
        "$(stat -c %s "$WORK/out/$name")"
done

rm -rf "$DEST"
mkdir -p "$DEST"
mv "$WORK"/out/*.deb "$DEST"/
{
    echo "# packages for tests/gpu/run.sh, made by tests/gpu/prepare.sh on $(date -u +%FT%TZ)"
    echo "# from $(. /etc/os-release && echo "$PRETTY_NAME"); repacked without static libs/docs"
    for deb in "$DEST"/*.deb; do
        dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb"
    done
} >"$DEST/MANIFEST"

# ---- what the device call carries ----
tracked=$(git ls-files -z | xargs -0 stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}')
untracked=$(git ls-files -z --others --exclude-standard |
    xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}')
debs=$(find "$DEST" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
total=$((tracked + untracked + debs))
mib() { awk -v b="$1" 'BEGIN {printf "%.2f MiB", b / 1048576}'; }
echo
echo "tracked files:           $(mib "$tracked")"
echo "untracked, not ignored:  $(mib "$untracked")"
echo ".gpu-debs ($(find "$DEST" -name '*.deb' | wc -l) debs):     $(mib "$debs")"
echo "total that travels:      $(mib "$total")  (limit 64 MiB)"
echo
echo "device call:"
echo '  run(command="bash tests/gpu/run.sh", carry=[".gpu-debs"], timeout_s=540)'
if ((total > LIMIT)); then
    echo "prepare.sh: FAILED: $(mib "$total") is over the device call's 64 MiB" >&2
    exit 1
fi
((total > WANT)) && echo "prepare.sh: warning: over 60 MiB; little room left for new files" >&2

if [[ ${1:-} == --check ]]; then
    # The GPU machine's situation: pkg-config sees only the unpacked prefix, plain PATH, empty
    # environment; as root, the system's copies of these packages and of the worker's
    # (files of the installed Debian packages below) are also hidden in a private mount
    # namespace (bind-mounted /dev/null, seen by this command only), so that a header or a
    # library that still came from the system would fail the build. The run stages then
    # fail for want of a GPU; the summary says so.
    echo
    echo "== --check: clean-environment run (ZI_WORKER=OFF, CUDA, sm_90) from .gpu-debs only"
    check_build=${ZI_CHECK_BUILD:-$ROOT/build-gpu-check}
    hide=$WORK/hide.list
    dpkg-query -W -f='${Package}\n' 2>/dev/null | grep -E -x \
        'lib(pcre2|utf8proc|cjson|spng|cmocka|hiredis|rdkafka|curl4-openssl|ssl|yaml|microhttpd|openblas.*|blas|lapack|gfortran-12)-dev|zlib1g-dev|libutf8proc2|libcjson1|libspng0|libcmocka0|libopenblas0.*|libblas3|liblapack3|libgfortran5|libquadmath0|libhiredis0.14|librdkafka1|librdkafka\+\+1|libmicrohttpd12|libyaml-0-2|libpkgconf3|pkgconf|pkgconf-bin|pkg-config' |
        xargs -r dpkg -L 2>/dev/null | while IFS= read -r f; do
        [[ -f $f && ! -L $f ]] && echo "$f"
    done >"$hide"
    run=(env -i HOME="$HOME" PATH=/usr/local/cuda/bin:/usr/bin:/bin BUILD="$check_build"
        JOBS="${JOBS:-2}" ZI_CUDA_ARCHS="${ZI_CUDA_ARCHS:-90}"
        ZI_GPU_DEPS=/tmp/zi-deps-check bash "$ROOT/tests/gpu/run.sh")
    if [[ $(id -u) == 0 ]] && unshare -m true 2>/dev/null; then
        echo "hiding $(wc -l <"$hide") files of the system's packages"
        unshare -m bash -c 'mount --make-rprivate / &&
            while IFS= read -r f; do mount --bind /dev/null "$f" || exit 1; done <"$1" &&
            shift && exec "$@"' check "$hide" "${run[@]}"
    else
        echo "(not root or no unshare: the system's packages stay visible to the compiler)"
        "${run[@]}"
    fi
    exit $?
fi
exit 0
