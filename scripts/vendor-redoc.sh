#!/usr/bin/env bash
# Vendors Redoc's standalone bundle (npm package `redoc`, pinned below) into src/api/assets/,
# from where the binary serves /docs without asking any other origin. Run it to move to another
# version, then commit the files it writes. Needs npm (Debian's `npm`).
set -euo pipefail
cd "$(dirname "$0")/.."
version="2.5.2"
out=src/api/assets
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "redoc@$version" >/dev/null)
tar -xzf "$work/redoc-$version.tgz" -C "$work" \
    package/bundles/redoc.standalone.js package/bundles/redoc.standalone.js.LICENSE.txt package/LICENSE
mkdir -p "$out"
cp "$work/package/bundles/redoc.standalone.js" "$out/redoc.standalone.js"
cat "$work/package/LICENSE" "$work/package/bundles/redoc.standalone.js.LICENSE.txt" >"$out/redoc.LICENSE.txt"
printf 'redoc %s\nsha256 %s\n' "$version" "$(sha256sum "$out/redoc.standalone.js" | cut -d' ' -f1)" >"$out/redoc.VERSION"
cat "$out/redoc.VERSION"
