package dev.vmoe.demo

import android.os.Build
import android.os.Debug
import dev.vmoe.core.DeviceInfo
import dev.vmoe.core.MemoryProbe

/** What the phone says about itself, for the core's DeviceBench (both benchmark entry points use these). */
object Platform {
    val device: DeviceInfo
        get() = DeviceInfo(Build.MANUFACTURER, Build.MODEL, Build.VERSION.RELEASE, Build.VERSION.SDK_INT, Build.SUPPORTED_ABIS.toList())

    /** The app process's PSS in kB. */
    val pss = MemoryProbe { Debug.getPss() }
}
