#!/usr/bin/env bash
# Compile the platform-neutral Kotlin core and run its JUnit tests on the JVM against an exported bundle.
# Usage: run_tests.sh BUNDLE_DIR [FUSED_BUNDLE_DIR]   (the same model exported with --schedule fused; without it the
# fused-schedule test is skipped. Needs kotlinc, junit4 and org.json: apt-get install kotlin junit4 libandroid-json-java)
set -euo pipefail
bundle=$(cd "$1" && pwd)
fused=$([ -n "${2:-}" ] && cd "$2" && pwd || true)
here=$(cd "$(dirname "$0")" && pwd)
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
# org.json is part of Android; on a JVM Debian's libandroid-json-java provides the same classes.
cp="/usr/share/java/junit4.jar:/usr/share/java/hamcrest-core.jar:/usr/share/java/com.android.json.jar"
kotlinc -nowarn -cp "$cp" "$here"/src/main/kotlin/dev/vmoe/core/*.kt -d "$build/core.jar" 2>&1 | grep -v "^warning" || true
test -f "$build/core.jar"
kotlinc -nowarn -cp "$build/core.jar:$cp" "$here"/src/test/kotlin/dev/vmoe/core/*.kt -d "$build/tests.jar" 2>&1 | grep -v "^warning" || true
test -f "$build/tests.jar"
kotlin_lib=$(dirname "$(readlink -f "$(command -v kotlinc)")")/../lib
stdlib=$(ls /usr/share/java/kotlin-stdlib.jar 2>/dev/null || ls "$kotlin_lib"/kotlin-stdlib.jar)
# The routing rule's tie cases, shared with the Python and Swift tests (absent when the app is copied alone).
ties="$here/../../tests/data/routing_ties.json"
[ -f "$ties" ] || ties=""
java -Dvmoe.bundle="$bundle" -Dvmoe.fusedBundle="$fused" -Dvmoe.routingTies="$ties" -cp "$build/core.jar:$build/tests.jar:$cp:$stdlib" org.junit.runner.JUnitCore dev.vmoe.core.CoreTest
