#!/usr/bin/env bash
# Builds tests/native/kernel_agreement.cpp with the kernel sources compiled once per ISA of the
# target, as CMakeLists.txt compiles them (its flags are read from it), plus the scalar_fma copy
# the program compares the fused ISAs with bitwise (see the program's first comment).
#   usage: [CXX=<compiler>] bash tests/native/build.sh OUT [link flags...]
#   e.g.   bash tests/native/build.sh /tmp/ka && /tmp/ka                      (x86: sse2, avx2, avx512)
#          CXX=aarch64-linux-gnu-g++ bash tests/native/build.sh /tmp/ka -static  (see .ci/neon)
# Compiles two files at a time (JOBS=<n> to change).
set -euo pipefail
cd "$(dirname "$0")/../.."
out="$1"
shift
cxx="${CXX:-g++}"
jobs="${JOBS:-2}"

# The GCC/Clang value of `set(<var> -...)` in CMakeLists.txt (its MSVC values do not start with -).
cmake_flags() {
    sed -n "s/^ *set($1 \(-[^)]*\))\$/\1/p" CMakeLists.txt | head -n 1
}
common="$(cmake_flags FUSEDOPT_COMMON_FLAGS)"
if [[ "$common" != *-ffp-contract=off* ]]; then
    echo "build.sh: could not read FUSEDOPT_COMMON_FLAGS from CMakeLists.txt (got '$common')" >&2
    exit 1
fi

# The flag CMakeLists.txt appends where the compiler takes it (check_cxx_compiler_flag), so that
# the program compiles the kernels as the module does (it changes no result, only compile time).
if echo 'int main() { return 0; }' | "$cxx" -fvect-cost-model=very-cheap -x c++ -c -o /dev/null - 2>/dev/null; then
    common="$common -fvect-cost-model=very-cheap"
fi

# The sources CMakeLists.txt compiles once per ISA.
kernel_sources="$(sed -n '/^set(FUSEDOPT_KERNEL_SOURCES/,/)/s/^ *\(csrc\/kernels\/[a-z_]*\.cpp\)$/\1/p' CMakeLists.txt)"
if [[ "$kernel_sources" != *csrc/kernels/table.cpp* ]]; then
    echo "build.sh: could not read FUSEDOPT_KERNEL_SOURCES from CMakeLists.txt (got '$kernel_sources')" >&2
    exit 1
fi

# The ISAs CMakeLists.txt compiles for the target's architecture.
machine="$("$cxx" -dumpmachine)"
case "$machine" in
    x86_64*|amd64*) isas="scalar sse2 avx2 avx512" ;;
    aarch64*|arm64*) isas="scalar neon" ;;
    *) isas="scalar" ;;
esac

# OBJ_DIR=<dir>: keep the objects there, and reuse those newer than their source, every header
# and CMakeLists.txt (for iterating; CI builds from scratch in a temporary directory)
if [[ -n "${OBJ_DIR:-}" ]]; then
    obj="$OBJ_DIR"
    mkdir -p "$obj"
else
    obj="$(mktemp -d)"
    trap 'rm -rf "$obj"' EXIT
fi
# one line per object: output, then the compiler's arguments
jobs_file="$obj/jobs"
have=""
for isa in $isas scalar_fma; do
    case "$isa" in
        scalar_fma) flags="$(cmake_flags FUSEDOPT_FLAGS_scalar) -DFUSEDOPT_ISA_SCALAR=1 -DFUSEDOPT_HAS_FMA=1" ;;
        *) flags="$(cmake_flags "FUSEDOPT_FLAGS_$isa") -DFUSEDOPT_ISA_${isa^^}=1"
           have="$have -DFUSEDOPT_HAVE_${isa^^}=1" ;;
    esac
    for src in $kernel_sources; do
        echo "$obj/${isa}_$(basename "$src" .cpp).o $common $flags -DFUSEDOPT_ISA_NS=$isa -c $src"
    done
done > "$jobs_file"
for src in csrc/dispatch.cpp csrc/parallel.cpp tests/native/kernel_agreement.cpp; do
    echo "$obj/$(basename "$src" .cpp).o $common $have -c $src"
done >> "$jobs_file"

cp "$jobs_file" "$obj/objects"
if [[ -n "${OBJ_DIR:-}" ]]; then
    newest_dep="$(ls -t CMakeLists.txt csrc/*.h csrc/*/*.h | head -n 1)"
    while read -r o rest; do
        src="${rest##* }"
        [[ "$o" -nt "$src" && "$o" -nt "$newest_dep" ]] || echo "$o $rest"
    done < "$jobs_file" > "$jobs_file.todo"
    mv "$jobs_file.todo" "$jobs_file"
fi
echo "compiling $(wc -l < "$jobs_file") objects with $cxx ($machine), ISAs: $isas + scalar_fma"
# shellcheck disable=SC2016
xargs -r -P "$jobs" -L 1 sh -c 'out="$1"; shift; exec "$0" -std=c++17 "$@" -o "$out"' "$cxx" < "$jobs_file"
# shellcheck disable=SC2046
"$cxx" -o "$out" $(cut -d ' ' -f 1 "$obj/objects") -pthread "$@"
echo "built $out"
