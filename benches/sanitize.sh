#!/usr/bin/env bash
# `make sanitize`: libmario under the sanitizers of the nightly toolchain.
#
#   asan-rust   AddressSanitizer + LeakSanitizer on the Rust unit tests and
#               the in-process server tests (--lib, rust_api, rust_closing,
#               rust_framing, rust_pool).
#   asan-c      libmario.a built with AddressSanitizer, linked into the C
#               test programs (gcc -fsanitize=address,undefined, as in the
#               Makefile's ctests) and driven by the integration tests that
#               exercise cross-thread commands and slot reuse (lifecycle,
#               crossthread, framing, closing, frame_kinds, chat, proxy (the
#               PROXY protocol header path), health:
#               its latency bounds times MARIO_TEST_TIME_SCALE=10). The C
#               tests of `make test` already
#               run under gcc's sanitizers, but with an uninstrumented
#               library; here the library's own accesses are checked too.
#   tsan-rust   ThreadSanitizer on --lib, rust_api, rust_closing,
#               rust_framing and rust_pool.
#   tsan-c      libmario.a built with ThreadSanitizer, linked into testsrv
#               and mario_chat (gcc -fsanitize=thread), driven by lifecycle,
#               crossthread, chat, proxy and health.
#
# Everything builds under target/asan and target/tsan (never target/debug,
# target/release or target/ctests). The asan-c / tsan-c phases run the
# integration tests in a private mount namespace (unshare -m, root only)
# where target/ctests is the sanitizer build's directory and `make` is a
# no-op, since those tests otherwise (re)build and use target/ctests.
#
# -Zbuild-std (needs the nightly's rust-src component) instruments the
# standard library too; ThreadSanitizer requires it (an uninstrumented std
# hides its synchronisation and yields false reports), AddressSanitizer
# works without it. Phases that cannot run here say so and are skipped.
#
# Exit status: 0 if no phase failed (skipped phases do not fail, unless
# SANITIZE_STRICT=1). Logs: target/sanitize/*.log.
# Environment: SANITIZE_TOOLCHAIN (default nightly), SANITIZE_PHASES
# (default "asan-rust asan-c tsan-rust tsan-c").
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TC=${SANITIZE_TOOLCHAIN:-nightly}
PHASES=${SANITIZE_PHASES:-asan-rust asan-c tsan-rust tsan-c}
TARGET=x86_64-unknown-linux-gnu
OUT=$ROOT/target/sanitize
mkdir -p "$OUT"
T0=$SECONDS

declare -A RESULT
ORDER=()
record() { ORDER+=("$1"); RESULT[$1]=$2; }
say() { printf '\n== %s\n' "$*"; }
skip() { say "$1: SKIPPED ($2)"; record "$1" "SKIPPED: $2"; }

# ---------------------------------------------------------------------------
# Prerequisites.

if [ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]; then
    echo "sanitize: only set up for x86_64 Linux; nothing run"
    exit 0
fi
if ! cargo "+$TC" --version >/dev/null 2>&1; then
    echo "sanitize: no '$TC' toolchain (rustup toolchain install $TC); nothing run"
    [ "${SANITIZE_STRICT:-0}" = 1 ] && exit 1
    exit 0
fi
BUILD_STD=()
if rustup component list --toolchain "$TC" --installed 2>/dev/null | grep -q '^rust-src'; then
    BUILD_STD=(-Zbuild-std)
    echo "sanitize: $(rustc "+$TC" --version); rust-src present: std is instrumented (-Zbuild-std)"
else
    echo "sanitize: $(rustc "+$TC" --version); no rust-src: std is not instrumented," \
        "ThreadSanitizer phases are skipped (rustup component add rust-src --toolchain $TC)"
fi
CAN_UNSHARE=0
if [ -d target/ctests ] || mkdir -p target/ctests 2>/dev/null; then
    if unshare -m --propagation private true 2>/dev/null; then CAN_UNSHARE=1; fi
fi

