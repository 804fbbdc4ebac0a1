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

/** ExecuTorch adapter: one .pte per graph, XNNPACK-delegated, inputs/outputs in manifest order. */
class ExecuTorchRunner(file: File, private val entry: GraphEntry) : GraphRunner {
    private val module = Module.load(file.absolutePath)

    override fun run(inputs: List<FloatArray>): List<FloatArray> {
        val args = inputs.mapIndexed { i, x ->
            EValue.from(Tensor.fromBlob(x, entry.inputs[i].shape.map { it.toLong() }.toLongArray()))
        }
        return module.forward(*args.toTypedArray()).map { it.toTensor().dataAsFloatArray }
    }

    override fun close() = module.destroy()
}

/** LiteRT adapter (CompiledModel API, CPU). litert-torch names tensors args_N / output_N in positional
 *  order, which is the manifest order, so buffers are used positionally. */
class LiteRtRunner(file: File) : GraphRunner {
    private val model = CompiledModel.create(file.absolutePath, CompiledModel.Options(Accelerator.CPU))
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

fun loaderFor(target: String): GraphLoader = when (target) {
    "executorch" -> { entry, file -> ExecuTorchRunner(file, entry) }
    "tflite" -> { _, file -> LiteRtRunner(file) }
    else -> throw IllegalArgumentException("this app runs executorch and tflite bundles, not '$target'")
}
