#!/usr/bin/env bash
# Installs, from PyPI, the LLVM 23.1 that the CUDA backend's build needs, for machines that
# reach package registries but not GitHub.
#
#   scripts/offline-llvm.sh
#   cargo build --features cuda
#
# Burn's CUDA backend builds cubecl-llvm, whose build dependency tracel-llvm-bundler
# (23.1.0-4) downloads a prebuilt LLVM from GitHub releases the first time. It skips that
# download when its directory, $XDG_DATA_HOME (else ~/.local/share)/tracel/tracel-llvm-23.1.0-4,
# holds the marker file .tracel-llvm-installed, and then only runs bin/llvm-config there.
# This script fills that directory from the wheels mlc-llvm-static and
# mlc-llvm-static-extra-targets (static LLVM 23.1 libraries with the NVPTX and AMDGPU targets,
# headers, and a Python llvm-config), checks it, and writes the marker last.
# With full network access you do not need it: the build downloads LLVM by itself.
#
# Needs Linux, python3 with pip, and python3 at build time too (llvm-config is a Python
# script). Running it again does nothing. The wheels are kept in $MOCO_LLVM_WHEELS
# (default ~/.cache/moco/llvm-wheels); set PYTHON to use another interpreter.
set -euo pipefail

bundle=tracel-llvm-23.1.0-4   # must match the tracel-llvm-bundler version in Cargo.lock
sdk=23.1.1.post0              # mlc-llvm-static wheels that provide LLVM 23.1

say() { echo "offline-llvm: $*"; }
die() { echo "offline-llvm: error: $*" >&2; exit 1; }

