#!/usr/bin/env bash
# Installs what a build needs on a fresh Debian/Ubuntu machine: libclang (bindgen of the rocksdb
# crate) and a C++ compiler (RocksDB itself). The Rust toolchain comes from rust-toolchain.toml.
# The libclang check looks for the files clang-sys loads (libclang.so, libclang-N.so,
# libclang.so.N, libclang-N.so.N), never libclang-cpp, which is a different library.
set -euo pipefail

has_libclang() {
  local dirs=(/usr/lib/llvm-*/lib /usr/lib/*-linux-gnu /usr/lib /usr/lib64 /usr/local/lib)
  [ -n "${LIBCLANG_PATH:-}" ] && dirs=("$LIBCLANG_PATH" "${dirs[@]}")
  local d f
  for d in "${dirs[@]}"; do
    for f in "$d"/libclang.so "$d"/libclang.so.[0-9]* "$d"/libclang-[0-9]*.so "$d"/libclang-[0-9]*.so.[0-9]*; do
      [ -e "$f" ] && return 0
    done
  done
  return 1
}

need=()
has_libclang || need+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || need+=(g++)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
has_libclang || { echo "setup: libclang still missing after installing libclang-dev" >&2; exit 1; }
