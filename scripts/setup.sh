#!/usr/bin/env bash
# Installs what a build needs on a fresh Debian/Ubuntu machine: libclang (bindgen of the rocksdb
# crate), a C++ compiler (RocksDB itself) and a C compiler (mimalloc). The Rust toolchain comes
# from rust-toolchain.toml.
# With --tests, also the real clients the tests drive: psql (postgresql-client), openssl (a
# certificate for the TLS test), Python's PostgreSQL drivers (psycopg, psycopg2, asyncpg,
# pg8000, SQLAlchemy), Prometheus' text-format parser (prometheus_client), and headless Chromium
# with its WebDriver (Debian's chromium and chromium-driver) for the web console's tests.
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

sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
apt_install() {
  echo "setup: installing $*" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

need=()
has_libclang || need+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || need+=(g++)
# A C compiler too: mimalloc (the binary's allocator) is C.
command -v cc >/dev/null 2>&1 || need+=(gcc)
if [ "${1:-}" = "--tests" ]; then
  command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
fi
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
has_libclang || { echo "setup: libclang still missing after installing libclang-dev" >&2; exit 1; }

# The PostgreSQL drivers the protocol is tested with (tests/it/drivers/): module name, pip
# requirement.
# Also Prometheus' own parser of the text format, which the /metrics tests check against.
drivers=("psycopg:psycopg[binary]" "psycopg2:psycopg2-binary" "asyncpg:asyncpg" "pg8000:pg8000" "sqlalchemy:sqlalchemy>=2"
  "prometheus_client:prometheus_client")
if [ "${1:-}" = "--tests" ]; then
  missing=()
  for d in "${drivers[@]}"; do
    python3 -c "import ${d%%:*}" 2>/dev/null || missing+=("${d#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]} (pip)" >&2
    python3 -m pip install -q "${missing[@]}" 2>/dev/null \
      || python3 -m pip install -q --break-system-packages "${missing[@]}"
  fi
  for d in "${drivers[@]}"; do
    python3 -c "import ${d%%:*}" || { echo "setup: ${d%%:*} still missing" >&2; exit 1; }
  done
fi