[ "$(uname -s)" = Linux ] || die "only Linux is supported (the LLVM wheels are manylinux builds)"
data=${XDG_DATA_HOME:-}
[[ $data == /* ]] || data=$HOME/.local/share   # the bundler ignores a relative XDG_DATA_HOME
dest=$data/tracel/$bundle
marker=$dest/.tracel-llvm-installed

# verify DIR: the checks that the build's use of llvm-config relies on (it always passes
# --link-static, then one of --version --libdir --includedir --cxxflags --libs --system-libs).
verify() {
  local dir cfg v libdir incdir libs lib bad=0
  dir=$(cd "$1" && pwd -P); cfg=$dir/bin/llvm-config
  [ -x "$cfg" ] || { echo "$cfg is missing or not executable" >&2; return 1; }
  v=$("$cfg" --link-static --version) || return 1
  [[ $v == 23.1.* ]] || { echo "llvm-config reports LLVM $v, expected 23.1.x" >&2; return 1; }
  libdir=$("$cfg" --link-static --libdir) && incdir=$("$cfg" --link-static --includedir) || return 1
  [ "$libdir" = "$dir/lib" ] && [ -d "$libdir" ] || { echo "--libdir gives $libdir, not $dir/lib" >&2; return 1; }
  [ "$incdir" = "$dir/include" ] && [ -f "$incdir/llvm-c/Target.h" ] \
    || { echo "--includedir gives $incdir, not $dir/include with the LLVM headers" >&2; return 1; }
  "$cfg" --link-static --targets-built | grep -qw NVPTX || { echo "NVPTX target not built" >&2; return 1; }
  "$cfg" --link-static --cxxflags >/dev/null && "$cfg" --link-static --system-libs >/dev/null || return 1
  libs=$("$cfg" --link-static --libs) || return 1
  for lib in $libs; do
    [ -f "$libdir/lib${lib#-l}.a" ] || { echo "missing $libdir/lib${lib#-l}.a" >&2; bad=1; }
  done
  for lib in LLVMNVPTXCodeGen LLVMNVPTXDesc LLVMNVPTXInfo; do
    [[ " $libs " == *" -l$lib "* ]] || { echo "llvm-config --libs lacks $lib" >&2; bad=1; }
  done
  return $bad
}

if [ -f "$marker" ] && v=$("$dest/bin/llvm-config" --link-static --version 2>/dev/null) && [[ $v == 23.1.* ]]; then
  say "LLVM $v is already installed in $dest: nothing to do."
  exit 0
fi
[ -f "$marker" ] && say "$marker exists but its llvm-config does not work: reinstalling."

py=${PYTHON:-python3}
command -v "$py" >/dev/null || die "$py not found: it fetches the wheels and runs llvm-config during the build"
py=$("$py" -c 'import sys; print(sys.executable)')
"$py" -m pip --version >/dev/null 2>&1 || die "pip is not available for $py (Debian: apt-get install python3-pip)"

# 1. The two wheels, from the cache when already there.
wheels=${MOCO_LLVM_WHEELS:-$HOME/.cache/moco/llvm-wheels}
mkdir -p "$wheels"
arch=$(uname -m)
find_wheel() { compgen -G "$wheels/$1-$sdk-*_$arch.whl" | head -n1 || true; }
base=$(find_wheel mlc_llvm_static); extra=$(find_wheel mlc_llvm_static_extra_targets)
if [ -z "$base" ] || [ -z "$extra" ]; then
  say "downloading mlc-llvm-static $sdk (about 90 MB) into $wheels"
  "$py" -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" \
    "mlc-llvm-static==$sdk" "mlc-llvm-static-extra-targets==$sdk" \
    || die "pip could not download mlc-llvm-static $sdk for $arch (is PyPI reachable?)"
  base=$(find_wheel mlc_llvm_static); extra=$(find_wheel mlc_llvm_static_extra_targets)
  [ -n "$base" ] && [ -n "$extra" ] || die "no mlc-llvm-static $sdk wheels for $arch in $wheels"
fi

# 2. Unpack both into one tree, next to the destination, and add an llvm-config launcher.
mkdir -p "$data/tracel"
tmp=$(mktemp -d "$data/tracel/.offline-llvm.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
say "unpacking $(basename "$base") and $(basename "$extra")"
for w in "$base" "$extra"; do "$py" -m zipfile -e "$w" "$tmp/wheels" || die "cannot unpack $w"; done
stage=$tmp/$bundle
mv "$tmp/wheels/mlc_llvm_static/static" "$stage"
mv "$tmp/wheels/mlc_llvm_static/licenses" "$stage/share/mlc-llvm-static/licenses"
[ -f "$stage/bin/llvm-config.py" ] && [ -f "$stage/share/mlc-llvm-static/extra.json" ] \
  || die "unexpected wheel layout: bin/llvm-config.py or share/mlc-llvm-static/extra.json missing"
rm -f "$stage/bin/llvm-config"
cat > "$stage/bin/llvm-config" <<EOF
#!/bin/sh
# llvm-config for this LLVM: runs the SDK's Python script, which prints paths inside the
# directory above this one (written by scripts/offline-llvm.sh).
here=\$(cd "\$(dirname "\$0")" && pwd -P)
py=$py; [ -x "\$py" ] || py=python3
MLC_LLVM_STATIC_SDK_PREFIX="\${here%/bin}" MLC_LLVM_STATIC_PROFILE=all exec "\$py" "\$here/llvm-config.py" "\$@"
EOF
chmod +x "$stage/bin/llvm-config"

# 3. Check it, put it in place, check again where it lies, and only then write the marker.
verify "$stage" || die "the unpacked LLVM failed its checks (see above)"
rm -rf "$dest"
mv "$stage" "$dest"
verify "$dest" || die "the installed LLVM in $dest failed its checks (see above)"
touch "$marker"

cfg=$dest/bin/llvm-config
say "installed LLVM $("$cfg" --version) in $dest ($(du -sh "$dest" | cut -f1))"
say "  llvm-config: $cfg"
say "  libdir:      $("$cfg" --libdir) ($("$cfg" --link-static --libs | wc -w) static libraries)"
say "  includedir:  $("$cfg" --includedir)"
say "  targets:     $("$cfg" --targets-built)"
say "No environment variable is needed: the build finds $dest by itself, as long as it runs"
say "with the same XDG_DATA_HOME/HOME and with $py (or python3) available. Next: cargo build --features cuda"
