"""Small .tflite models written with LiteRT's flatbuffer schema, so tests need no TensorFlow.

``float_cnn`` and ``int8_cnn`` share one set of weights and one graph: a stem
conv, a residual block (two convs and a skip ADD), average pooling, a head
conv, a global MEAN, a RESHAPE and a FULLY_CONNECTED layer, in NHWC with a
dynamic batch. ``float_cnn(float16_weights=True)`` stores the weights as
float16 and DEQUANTIZEs them when it runs, as float16-converted models do.
The int8 model quantizes that graph the way the TFLite
converter does (per-channel conv weights, int32 biases, activations
calibrated on random inputs) between a QUANTIZE and a DEQUANTIZE. Tensor
names follow the converter's style. ``reference`` computes the float model
in numpy, to check LiteRT runs what was built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from partitioner.tflite.flatbuffer import schema, serialize

S = schema
INPUT = "serving_default_image:0"
OUTPUT = "StatefulPartitionedCall:0"
BLOCK_CUT = ["model/block/conv1/Relu", "model/stem/Relu"]  # inside the residual block: branch and skip
POOL_CUT = "model/pool/AvgPool"
_TYPES = {np.dtype(np.float32): S.TensorType.FLOAT32, np.dtype(np.float16): S.TensorType.FLOAT16,
          np.dtype(np.int8): S.TensorType.INT8,
          np.dtype(np.int32): S.TensorType.INT32, np.dtype(np.bool_): S.TensorType.BOOL}


@dataclass
class Weights:
    """Conv kernels are [out, kh, kw, in] (TFLite's layout); ``fc`` is [out, in]."""

    convs: dict[str, tuple[np.ndarray, np.ndarray]]
    fc: tuple[np.ndarray, np.ndarray]


CONVS = [("stem", 3, 8), ("block/conv1", 8, 8), ("block/conv2", 8, 8), ("head", 8, 16)]


def weights(seed: int = 0) -> Weights:
    rng = np.random.default_rng(seed)
    convs = {
        name: ((rng.standard_normal((cout, 3, 3, cin)) * np.sqrt(2.0 / (9 * cin))).astype(np.float32),
               (rng.standard_normal(cout) * 0.05).astype(np.float32))
        for name, cin, cout in CONVS
    }
    fc = ((rng.standard_normal((10, 16)) * 0.3).astype(np.float32), (rng.standard_normal(10) * 0.05).astype(np.float32))
    return Weights(convs, fc)


# -- the numpy reference ------------------------------------------------------


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3, stride 1, SAME padding, NHWC."""
    n, h, wd, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, wd, w.shape[0]), np.float64)
    for i in range(3):
        for j in range(3):
            out += np.einsum("nhwc,oc->nhwo", padded[:, i : i + h, j : j + wd, :], w[:, i, j, :])
    return out + b


def reference_activations(image: np.ndarray, w: Weights) -> dict[str, np.ndarray]:
    """Every activation of the float model, by the role it plays (float64)."""
    relu = lambda a: np.maximum(a, 0.0)
    act = {"image": image.astype(np.float64)}
    act["stem"] = relu(_conv(act["image"], *w.convs["stem"]))
    act["conv1"] = relu(_conv(act["stem"], *w.convs["block/conv1"]))
    act["conv2"] = _conv(act["conv1"], *w.convs["block/conv2"])
    act["add"] = relu(act["conv2"] + act["stem"])
    n, h, wd, c = act["add"].shape
    act["pool"] = act["add"].reshape(n, h // 2, 2, wd // 2, 2, c).mean(axis=(2, 4))
    act["head"] = relu(_conv(act["pool"], *w.convs["head"]))
    act["gap"] = act["head"].mean(axis=(1, 2))
    act["logits"] = act["gap"] @ w.fc[0].T.astype(np.float64) + w.fc[1]
    return act


def reference(image: np.ndarray, seed: int = 0) -> np.ndarray:
    """The float model's logits for ``image`` [N,H,W,3], in numpy."""
    return reference_activations(image, weights(seed))["logits"].astype(np.float32)


# -- writing flatbuffers ----------------------------------------------------------


@dataclass
class ModelBuilder:
    """Subgraphs written one after the other; buffers and operator codes are shared by all."""

    subgraphs: list[S.SubGraphT] = field(default_factory=list)
    tensors: list[S.TensorT] = field(default_factory=list)  # of the subgraph being written
    operators: list[S.OperatorT] = field(default_factory=list)
    buffers: list[S.BufferT] = field(default_factory=lambda: [S.BufferT()])  # buffer 0: the empty sentinel
    codes: list[S.OperatorCodeT] = field(default_factory=list)

    def tensor(
        self,
        name: str,
        shape: Sequence[int],
        dtype: type | np.dtype = np.float32,
        data: np.ndarray | None = None,
        quant: tuple[Sequence[float], Sequence[int]] | None = None,
        axis: int = 0,
        batch: bool = True,
    ) -> int:
        """A new tensor; ``batch`` makes dim 0 dynamic; ``quant`` is (scales, zero points) along ``axis``."""
        t = S.TensorT()
        t.name, t.shape, t.type = name, list(shape), _TYPES[np.dtype(dtype)]
        if data is not None:
            t.buffer = self._buffer(np.ascontiguousarray(data, dtype=dtype).tobytes())
        elif batch and shape:
            t.shapeSignature = [-1, *shape[1:]]
        if quant is not None:
            t.quantization = S.QuantizationParametersT()
            t.quantization.scale = [float(s) for s in quant[0]]
            t.quantization.zeroPoint = [int(z) for z in quant[1]]
            t.quantization.quantizedDimension = axis
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int], options_type: int = 0, options: object = None,
           version: int = 1, custom: str | None = None) -> None:
        key = (code, version, custom)
        opcode = next((i for i, c in enumerate(self.codes) if (c.builtinCode, c.version, c.customCode) == key), None)
        if opcode is None:
            c = S.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version, c.customCode = code, min(code, 127), version, custom
            self.codes.append(c)
            opcode = len(self.codes) - 1
        o = S.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = opcode, inputs, outputs
        o.builtinOptionsType, o.builtinOptions = options_type, options
        self.operators.append(o)

    def end_subgraph(self, inputs: list[int], outputs: list[int], name: str) -> None:
        g = S.SubGraphT()
        g.tensors, g.inputs, g.outputs, g.operators, g.name = self.tensors, inputs, outputs, self.operators, name
        self.subgraphs.append(g)
        self.tensors, self.operators = [], []

    def model(self) -> S.ModelT:
        """The model, with a serving signature and min-runtime metadata as converters write them."""
        m = S.ModelT()
        m.version, m.description = 3, "splitpoint test model"
        m.operatorCodes, m.subgraphs = self.codes, self.subgraphs
        meta = S.MetadataT()
        meta.name, meta.buffer = "min_runtime_version", self._buffer(b"1.14.0".ljust(16, b"\0"))
        m.buffers, m.metadata = self.buffers, [meta]
        main = self.subgraphs[0]
        sig = S.SignatureDefT()
        sig.signatureKey, sig.subgraphIndex = "serving_default", 0
        sig.inputs = [_tensor_map(f"input_{k}", i) for k, i in enumerate(main.inputs)]
        sig.outputs = [_tensor_map(f"output_{k}", i) for k, i in enumerate(main.outputs)]
        m.signatureDefs = [sig]
        return m

    def _buffer(self, data: bytes) -> int:
        self.buffers.append(S.BufferT())
        self.buffers[-1].data = np.frombuffer(data, np.uint8)
        return len(self.buffers) - 1


