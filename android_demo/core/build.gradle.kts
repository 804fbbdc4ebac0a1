// Platform-neutral routing core: plain Kotlin/JVM, no Android or backend APIs, unit-tested on the JVM.
plugins { alias(libs.plugins.kotlin.jvm) }

kotlin { jvmToolchain(17) }

dependencies {
    // Android ships org.json in the platform, so the app must not bundle a second copy: compile against it
    // only, and give the JVM tests a real one.
    compileOnly(libs.json)
    testImplementation(libs.json)
    testImplementation(libs.junit)
}

tasks.test {
    // ./gradlew :core:test -Pvmoe.bundle=/path/to/bundles/executorch  (see run_tests.sh for the other properties)
    systemProperty("vmoe.bundle", (project.findProperty("vmoe.bundle") ?: "${rootDir}/app/src/main/assets/bundles/executorch").toString())
    systemProperty("vmoe.fusedBundle", (project.findProperty("vmoe.fusedBundle") ?: "").toString())
    systemProperty("vmoe.routingTies", "${rootDir}/../tests/data/routing_ties.json")
}
