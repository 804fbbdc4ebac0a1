package dev.vmoe.demo

import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import dev.vmoe.core.GraphEntry
import dev.vmoe.core.GraphLoader
import dev.vmoe.core.GraphRunner
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import java.io.File

/** ExecuTorch adapter: one .pte per graph, XNNPACK-delegated, inputs/outputs in manifest order. The file is
 *  mmapped (LOAD_MODE_MMAP) so an expert's weights stay clean, reclaimable pages until XNNPACK packs them. */
class ExecuTorchRunner(file: File, private val shapes: List<LongArray>, threads: Int) : GraphRunner {
    private val module = Module.load(file.absolutePath, Module.LOAD_MODE_MMAP, threads)

    override fun run(inputs: List<FloatArray>): List<FloatArray> {
        val args = inputs.mapIndexed { i, x -> EValue.from(Tensor.fromBlob(x, shapes[i])) }
        return module.forward(*args.toTypedArray()).map { it.toTensor().dataAsFloatArray }
    }

    override fun close() = module.destroy()
}

/** LiteRT adapter (CompiledModel API, CPU through XNNPACK). litert-torch names tensors args_N / output_N in
 *  positional order, which is the manifest order, so buffers are used positionally. */
class LiteRtRunner(file: File, threads: Int) : GraphRunner {
    private val model = CompiledModel.create(file.absolutePath,
        CompiledModel.Options(Accelerator.CPU).apply { cpuOptions = CompiledModel.CpuOptions(numThreads = threads) })
    private val inputBuffers = model.createInputBuffers()
    private val outputBuffers = model.createOutputBuffers()

    override fun run(inputs: List<FloatArray>): List<FloatArray> {
        inputs.forEachIndexed { i, x -> inputBuffers[i].writeFloat(x) }
        model.run(inputBuffers, outputBuffers)
        return outputBuffers.map { it.readFloat() }
    }

    override fun close() {
        inputBuffers.forEach { it.close() }
        outputBuffers.forEach { it.close() }
        model.close()
    }
}

/** The graph loader for a bundle target, each graph's runtime on [threads] threads. */
fun loaderFor(target: String, threads: Int = 1): GraphLoader = when (target) {
    "executorch" -> { entry, file -> ExecuTorchRunner(file, shapesOf(entry), threads) }
    "tflite" -> { _, file -> LiteRtRunner(file, threads) }
    else -> throw IllegalArgumentException("this app runs executorch and tflite bundles, not '$target'")
}

/** A single graph outside a bundle (the dense twin vmoe-bench pushes), fed one input of [inputShape]. */
fun singleGraph(target: String, file: File, inputShape: LongArray, threads: Int): GraphRunner = when (target) {
    "executorch" -> ExecuTorchRunner(file, listOf(inputShape), threads)
    "tflite" -> LiteRtRunner(file, threads)
    else -> throw IllegalArgumentException("this app runs executorch and tflite graphs, not '$target'")
}

private fun shapesOf(entry: GraphEntry): List<LongArray> = entry.inputs.map { s -> s.shape.map { it.toLong() }.toLongArray() }
