#!/usr/bin/env bash
# Re-vendor axe-core from the npm registry: bash tests/browser/vendor/update_axe.sh [VERSION]
set -euo pipefail
version="${1:-4.14.1}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack "axe-core@${version}" --silent >/dev/null)
tar -xzf "$tmp/axe-core-${version}.tgz" -C "$tmp"
cp "$tmp/package/axe.min.js" "$tmp/package/LICENSE" "$tmp/package/LICENSE-3RD-PARTY.txt" "$here/"
echo "vendored axe-core ${version} into ${here}; now update the version in README.md there"
