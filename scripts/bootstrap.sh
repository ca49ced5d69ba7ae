#!/usr/bin/env bash
# Installs what `npm start` and `npm test` need, if missing: nats-server (with --test
# also nginx, chromium and prosody) from the OS package manager, npm dependencies, the TypeScript build. Idempotent and quiet
# when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'gravitas setup: %s\n' "$*" >&2; }

# apt_install BINARY PACKAGE [WHY]: installs a Debian package unless BINARY is on the PATH
# (or in /usr/sbin; an absolute path: unless that file exists). Needs root or password-less sudo; says what to do otherwise.
apt_updated=0
apt_install() {
  local bin=$1 pkg=$2 why=${3:-}
  if command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || { [ "${bin#/}" != "$bin" ] && [ -e "$bin" ]; }; then return 0; fi
  say "$bin is missing${why:+ ($why)}; installing it with apt-get (Debian package $pkg)…"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; else sudo="none"; fi
  fi
  if [ "$sudo" = "none" ] || ! command -v apt-get >/dev/null 2>&1; then
    say "cannot install $pkg here. Install it yourself (Debian/Ubuntu: 'sudo apt-get install $pkg'), then run this again."
    exit 1
  fi
  if [ "$apt_updated" = 0 ]; then $sudo apt-get update -qq; apt_updated=1; fi
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null; then
    say "apt-get could not install $pkg. Install it yourself ('sudo apt-get install $pkg'), then run this again."
    exit 1
  fi
}

# The broker. NATS_SERVER_BIN may point at one elsewhere. The Debian unit never starts in
# containers and is not what we use: tests start their own servers.
if [ -z "${NATS_SERVER_BIN:-}" ]; then apt_install nats-server nats-server; fi

# What only the tests need: nginx (the chunked-HTTP transport behind a real reverse proxy)
# and Chromium (the browser SDK and the demo page, driven by playwright-core).
if [ "${1:-}" = "--test" ]; then
  apt_install nginx nginx "the chunked-HTTP proxy test"
  # Debian builds nginx's stream module (TCP proxying, PROXY protocol) as a separate package.
  if ! /usr/sbin/nginx -V 2>&1 | grep -qE -- '--with-stream( |$)'; then
    apt_install /usr/lib/nginx/modules/ngx_stream_module.so libnginx-mod-stream "the PROXY protocol test through nginx"
  fi
  apt_install chromium chromium "the browser tests"
  apt_install prosody prosody "the load harness's XMPP driver test"
  # The peers of the efficiency comparison (issue 17); the tests start private nodes, never the Debian services.
  apt_install ejabberdctl ejabberd "the load harness's ejabberd peer test"
  apt_install redis-server redis-server "the load harness's Socket.IO + Redis peer test"
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm dependencies (npm ci)…"
  npm ci --no-audit --no-fund --loglevel=error
fi

say "building (tsc -b)…"
npx --no-install tsc -b
# The browser SDK bundle (one ES module) that the demo page of `npm start` and the browser tests load.
node packages/client/scripts/bundle.mjs
