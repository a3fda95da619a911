#!/usr/bin/env bash
# Installs what building laneway needs and is missing: cmake (Pingora builds
# zlib-ng with it) and a C compiler. Debian/Ubuntu (apt-get); idempotent.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
# Each extra is a command, or command:package when Debian names the package
# otherwise (chromedriver:chromium-driver).
for extra in "$@"; do
  cmd="${extra%%:*}"
  pkg="${extra#*:}"
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done

if ((${#need[@]})); then
  echo "laneway setup: installing ${need[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "laneway setup: cargo not found; install Rust with rustup first" >&2
  exit 1
fi
