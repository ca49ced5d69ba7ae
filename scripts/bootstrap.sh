#!/usr/bin/env bash
# Installs what `npm start` and `npm test` need, if missing: nats-server (from the
# OS package manager), npm dependencies, the TypeScript build. Idempotent and quiet
# when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'gravitas setup: %s\n' "$*" >&2; }

if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ] && [ -z "${NATS_SERVER_BIN:-}" ]; then
  say "nats-server is missing; installing it with apt-get (Debian package nats-server)…"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"; else SUDO="none"; fi
  fi
  if [ "$SUDO" = "none" ] || ! command -v apt-get >/dev/null 2>&1; then
    say "cannot install nats-server here. Install it yourself (Debian/Ubuntu: 'sudo apt-get install nats-server'; others: https://docs.nats.io), or point NATS_SERVER_BIN at the binary, then run this again."
    exit 1
  fi
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null; }; then
    say "apt-get could not install nats-server. Install it yourself ('sudo apt-get install nats-server'), or point NATS_SERVER_BIN at the binary, then run this again."
    exit 1
  fi
  # The Debian unit never starts in containers and is not what we use: tests start their own servers.
  say "installed $(nats-server --version 2>/dev/null || /usr/sbin/nats-server --version)"
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm dependencies (npm ci)…"
  npm ci --no-audit --no-fund --loglevel=error
fi

say "building (tsc -b)…"
npx --no-install tsc -b