# Intentional leaks: the logq unit tests leak their private hubs and queues
# (queues live for the process by design; a hub and its queues point at
# each other, so LeakSanitizer reports them as "indirect" leaks). Only
# allocations made under those tests are suppressed.
printf 'leak:mario::logq::tests::\n' >"$OUT/lsan.supp"
# tests/c/testsrv.c's `static volatile int stopping` is written by its
# signal thread and read by its blaster thread without synchronisation: a
# race in the test program, not in libmario (reported separately).
printf 'race:stopper\n' >"$OUT/tsan.supp"
mkdir -p "$OUT/bin" && printf '#!/bin/sh\nexit 0\n' >"$OUT/bin/make" && chmod +x "$OUT/bin/make"

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:exitcode=86"
export LSAN_OPTIONS="suppressions=$OUT/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87"
export TSAN_OPTIONS="suppressions=$OUT/tsan.supp:halt_on_error=0:exitcode=66:second_deadlock_stack=1"
export RUST_BACKTRACE=0

# cargo for a sanitizer build: $1 = address|thread, $2 = target dir, rest =
# cargo subcommand and arguments. Tests always unwind; the profile's
# panic=abort is turned off so that one std build serves the tests and the
# static library.
san_cargo() {
    local san=$1 dir=$2
    shift 2
    MARIO_TEST_TIME_SCALE=10 RUSTFLAGS="-Zsanitizer=$san -Cforce-frame-pointers=yes" \
        cargo "+$TC" "$@" "${BUILD_STD[@]}" --target "$TARGET" --target-dir "$dir" \
        --config 'profile.dev.panic="unwind"'
}

# Paths of the test executables a `cargo test --no-run` would run.
test_exes() {
    local san=$1 dir=$2
    shift 2
    san_cargo "$san" "$dir" test --no-run --message-format=json "$@" 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p'
}

