// Overwritten at build time by the "Pin bundle digest" pre-build script in project.yml with the contents of
// bundle/manifest.sha256, so the app refuses any manifest but the one it was built with. Empty: no bundle
// was embedded when this file was last written; the app then refuses to load one.
let pinnedBundleDigest = ""
