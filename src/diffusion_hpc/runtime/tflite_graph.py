"""A TensorFlow Lite model run as torch operations, batched, on any device and in any precision.

MediaPipe ships its models as ``.tflite`` files and runs them one image at a time on the CPU.
:class:`TFLiteGraph` reads such a file (the ``tflite`` package parses its flatbuffer; nothing is
converted ahead of time, nothing downloaded) and executes its operators in order with torch: every
4-D tensor is kept channels-first (NCHW), the constants become buffers (float16 weights dequantized
once at load), so ``.to(device, dtype)`` moves the whole graph and a batch of any size goes through
one call. Only the operators MediaPipe's pose landmark and pose detection models use are supported
(:data:`SUPPORTED`); any other is refused at load, naming it. Sparse constants (``DENSIFY``: the
detector's pruned float16 weights, TFLite's CSR format) are made dense once at load, as
``DEQUANTIZE`` outputs are.

The graph's outputs keep TFLite's layout: 4-D outputs channels-last (NHWC), as the ``.tflite``
declares them.

Checked against MediaPipe 0.10.21 (its ``InferenceCalculator`` with XNNPACK on the same input tensor,
read out through ``TensorsToFloatsCalculator``): MediaPipe Pose's full landmark model agrees within
float32 noise: landmarks 0.003 (of values up to 370), pose flag 1e-5, heatmap 1e-4, world landmarks
2e-5, segmentation logits 0.33 (of values up to 1800). Its pose flag output is a probability (the
graph ends in LOGISTIC), not a logit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffusion_hpc.errors import InputError

#: TFLite builtin operators :class:`TFLiteGraph` executes
SUPPORTED = ("ADD", "CONCATENATION", "CONV_2D", "DENSIFY", "DEPTH_TO_SPACE", "DEPTHWISE_CONV_2D", "DEQUANTIZE",
             "LOGISTIC", "MAX_POOL_2D", "PAD", "RESHAPE", "RESIZE_BILINEAR")  # fmt: skip
#: where a TFLite (NHWC) axis of a 4-D tensor lies in the NCHW tensors run here
_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}

#: TFLite tensor types of constants -> numpy dtype
_NUMPY_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64}


def _activation(x: torch.Tensor, code: int) -> torch.Tensor:
    """TFLite's fused activation ``code`` (ActivationFunctionType) on ``x``."""
    if code == 0:
        return x
    if code == 1:
        return F.relu(x)
    if code == 2:
        return x.clamp(-1.0, 1.0)
    if code == 3:
        return x.clamp(0.0, 6.0)
    if code == 4:
        return torch.tanh(x)
    raise InputError(f"TFLite fused activation {code} is not supported")