def _tensor_map(name: str, index: int) -> S.TensorMapT:
    t = S.TensorMapT()
    t.name, t.tensorIndex = name, index
    return t


def _conv_options(relu: bool) -> S.Conv2DOptionsT:
    o = S.Conv2DOptionsT()
    o.padding, o.strideW, o.strideH, o.dilationWFactor, o.dilationHFactor = S.Padding.SAME, 1, 1, 1, 1
    o.fusedActivationFunction = S.ActivationFunctionType.RELU if relu else S.ActivationFunctionType.NONE
    return o


def _add_options(relu: bool) -> S.AddOptionsT:
    o = S.AddOptionsT()
    o.fusedActivationFunction = S.ActivationFunctionType.RELU if relu else S.ActivationFunctionType.NONE
    return o


def _pool_options() -> S.Pool2DOptionsT:
    o = S.Pool2DOptionsT()
    o.padding, o.strideW, o.strideH, o.filterWidth, o.filterHeight = S.Padding.VALID, 2, 2, 2, 2
    return o


def _mean_options() -> S.ReducerOptionsT:
    o = S.ReducerOptionsT()
    o.keepDims = False
    return o


def _reshape_options() -> S.ReshapeOptionsT:
    o = S.ReshapeOptionsT()
    o.newShape = [-1, 16]
    return o


