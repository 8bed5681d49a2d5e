"""Small models built with onnx.helper, so demos and tests need no torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _conv(name: str, x: str, cin: int, cout: int, rng: np.random.Generator, inits: list) -> onnx.NodeProto:
    w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
    b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
    inits += [numpy_helper.from_array(w, f"{name}.weight"), numpy_helper.from_array(b, f"{name}.bias")]
    return helper.make_node(
        "Conv", [x, f"{name}.weight", f"{name}.bias"], [f"{name}.out"], name=name, pads=[1, 1, 1, 1]
    )


def demo_cnn(size: int = 64, seed: int = 0) -> onnx.ModelProto:
    """A small CNN with a residual skip connection and a dynamic batch dimension.

    image[N,3,size,size] -> stem conv/relu -> (conv/relu -> conv) + skip -> relu
    -> maxpool -> conv/relu -> global average pool -> flatten -> gemm -> logits[N,10]
    Cutting inside the residual block sends two tensors (the skip and the branch).
    """
    rng = np.random.default_rng(seed)
    inits: list = []
    nodes = [
        _conv("stem", "image", 3, 16, rng, inits),
        helper.make_node("Relu", ["stem.out"], ["stem.relu"], name="stem_relu"),
        _conv("block.conv1", "stem.relu", 16, 16, rng, inits),
        helper.make_node("Relu", ["block.conv1.out"], ["block.relu1"], name="block_relu1"),
        _conv("block.conv2", "block.relu1", 16, 16, rng, inits),
        helper.make_node("Add", ["block.conv2.out", "stem.relu"], ["block.sum"], name="block_add"),
        helper.make_node("Relu", ["block.sum"], ["block.out"], name="block_relu"),
        helper.make_node("MaxPool", ["block.out"], ["pool.out"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        _conv("head.conv", "pool.out", 16, 32, rng, inits),
        helper.make_node("Relu", ["head.conv.out"], ["head.relu"], name="head_relu"),
        helper.make_node("GlobalAveragePool", ["head.relu"], ["gap.out"], name="gap"),
        helper.make_node("Flatten", ["gap.out"], ["flat"], name="flatten", axis=1),
    ]
    fc_w = (rng.standard_normal((10, 32)) * 0.1).astype(np.float32)
    fc_b = np.zeros(10, np.float32)
    inits += [numpy_helper.from_array(fc_w, "fc.weight"), numpy_helper.from_array(fc_b, "fc.bias")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes,
        "democnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="splitpoint")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save_demo_cnn(path: str | Path, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(demo_cnn(**kwargs), path)
    return path


def mlp(width: int, layers: int, seed: int = 0, reduce_output: bool = False) -> onnx.ModelProto:
    """MatMul+Relu layers ``x[N,width] -> r0 ... r{layers-1}`` whose weights outweigh a row's compute.

    The worker's heavy case (batching, queues). With ``reduce_output`` the
    answer is one number per row (``score[N]``), so responses stay small.
    """
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        x = f"r{i}"
    output = helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])
    if reduce_output:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
        nodes.append(helper.make_node("ReduceSum", [x, "axes"], ["score"], keepdims=0))
        output = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])], [output], initializer=inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model