def densify(tflite, values: np.ndarray, sparsity, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The dense array of a sparse TFLite constant (``SparsityParameters``: each dimension DENSE or
    SPARSE_CSR, in the tensor's own order; block maps are not supported).

    Args:
        values: (nnz,) the stored values; sparsity: the tensor's ``SparsityParameters``; shape: its
            dense shape; name: the tensor, for errors.
    Returns:
        ``shape`` array of ``values``' dtype, zero where nothing is stored.
    Raises:
        InputError: a block map, or a traversal order other than the dimensions' own.
    """
    order = sparsity.TraversalOrderAsNumpy()
    if sparsity.BlockMapLength() or (isinstance(order, np.ndarray) and not np.array_equal(order, np.arange(len(shape)))):
        raise InputError(f"{name}: sparse constants with a block map or a reordered traversal are not supported")
    vector_types = {1: tflite.Int32Vector, 2: tflite.Uint16Vector, 3: tflite.Uint8Vector}

    def array(kind: int, table) -> np.ndarray:
        vector = vector_types[kind]()
        vector.Init(table.Bytes, table.Pos)
        return vector.ValuesAsNumpy().astype(np.int64)

    position = np.zeros(1, np.int64)  # flat dense index so far, per stored path
    parent = np.zeros(1, np.int64)  # index into the level's segments (the last level: into values)
    for level in range(sparsity.DimMetadataLength()):
        meta = sparsity.DimMetadata(level)
        size = int(shape[level])
        if meta.Format() == 0:  # DENSE
            step = np.arange(meta.DenseSize(), dtype=np.int64)
            position = (position[:, None] * size + step).reshape(-1)
            parent = (parent[:, None] * meta.DenseSize() + step).reshape(-1)
        else:  # SPARSE_CSR
            segments = array(meta.ArraySegmentsType(), meta.ArraySegments())
            indices = array(meta.ArrayIndicesType(), meta.ArrayIndices())
            counts = segments[parent + 1] - segments[parent]
            child = np.concatenate([np.arange(a, b) for a, b in zip(segments[parent], segments[parent + 1])]
                                   or [np.zeros(0, np.int64)])  # fmt: skip
            position = np.repeat(position, counts) * size + indices[child]
            parent = child
    dense = np.zeros(int(np.prod(shape)), values.dtype)
    dense[position] = values[parent]
    return dense.reshape(shape)


def _same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of one spatial side under TFLite's SAME padding."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation=(1, 1), value=0.0):
    """(B, C, H, W) ``x`` padded as TFLite's SAME padding asks for the given kernel and stride."""
    top, bottom = _same_padding(x.shape[2], kernel[0], stride[0], dilation[0])
    left, right = _same_padding(x.shape[3], kernel[1], stride[1], dilation[1])
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


class TFLiteGraph(nn.Module):
    """The first subgraph of a ``.tflite`` file as a torch module.

    ``forward(x)`` takes the graph's single input in TFLite's layout ((B, H, W, C) float for an image
    model, any batch size) and returns its outputs in the file's order, 4-D ones (B, H, W, C).

    Args:
        path: the ``.tflite`` file.
    Raises:
        InputError: the file holds an operator outside :data:`SUPPORTED`, or not one input.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        import tflite

        path = Path(path)
        data = path.read_bytes()
        model = tflite.Model.GetRootAsModel(data, 0)
        graph = model.Subgraphs(0)
        names = {code: name for name, code in vars(tflite.BuiltinOperator).items() if not name.startswith("_")}
        self.source = path.name
        if graph.InputsLength() != 1:
            raise InputError(f"{path}: a TFLite graph with one input is supported, this one has {graph.InputsLength()}")
        self.input_index = int(graph.Inputs(0))
        self.output_indices = [int(graph.Outputs(i)) for i in range(graph.OutputsLength())]
        shapes = {i: tuple(int(d) for d in graph.Tensors(i).ShapeAsNumpy()) for i in range(graph.TensorsLength())
                  if not isinstance(graph.Tensors(i).ShapeAsNumpy(), int)}  # fmt: skip
        self.shapes = shapes
        constants: dict[int, np.ndarray] = {}
        for i in range(graph.TensorsLength()):
            tensor = graph.Tensors(i)
            raw = model.Buffers(tensor.Buffer()).DataAsNumpy()
            if isinstance(raw, np.ndarray) and raw.size:
                values = raw.view(_NUMPY_TYPES[tensor.Type()])
                sparsity = tensor.Sparsity()
                constants[i] = (values.reshape(shapes.get(i, (-1,))) if sparsity is None
                                else densify(tflite, values, sparsity, shapes[i], f"{path.name} tensor {i}"))
        self.ops: list[tuple] = []
        for n in range(graph.OperatorsLength()):
            op = graph.Operators(n)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
            if name not in SUPPORTED:
                raise InputError(f"{path}: TFLite operator {name} is not supported (supported: {', '.join(SUPPORTED)})")
            inputs = [int(op.Inputs(j)) for j in range(op.InputsLength())]
            outputs = [int(op.Outputs(j)) for j in range(op.OutputsLength())]
            self.ops.append((name, inputs, outputs, self._options(tflite, name, op)))
            if name == "DENSIFY":  # a constant's dense copy, made here once
                constants[outputs[0]] = constants[inputs[0]]
        # weights as torch tensors in torch's layouts; float16 constants are dequantized by their op
        self._consts: dict[int, str] = {}  # float constants: tensor index -> buffer name
        self._host: dict[int, np.ndarray] = {}  # integer constants: tensor index -> int64 array
        quantized = {inputs[0] for name, inputs, _, _ in self.ops if name in ("DEQUANTIZE", "DENSIFY")}
        for index, value in constants.items():
            if index not in quantized:
                self._add_constant(index, value)
        for name, inputs, outputs, _ in self.ops:
            if name == "DEQUANTIZE":  # the weight's float32 copy, once
                self._add_constant(outputs[0], constants[inputs[0]].astype(np.float32))
        for name, inputs, _, _ in self.ops:
            if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                weight = self._const_array(inputs[1])
                # CONV_2D (out, kh, kw, in) and DEPTHWISE (1, kh, kw, out) -> torch (out, in/groups, kh, kw)
                layout = (0, 3, 1, 2) if name == "CONV_2D" else (3, 0, 1, 2)
                self._add_constant(inputs[1], np.ascontiguousarray(weight.transpose(layout)), replace=True)

    # --- loading -------------------------------------------------------------------------------------
    @staticmethod
    def _options(tflite, name: str, op) -> dict:
        table = op.BuiltinOptions()
        kinds = {"CONV_2D": tflite.Conv2DOptions, "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
                 "ADD": tflite.AddOptions, "MAX_POOL_2D": tflite.Pool2DOptions,
                 "RESIZE_BILINEAR": tflite.ResizeBilinearOptions, "CONCATENATION": tflite.ConcatenationOptions,
                 "DEPTH_TO_SPACE": tflite.DepthToSpaceOptions}  # fmt: skip
        if name not in kinds or table is None:
            return {}
        options = kinds[name]()
        options.Init(table.Bytes, table.Pos)
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            return {"stride": (options.StrideH(), options.StrideW()), "same": options.Padding() == 0,
                    "dilation": (options.DilationHFactor(), options.DilationWFactor()),
                    "activation": options.FusedActivationFunction()}
        if name == "ADD":
            return {"activation": options.FusedActivationFunction()}
        if name == "CONCATENATION":
            return {"axis": options.Axis(), "activation": options.FusedActivationFunction()}
        if name == "DEPTH_TO_SPACE":
            return {"block": options.BlockSize()}
        if name == "MAX_POOL_2D":
            return {"stride": (options.StrideH(), options.StrideW()), "same": options.Padding() == 0,
                    "kernel": (options.FilterHeight(), options.FilterWidth()),
                    "activation": options.FusedActivationFunction()}
        return {"align_corners": options.AlignCorners(), "half_pixel": options.HalfPixelCenters()}

    def _add_constant(self, index: int, value: np.ndarray, replace: bool = False) -> None:
        """A float constant (a weight) becomes a buffer, moved with the module; an integer one (paddings,
        sizes, shapes: read by the operators as numbers) stays on the host, where a device's tensor
        could not be read back without a copy per forward."""
        if (index in self._consts or index in self._host) and not replace:
            return
        value = np.array(value, copy=True, order="C")  # the flatbuffer's views are read-only
        if not np.issubdtype(value.dtype, np.floating):
            self._host[index] = value.astype(np.int64)
            return
        name = f"t{index}"
        if replace and hasattr(self, name):
            delattr(self, name)
        self.register_buffer(name, torch.from_numpy(value), persistent=False)
        self._consts[index] = name

    def _const_array(self, index: int) -> np.ndarray:
        """A constant as a numpy array: an integer one (any time), or a weight while still on the CPU (at load)."""
        return self._host[index] if index in self._host else getattr(self, self._consts[index]).numpy()

    def _const(self, index: int) -> torch.Tensor:
        return getattr(self, self._consts[index])

    # --- running -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        weight = next(b for b in self.buffers() if b.is_floating_point())
        x = x.to(device=weight.device, dtype=weight.dtype)
        values: dict[int, torch.Tensor] = {self.input_index: x.permute(0, 3, 1, 2) if x.ndim == 4 else x}
        for name, inputs, outputs, options in self.ops:
            if name in ("DEQUANTIZE", "DENSIFY"):
                continue  # its output is a constant made at load
            args = [values[i] if i in values else (self._const(i) if i in self._consts else None) for i in inputs]
            values[outputs[0]] = self._run(name, inputs, args, options)
        return [values[i].permute(0, 2, 3, 1) if values[i].ndim == 4 else values[i] for i in self.output_indices]

    def _run(self, name: str, inputs: list[int], args: list, options: dict) -> torch.Tensor:
        x = args[0]
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            weight, bias = args[1], args[2] if len(args) > 2 else None
            if options["same"]:
                x = _pad_same(x, tuple(weight.shape[2:]), options["stride"], options["dilation"])
            groups = x.shape[1] if name == "DEPTHWISE_CONV_2D" else 1
            y = F.conv2d(x, weight, bias, stride=options["stride"], dilation=options["dilation"], groups=groups)
            return _activation(y, options["activation"])
        if name == "ADD":
            return _activation(x + args[1], options["activation"])
        if name == "CONCATENATION":
            axis = options["axis"] % x.ndim
            axis = _NCHW_AXIS[axis] if x.ndim == 4 else axis
            return _activation(torch.cat(args, dim=axis), options["activation"])
        if name == "DEPTH_TO_SPACE":
            # TFLite (NHWC): out[h * k + i, w * k + j, c] = in[h, w, (i * k + j) * C + c]
            k = options["block"]
            b, channels, h, w = x.shape
            x = x.reshape(b, k, k, channels // (k * k), h, w).permute(0, 3, 4, 1, 5, 2)
            return x.reshape(b, channels // (k * k), h * k, w * k)
        if name == "PAD":
            pads = self._const_array(inputs[1]).reshape(4, 2)  # NHWC (before, after)
            (top, bottom), (left, right), (front, back) = pads[1], pads[2], pads[3]
            return F.pad(x, (int(left), int(right), int(top), int(bottom), int(front), int(back)))
        if name == "MAX_POOL_2D":
            if options["same"]:
                x = _pad_same(x, options["kernel"], options["stride"], value=float("-inf"))
            return _activation(F.max_pool2d(x, options["kernel"], options["stride"]), options["activation"])
        if name == "RESIZE_BILINEAR":
            size = tuple(int(v) for v in self._const_array(inputs[1]))
            if not options["align_corners"] and not options["half_pixel"]:
                raise InputError("RESIZE_BILINEAR without align_corners or half_pixel_centers is not supported")
            return F.interpolate(x, size=size, mode="bilinear", align_corners=bool(options["align_corners"]))
        if name == "LOGISTIC":
            return torch.sigmoid(x)
        if name == "RESHAPE":
            target = self._const_array(inputs[1])
            if x.ndim == 4:  # back to TFLite's channels-last order before flattening
                x = x.permute(0, 2, 3, 1)
            target = [x.shape[0]] + [int(v) for v in target[1:]]  # the batch stays the first dimension
            out = x.reshape(target)
            return out.permute(0, 3, 1, 2) if out.ndim == 4 else out
        raise InputError(f"TFLite operator {name} is not supported")