# -- the CNN, float and int8 ----------------------------------------------------------------

_NAMES = {
    "stem": "model/stem/Relu",
    "conv1": "model/block/conv1/Relu",
    "conv2": "model/block/conv2/BiasAdd",
    "add": "model/block/add/Relu",
    "pool": POOL_CUT,
    "head": "model/head/Relu",
    "gap": "model/gap/Mean",
}


@dataclass(frozen=True)
class Quant:
    """Per-tensor int8 parameters of each activation (by role), from calibration."""

    params: dict[str, tuple[float, int]]

    @classmethod
    def calibrate(cls, w: Weights, size: int, samples: int = 8) -> Quant:
        image = np.random.default_rng(1234).standard_normal((samples, size, size, 3))
        act = reference_activations(image, w)
        act["pool"] = act["add"]  # pooling keeps its input's parameters, as TFLite requires
        params = {}
        for role, a in act.items():
            lo, hi = min(float(a.min()), 0.0), max(float(a.max()), 0.0)
            scale = (hi - lo) / 255.0 or 1.0
            params[role] = (scale, int(np.clip(round(-128 - lo / scale), -128, 127)))
        params["gap"] = params["head"]  # MEAN and RESHAPE keep their input's parameters
        return cls(params)


def _cnn(size: int, seed: int, int8: bool, float16_weights: bool = False) -> S.ModelT:
    w, b = weights(seed), ModelBuilder()
    q = Quant.calibrate(w, size) if int8 else None
    act_type = np.int8 if int8 else np.float32

    def activation(role: str, name: str, shape: list[int]) -> int:
        quant = None if q is None else ([q.params[role][0]], [q.params[role][1]])
        return b.tensor(name, shape, act_type, quant=quant)

    def weight(name: str, value: np.ndarray) -> int:
        if not float16_weights:
            return b.tensor(name, value.shape, data=value)
        half = b.tensor(f"{name}_fp16", value.shape, np.float16, value.astype(np.float16))
        full = b.tensor(name, value.shape, batch=False)
        b.op(S.BuiltinOperator.DEQUANTIZE, [half], [full], S.BuiltinOptions.DequantizeOptions, S.DequantizeOptionsT(),
             version=3)
        return full

    def conv(role: str, key: str, x: int, x_role: str, shape: list[int], relu: bool) -> int:
        kernel, bias = w.convs[key]
        if q is None:
            wt = weight(f"model/{key}/Conv2D", kernel)
            bt = weight(f"model/{key}/BiasAdd/ReadVariableOp", bias)
        else:
            scales = np.maximum(np.abs(kernel).reshape(kernel.shape[0], -1).max(axis=1), 1e-8) / 127.0
            qk = np.clip(np.round(kernel / scales[:, None, None, None]), -127, 127).astype(np.int8)
            bias_scales = scales * q.params[x_role][0]
            qb = np.round(bias / bias_scales).astype(np.int32)
            zeros = [0] * len(scales)
            wt = b.tensor(f"model/{key}/Conv2D", kernel.shape, np.int8, qk, quant=(scales, zeros))
            bt = b.tensor(f"model/{key}/BiasAdd/ReadVariableOp", bias.shape, np.int32, qb, quant=(bias_scales, zeros))
        y = activation(role, _NAMES[role], shape)
        b.op(S.BuiltinOperator.CONV_2D, [x, wt, bt], [y], S.BuiltinOptions.Conv2DOptions, _conv_options(relu),
             version=3 if int8 else 1)
        return y

    image = b.tensor(INPUT, [1, size, size, 3])
    x = image
    if q is not None:
        x = activation("image", "tfl.quantize", [1, size, size, 3])
        b.op(S.BuiltinOperator.QUANTIZE, [image], [x], S.BuiltinOptions.QuantizeOptions, S.QuantizeOptionsT())
    v = 2 if int8 else 1
    full, half = [1, size, size, 8], [1, size // 2, size // 2, 8]
    stem = conv("stem", "stem", x, "image", full, relu=True)
    conv1 = conv("conv1", "block/conv1", stem, "stem", full, relu=True)
    conv2 = conv("conv2", "block/conv2", conv1, "conv1", full, relu=False)
    add = activation("add", _NAMES["add"], full)
    b.op(S.BuiltinOperator.ADD, [conv2, stem], [add], S.BuiltinOptions.AddOptions, _add_options(True), version=v)
    pool = activation("pool", _NAMES["pool"], half)
    b.op(S.BuiltinOperator.AVERAGE_POOL_2D, [add], [pool], S.BuiltinOptions.Pool2DOptions, _pool_options(), version=v)
    head = conv("head", "head", pool, "pool", [1, size // 2, size // 2, 16], relu=True)
    axes = b.tensor("model/gap/Mean/reduction_indices", [2], np.int32, np.array([1, 2], np.int32))
    gap = activation("gap", _NAMES["gap"], [1, 16])
    b.op(S.BuiltinOperator.MEAN, [head, axes], [gap], S.BuiltinOptions.ReducerOptions, _mean_options(), version=v)
    new_shape = b.tensor("model/flatten/Const", [2], np.int32, np.array([-1, 16], np.int32))
    flat = activation("gap", "model/flatten/Reshape", [1, 16])
    b.op(S.BuiltinOperator.RESHAPE, [gap, new_shape], [flat], S.BuiltinOptions.ReshapeOptions, _reshape_options())
    fc_w, fc_b = w.fc
    fc_options = S.FullyConnectedOptionsT()
    if q is None:
        wt = weight("model/fc/MatMul", fc_w)
        bt = weight("model/fc/BiasAdd/ReadVariableOp", fc_b)
        logits = b.tensor(OUTPUT, [1, 10])
        b.op(S.BuiltinOperator.FULLY_CONNECTED, [flat, wt, bt], [logits], S.BuiltinOptions.FullyConnectedOptions, fc_options)
    else:
        scale = max(float(np.abs(fc_w).max()), 1e-8) / 127.0
        qw = np.clip(np.round(fc_w / scale), -127, 127).astype(np.int8)
        bias_scale = scale * q.params["gap"][0]
        wt = b.tensor("model/fc/MatMul", fc_w.shape, np.int8, qw, quant=([scale], [0]))
        bt = b.tensor("model/fc/BiasAdd/ReadVariableOp", fc_b.shape, np.int32, np.round(fc_b / bias_scale).astype(np.int32),
                      quant=([bias_scale], [0]))
        q_logits = activation("logits", "model/fc/BiasAdd", [1, 10])
        b.op(S.BuiltinOperator.FULLY_CONNECTED, [flat, wt, bt], [q_logits], S.BuiltinOptions.FullyConnectedOptions,
             fc_options, version=4)
        logits = b.tensor(OUTPUT, [1, 10])
        b.op(S.BuiltinOperator.DEQUANTIZE, [q_logits], [logits], S.BuiltinOptions.DequantizeOptions,
             S.DequantizeOptionsT(), version=2)
    b.end_subgraph([image], [logits], "main")
    return b.model()


def float_cnn(size: int = 16, seed: int = 0, float16_weights: bool = False) -> S.ModelT:
    """The float32 CNN: image[N,size,size,3] -> logits[N,10]."""
    return _cnn(size, seed, int8=False, float16_weights=float16_weights)


def int8_cnn(size: int = 16, seed: int = 0) -> S.ModelT:
    """The same CNN quantized to int8 inside (float input and output, like converted models)."""
    return _cnn(size, seed, int8=True)


def save(model: S.ModelT, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(serialize(model))
    return path


def while_model() -> S.ModelT:
    """A WHILE loop between two ADDs: x[1,4] -> pre = x + 1 -> 3 x (acc * 2) -> out = acc + pre.

    Subgraph 1 is the loop condition (counter < 3), subgraph 2 its body.
    """
    b, i32 = ModelBuilder(), np.int32
    x = b.tensor("x", [1, 4], batch=False)
    one = b.tensor("one", [1, 4], data=np.ones((1, 4), np.float32))
    pre = b.tensor("pre", [1, 4], batch=False)
    b.op(S.BuiltinOperator.ADD, [x, one], [pre], S.BuiltinOptions.AddOptions, _add_options(False))
    counter = b.tensor("counter", [], i32, np.array(0, i32))
    loop = [b.tensor("while:0", [], i32), b.tensor("while:1", [1, 4], batch=False)]
    options = S.WhileOptionsT()
    options.condSubgraphIndex, options.bodySubgraphIndex = 1, 2
    b.op(S.BuiltinOperator.WHILE, [counter, pre], loop, S.BuiltinOptions.WhileOptions, options)
    out = b.tensor("out", [1, 4], batch=False)
    b.op(S.BuiltinOperator.ADD, [loop[1], pre], [out], S.BuiltinOptions.AddOptions, _add_options(False))
    b.end_subgraph([x], [out], "main")

    args = [b.tensor("cond/i", [], i32), b.tensor("cond/acc", [1, 4], batch=False)]
    limit = b.tensor("cond/limit", [], i32, np.array(3, i32))
    less = b.tensor("cond/Less", [], np.bool_)
    b.op(S.BuiltinOperator.LESS, [args[0], limit], [less], S.BuiltinOptions.LessOptions, S.LessOptionsT())
    b.end_subgraph(args, [less], "cond")

    args = [b.tensor("body/i", [], i32), b.tensor("body/acc", [1, 4], batch=False)]
    step = b.tensor("body/step", [], i32, np.array(1, i32))
    two = b.tensor("body/two", [1, 4], data=np.full((1, 4), 2, np.float32))
    nxt = [b.tensor("body/i_next", [], i32), b.tensor("body/acc_next", [1, 4], batch=False)]
    b.op(S.BuiltinOperator.ADD, [args[0], step], [nxt[0]], S.BuiltinOptions.AddOptions, _add_options(False))
    b.op(S.BuiltinOperator.MUL, [args[1], two], [nxt[1]], S.BuiltinOptions.MulOptions, S.MulOptionsT())
    b.end_subgraph(args, nxt, "body")
    return b.model()


def custom_op_model(op: str = "SplitpointTestOp") -> S.ModelT:
    """x -> RELU -> a custom operator no LiteRT build has -> y."""
    b = ModelBuilder()
    x, hidden, y = b.tensor("x", [1, 4]), b.tensor("relu", [1, 4]), b.tensor("y", [1, 4])
    b.op(S.BuiltinOperator.RELU, [x], [hidden])
    b.op(S.BuiltinOperator.CUSTOM, [hidden], [y], custom=op)
    b.end_subgraph([x], [y], "main")
    return b.model()


def random_model() -> S.ModelT:
    """x -> x + RANDOM_UNIFORM (unseeded: fresh noise every run) -> RELU: no split can reproduce it."""
    b = ModelBuilder()
    x = b.tensor("x", [1, 4], batch=False)
    shape = b.tensor("noise/shape", [2], np.int32, np.array([1, 4], np.int32))
    noise, noisy, out = (b.tensor(name, [1, 4], batch=False) for name in ("noise", "noisy", "out"))
    b.op(S.BuiltinOperator.RANDOM_UNIFORM, [shape], [noise], S.BuiltinOptions.RandomOptions, S.RandomOptionsT())
    b.op(S.BuiltinOperator.ADD, [x, noise], [noisy], S.BuiltinOptions.AddOptions, _add_options(False))
    b.op(S.BuiltinOperator.RELU, [noisy], [out])
    b.end_subgraph([x], [out], "main")
    return b.model()
