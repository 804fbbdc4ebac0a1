import java.io.File

plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
    id("org.jetbrains.kotlin.plugin.compose")
}

android {
    namespace = "dev.vmoe.demo"
    compileSdk = 35
    defaultConfig {
        applicationId = "dev.vmoe.demo"
        minSdk = 24  // LiteRT 2.3 AARs declare minSdk 24
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        // Pin every embedded bundle: the digest vmoe-export wrote beside each manifest is built into the app,
        // and the core refuses a manifest whose sha256 differs (see BundleStore.open).
        val pins = file("src/main/assets/bundles").listFiles()
            ?.filter { File(it, "manifest.sha256").isFile }?.sortedBy { it.name }
            ?.joinToString(",") { "${it.name}=${File(it, "manifest.sha256").readText().trim()}" } ?: ""
        buildConfigField("String", "BUNDLE_DIGESTS", "\"$pins\"")
    }
    buildFeatures { compose = true; buildConfig = true }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
    // Model files must stay uncompressed so they can be copied out (and mmapped) quickly.
    androidResources { noCompress += listOf("pte", "tflite") }
}

dependencies {
    implementation(project(":core"))
    implementation("org.pytorch:executorch-android:${property("executorchVersion")}")
    implementation("com.google.ai.edge.litert:litert:${property("litertVersion")}")
    implementation("com.facebook.fbjni:fbjni:0.7.0")
    implementation("com.facebook.soloader:soloader:0.12.1")
    implementation(platform("androidx.compose:compose-bom:2024.12.01"))
    implementation("androidx.compose.material3:material3")
    implementation("androidx.compose.ui:ui")
    implementation("androidx.activity:activity-compose:1.9.3")
}
