#!/usr/bin/env bash
# Build the explorer's front end (frontend/, TypeScript + esbuild) into src/contrastlens/server/static/,
# the files that ship in the Python package (so `pip install` gives a working explorer without Node).
#
#   bash scripts/build_frontend.sh            npm ci (only when node_modules is missing or older than the
#                                             lock file), type-check, unit tests, build into the package
#   bash scripts/build_frontend.sh --check    the same checks, but build into a temporary folder and fail
#                                             (exit 1, one line) when it differs from the committed files
#
# Cheap when nothing changed: npm ci is skipped, and so are the type check and the unit tests when the
# sources, tests and lock file hash to the stamp of the last run that passed them.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
fe="$root/frontend"
static="$root/src/contrastlens/server/static"
check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: bash scripts/build_frontend.sh [--check]" >&2; exit 2 ;;
esac

if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  echo "build_frontend.sh: node and npm are needed to build the front end (apt-get install nodejs npm)" >&2
  exit 1
fi
cd "$fe"
if [ ! -d node_modules ] || [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error >&2
fi

# the type check and the unit tests, unless their inputs are unchanged since they last passed
stamp_file=node_modules/.cache/contrastlens-frontend.stamp
stamp=$(cat package.json package-lock.json tsconfig.json build.mjs \
  $(find src test -type f | LC_ALL=C sort) | sha256sum | cut -c1-64)
if [ "$(cat "$stamp_file" 2>/dev/null || true)" != "$stamp" ]; then
  npm run --silent check
  if ! out=$(npm test --silent 2>&1); then
    echo "$out" >&2
    echo "build_frontend.sh: the front end's unit tests failed (npm test in frontend/)" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$stamp_file")"
  echo "$stamp" > "$stamp_file"
fi

if [ "$check" -eq 0 ]; then
  node build.mjs --out "$static" >/dev/null
  echo "built the explorer front end into src/contrastlens/server/static/"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
node build.mjs --out "$tmp" >/dev/null
if ! diff -rq "$tmp" "$static" >/dev/null 2>&1; then
  what=$(diff -rq "$tmp" "$static" 2>&1 | sed -e "s#$tmp/##g" -e "s#$root/##g" | head -3 | tr '\n' ';' || true)
  echo "build_frontend.sh --check: src/contrastlens/server/static/ is not the build of frontend/ (${what%;}); run bash scripts/build_frontend.sh and commit the result" >&2
  exit 1
fi
echo "the committed front end in src/contrastlens/server/static/ matches frontend/"
