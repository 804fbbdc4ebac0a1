// Platform-neutral routing core: plain Kotlin/JVM, no Android or backend APIs, unit-tested on the JVM.
plugins { id("org.jetbrains.kotlin.jvm") }

kotlin { jvmToolchain(17) }

dependencies {
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    // ./gradlew :core:test -Pvmoe.bundle=/path/to/bundles/executorch
    systemProperty("vmoe.bundle", (project.findProperty("vmoe.bundle") ?: "${rootDir}/app/src/main/assets/bundle").toString())
}
