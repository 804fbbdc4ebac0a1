import java.io.File

plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
    alias(libs.plugins.kotlin.compose)
}

android {
    namespace = "dev.vmoe.demo"
    compileSdk = libs.versions.compile.sdk.get().toInt()
    defaultConfig {
        applicationId = "dev.vmoe.demo"
        minSdk = libs.versions.min.sdk.get().toInt()
        targetSdk = libs.versions.compile.sdk.get().toInt()
        versionCode = 1
        versionName = "0.1.0"
        // Pin every embedded bundle: the digest vmoe-export wrote beside each manifest is built into the app,
        // and the core refuses a manifest whose sha256 differs (see BundleStore.open). A bundle without a valid
        // manifest.sha256 fails the build here rather than the app at run time.
        val pins = (file("src/main/assets/bundles").listFiles() ?: emptyArray()).filter { it.isDirectory }.sortedBy { it.name }
            .joinToString(",") { dir ->
                val pin = File(dir, "manifest.sha256").takeIf { it.isFile }?.readText()?.trim() ?: ""
                if (!pin.matches(Regex("[0-9a-f]{64}")))
                    throw GradleException("${dir.path} has no valid manifest.sha256: copy the whole bundle vmoe-export wrote")
                "${dir.name}=$pin"
            }
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
    // Versions: gradle/libs.versions.toml.
    implementation(libs.executorch.android)
    implementation(libs.litert)
    implementation(libs.fbjni)
    implementation(libs.soloader)
    implementation(platform(libs.compose.bom))
    implementation(libs.compose.material3)
    implementation(libs.compose.ui)
    implementation(libs.activity.compose)
}
