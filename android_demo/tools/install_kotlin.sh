#!/usr/bin/env bash
# Install the Kotlin compiler of exactly the version gradle/libs.versions.toml declares, from the npm
# registry's kotlin-compiler package (the JetBrains JVM compiler distribution), checked against the sha256
# recorded below. Prints the compiler's home. Usage: tools/install_kotlin.sh [DEST_ROOT]
# (default: <repo>/.toolchain; already installed versions are reused).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n 's/^kotlin *= *"\([^"]*\)".*/\1/p' "$here/../gradle/libs.versions.toml")
[ -n "$version" ] || { echo "error: no kotlin version in gradle/libs.versions.toml" >&2; exit 2; }

# sha256 of https://registry.npmjs.org/kotlin-compiler/-/kotlin-compiler-<version>.tgz, one line per version
# the catalog may name: a new version needs its digest added here.
case "$version" in
    2.1.0) sha256=19daa0af596bce6b6dc31a6003fa363c12f126bac024bed12a29e753abf915e4 ;;
    *) echo "error: no recorded sha256 for kotlin-compiler $version: add it to tools/install_kotlin.sh" >&2; exit 2 ;;
esac

root=${1:-$here/../../.toolchain}
mkdir -p "$root"
root=$(cd "$root" && pwd)
home="$root/kotlinc-$version"
if [ -x "$home/bin/kotlinc" ] && [ "$(cut -d- -f1 "$home/build.txt")" = "$version" ]; then
    echo "$home"
    exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "error: npm not found: install Node.js (apt-get install npm) to fetch kotlin-compiler $version" >&2; exit 2; }
tmp=$(mktemp -d "$root/.kotlinc-$version.partial.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "fetching kotlin-compiler $version from the npm registry" >&2
(cd "$tmp" && npm pack --silent "kotlin-compiler@$version" >/dev/null)
tarball="$tmp/kotlin-compiler-$version.tgz"
echo "$sha256  $tarball" | sha256sum --check --status || { echo "error: kotlin-compiler-$version.tgz does not match its recorded sha256" >&2; exit 2; }
tar -xzf "$tarball" -C "$tmp"
chmod +x "$tmp"/package/bin/*
rm -rf "$home"
mv "$tmp/package" "$home"
echo "$home"