# Builds libmario.a with sanitizer $1 in $2 and the C test programs against
# it in $2/ctests with gcc flags $3.
build_ctests() {
    local san=$1 dir=$2 cflags=$3
    san_cargo "$san" "$dir" build --lib || return 1
    local lib=$dir/$TARGET/debug/libmario.a extra=()
    mkdir -p "$dir/ctests"
    if [ "$san" = thread ]; then
        # gcc 12's libtsan predates the __tsan_mem* entry points newer LLVM
        # emits; forward them to the intercepted libc functions.
        cat >"$dir/ctests/tsan_shim.c" <<'EOF'
#include <string.h>
void *__tsan_memcpy(void *d, const void *s, size_t n) { return memcpy(d, s, n); }
void *__tsan_memmove(void *d, const void *s, size_t n) { return memmove(d, s, n); }
void *__tsan_memset(void *d, int c, size_t n) { return memset(d, c, n); }
EOF
        extra=("$dir/ctests/tsan_shim.c")
    fi
    local f
    for f in tests/c/*.c; do
        # shellcheck disable=SC2086
        gcc $cflags -o "$dir/ctests/$(basename "$f" .c)" "$f" "${extra[@]}" "$lib" -lpthread -ldl -lm ||
            return 1
    done
    # shellcheck disable=SC2086
    gcc $cflags -o "$dir/ctests/maritcp-asan" c-examples/mario.c c-examples/config.c \
        c-examples/function.c c-examples/collect.c "${extra[@]}" "$lib" -lpthread -ldl -lm || return 1
    # shellcheck disable=SC2086
    gcc $cflags -o "$dir/ctests/mario_chat-asan" c-examples/chat.c "${extra[@]}" "$lib" -lpthread -ldl -lm
}

# Runs test executables (rest) with target/ctests bound to $1 and make
# stubbed out, in a private mount namespace.
run_with_ctests() {
    local ctests=$1
    shift
    local exe status=0
    for exe in "$@"; do
        echo "-- $(basename "$exe")"
        # shellcheck disable=SC2016
        unshare -m --propagation private sh -c '
            mount --bind "$1" "$2/target/ctests" || exit 1
            cmp -s "$1/testsrv" "$2/target/ctests/testsrv" || { echo "bind mount not in effect"; exit 1; }
            shift 2 && exec "$@"' \
            sh "$ctests" "$ROOT" env PATH="$OUT/bin:$PATH" MARIO_TEST_TIME_SCALE=10 "$exe" || status=1
    done
    return $status
}

# Runs a phase: $1 name, $2 function; output to $OUT/$1.log.
phase() {
    local name=$1 fn=$2 t=$SECONDS
    say "$name (log: target/sanitize/$name.log)"
    if "$fn" >"$OUT/$name.log" 2>&1; then
        record "$name" "PASS ($((SECONDS - t)) s)"
    else
        record "$name" "FAIL ($((SECONDS - t)) s)"
    fi
    grep -E '^test result|^SUMMARY: [A-Za-z]*Sanitizer' "$OUT/$name.log" | sort | uniq -c
    echo "   ${RESULT[$name]}"
}

CFLAGS_BASE="-std=c99 -O1 -g -Wall -Wextra -Werror -DLINUX64 -fno-omit-frame-pointer -Iinclude"

asan_rust() {
    san_cargo address target/asan test --no-fail-fast --lib --test rust_api --test rust_closing --test rust_framing \
        --test rust_pool --test rust_state
}

asan_c() {
    build_ctests address target/asan \
        "$CFLAGS_BASE -fsanitize=address,undefined -fno-sanitize-recover=undefined" || return 1
    local exes
    mapfile -t exes < <(test_exes address target/asan --test lifecycle --test crossthread --test framing --test closing \
        --test frame_kinds --test chat --test proxy --test health)
    [ "${#exes[@]}" = 8 ] || { echo "could not build the integration tests"; return 1; }
    run_with_ctests "$ROOT/target/asan/ctests" "${exes[@]}"
}

tsan_rust() {
    san_cargo thread target/tsan test --no-fail-fast --lib --test rust_api --test rust_closing --test rust_framing \
        --test rust_pool --test rust_state
}

tsan_c() {
    build_ctests thread target/tsan "$CFLAGS_BASE -fsanitize=thread" || return 1
    local exes
    # The drivers themselves need no sanitizer: reuse the asan-c build.
    mapfile -t exes < <(test_exes address target/asan --test lifecycle --test crossthread --test chat --test proxy --test health)
    [ "${#exes[@]}" = 5 ] || { echo "could not build the integration tests"; return 1; }
    run_with_ctests "$ROOT/target/tsan/ctests" "${exes[@]}"
}

for p in $PHASES; do
    case $p in
    asan-rust) phase asan-rust asan_rust ;;
    asan-c)
        if [ $CAN_UNSHARE = 1 ]; then phase asan-c asan_c; else
            skip asan-c "needs unshare -m (root) to point target/ctests at the sanitizer build"
        fi
        ;;
    tsan-rust)
        if [ ${#BUILD_STD[@]} -gt 0 ]; then phase tsan-rust tsan_rust; else
            skip tsan-rust "ThreadSanitizer needs -Zbuild-std (rust-src)"
        fi
        ;;
    tsan-c)
        if [ ${#BUILD_STD[@]} -eq 0 ]; then
            skip tsan-c "ThreadSanitizer needs -Zbuild-std (rust-src)"
        elif [ $CAN_UNSHARE = 0 ]; then
            skip tsan-c "needs unshare -m (root) to point target/ctests at the sanitizer build"
        else phase tsan-c tsan_c; fi
        ;;
    *) echo "unknown phase $p" && exit 2 ;;
    esac
done

say "summary ($((SECONDS - T0)) s)"
failed=0
for p in "${ORDER[@]}"; do
    printf '  %-10s %s\n' "$p" "${RESULT[$p]}"
    case ${RESULT[$p]} in
    FAIL*) failed=1 ;;
    SKIPPED*) [ "${SANITIZE_STRICT:-0}" = 1 ] && failed=1 ;;
    esac
done
exit $failed
