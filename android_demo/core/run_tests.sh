#!/usr/bin/env bash
# Compile the platform-neutral Kotlin core with the Kotlin compiler gradle/libs.versions.toml declares
# (tools/install_kotlin.sh installs it; $KOTLIN_HOME overrides) and run its JUnit tests on the JVM
# against exported bundles of one model.
# Usage: run_tests.sh BUNDLE_DIR [FUSED_BUNDLE_DIR [INT8_BUNDLE_DIR [SHARED_BUNDLE_DIR]]]
#   BUNDLE_DIR: the model exported with --schedule per-layer;
#   FUSED_BUNDLE_DIR: the same model exported with --schedule fused, the default at k=1 (its tests are skipped
#   without it); INT8_BUNDLE_DIR: a fused int8 bundle of it, whose golden vectors the fused tests run on too;
#   SHARED_BUNDLE_DIR: a fused bundle whose paths keep their common weights in experts/shared.bin (LiteRT's).
# Environment: VMOE_BENCH_OUT=FILE makes the device-benchmark test write its JSON there.
# Needs Java 17, junit4 and org.json on a JVM: apt-get install junit4 libandroid-json-java.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: run_tests.sh BUNDLE_DIR [FUSED_BUNDLE_DIR [INT8_BUNDLE_DIR [SHARED_BUNDLE_DIR]]]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
bundle=$(cd "$1" && pwd)
fused=$([ -n "${2:-}" ] && cd "$2" && pwd || true)
int8=$([ -n "${3:-}" ] && cd "$3" && pwd || true)
shared=$([ -n "${4:-}" ] && cd "$4" && pwd || true)
version=$(sed -n 's/^kotlin *= *"\([^"]*\)".*/\1/p' "$here/../gradle/libs.versions.toml")
home=${KOTLIN_HOME:-$here/../../.toolchain/kotlinc-$version}
[ -x "$home/bin/kotlinc" ] || { echo "error: no Kotlin $version compiler at $home: run android_demo/tools/install_kotlin.sh" >&2; exit 2; }
installed=$(cut -d- -f1 "$home/build.txt")
[ "$installed" = "$version" ] || { echo "error: $home is Kotlin $installed, the build declares $version: run android_demo/tools/install_kotlin.sh" >&2; exit 2; }
cp="/usr/share/java/junit4.jar:/usr/share/java/hamcrest-core.jar:/usr/share/java/com.android.json.jar"
for jar in ${cp//:/ }; do
    [ -f "$jar" ] || { echo "error: $jar missing: apt-get install junit4 libandroid-json-java" >&2; exit 2; }
done
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
echo "kotlinc: $("$home/bin/kotlinc" -version 2>&1 | grep -o 'kotlinc-jvm [^ ]*')"
# -Werror: a deprecation the declared compiler warns about today is an error in its next release.
"$home/bin/kotlinc" -Werror -cp "$cp" "$here"/src/main/kotlin/dev/vmoe/core/*.kt -d "$build/core.jar"
"$home/bin/kotlinc" -Werror -cp "$build/core.jar:$cp" "$here"/src/test/kotlin/dev/vmoe/core/*.kt -d "$build/tests.jar"
# The routing rule's tie cases, shared with the Python and Swift tests (absent when the app is copied alone).
ties="$here/../../tests/data/routing_ties.json"
[ -f "$ties" ] || ties=""
run() {
    java -Dvmoe.kotlinVersion="$installed" -Dvmoe.bundle="$1" -Dvmoe.fusedBundle="$2" -Dvmoe.routingTies="$ties" \
        -Dvmoe.sharedBundle="${3:-}" \
        -Dvmoe.benchOut="${VMOE_BENCH_OUT:-}" -cp "$build/core.jar:$build/tests.jar:$cp:$home/lib/kotlin-stdlib.jar" \
        org.junit.runner.JUnitCore dev.vmoe.core.CoreTest dev.vmoe.core.AppLogicTest
}
echo "== fp32 per-layer bundle $bundle"
run "$bundle" "$fused" "$shared"
if [ -n "$int8" ]; then
    # An int8 bundle of a k=1 model is fused (its fp32 router a graph of its own): it takes the fused slot.
    echo "== int8 bundle $int8 (fused slot), beside the fp32 per-layer bundle"
    VMOE_BENCH_OUT="" run "$bundle" "$int8"
fi
