"""all-MiniLM-L6-v2 through ONNX Runtime: the numpy encoder's graph, several times less CPU.

:class:`~agentops_pipelines.agent.embeddings.MiniLMEncoder` runs the transformer in numpy; its
matrix products go through OpenBLAS, which this machine pins to its AVX2 kernels, and a served
request costs ~10 ms of CPU. Here the same weights (read from the same ``model.safetensors``)
become an ONNX graph built with ``onnx.helper`` (no torch, no export step, nothing downloaded),
run by ONNX Runtime on one thread. ``int8=True`` quantizes the weight matrices dynamically
(``onnxruntime.quantization.quantize_dynamic``: int8 weights per output channel, activations
quantized per call): ~5x less CPU than numpy here (BENCHMARKS.md, "Tool routing on BANKING77").

Equivalence is tested, not assumed: the fp32 graph gives the numpy encoder's embeddings to 1e-4
(tests/recipe/test_onnx_encoder.py). The int8 graph does not (≈0.99 cosine); a router trained on
it must be served with it, which :class:`~agentops_pipelines.agent.embeddings.SentenceEmbedder`
guarantees by naming its backend in its parameters (pickled with the model).

Quantized activations share one scale per call, so a text's int8 embedding would depend on the
other texts of its batch: the int8 encoder encodes one text per call, in training as in serving,
and a request gets exactly the features the model was trained on.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from agentops_pipelines.agent.embeddings import MiniLMEncoder

OPSET = 17  # LayerNormalization is standard from 17; ReduceL2 still takes `axes` as an attribute


def build_graph(encoder: MiniLMEncoder):
    """The ONNX model of ``encoder``: ``input_ids``, ``attention_mask`` (int64, batch × length)
    → ``embeddings`` (float32, batch × hidden): mean-pooled over the mask, unit length."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    initializers, nodes = [], []
    counter = iter(range(1_000_000))

    def const(array) -> str:
        name = f"c{next(counter)}"
        initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(kind: str, *inputs: str, **attrs) -> str:
        out = f"{kind.lower()}{next(counter)}"
        nodes.append(helper.make_node(kind, list(inputs), [out], **attrs))
        return out

    def linear(x: str, w: np.ndarray, b: np.ndarray) -> str:
        return op("Add", op("MatMul", x, const(w)), const(b))

    def layer_norm(x: str, params: tuple[np.ndarray, np.ndarray]) -> str:
        return op("LayerNormalization", x, const(params[0]), const(params[1]), axis=-1,
                  epsilon=encoder.eps)

    f32 = np.float32
    h, heads = encoder.hidden, encoder.num_heads
    head_dim = h // heads

    # Embeddings: words + (positions + token type 0), then LayerNorm.
    length = op("Shape", "input_ids", start=1, end=2)
    positions = op("Slice", const(encoder.pos_type_emb), const(np.array([0], np.int64)), length,
                   const(np.array([0], np.int64)))
    x = op("Add", op("Gather", const(encoder.word_emb), "input_ids"), positions)
    x = layer_norm(x, encoder.emb_ln)

    # Attention bias: 0 where the mask is 1, the most negative float where it is 0.
    mask = op("Cast", "attention_mask", to=TensorProto.FLOAT)
    bias = op("Mul", op("Sub", const(f32(1.0)), mask), const(f32(np.finfo(f32).min)))
    bias = op("Unsqueeze", bias, const(np.array([1, 2], np.int64)))  # B,1,1,L
    scale = const(f32(1.0 / math.sqrt(head_dim)))

    for lw in encoder.layers:
        qkv = op("Reshape", linear(x, lw["qkv_w"], lw["qkv_b"]),
                 const(np.array([0, 0, 3, heads, head_dim], np.int64)))
        qkv = op("Transpose", qkv, perm=[2, 0, 3, 1, 4])  # 3, B, heads, L, head_dim
        q, k, v = (op("Gather", qkv, const(np.array(i, np.int64)), axis=0) for i in range(3))
        scores = op("Mul", op("MatMul", q, op("Transpose", k, perm=[0, 1, 3, 2])), scale)
        probs = op("Softmax", op("Add", scores, bias), axis=-1)
        context = op("Transpose", op("MatMul", probs, v), perm=[0, 2, 1, 3])
        context = op("Reshape", context, const(np.array([0, 0, h], np.int64)))
        x = layer_norm(op("Add", linear(context, lw["o_w"], lw["o_b"]), x), lw["ln1"])
        inner = linear(x, lw["i_w"], lw["i_b"])
        # Exact GELU, x * 0.5 * (1 + erf(x / sqrt 2)), in the form ONNX Runtime fuses into one op.
        erf = op("Erf", op("Div", inner, const(f32(math.sqrt(2.0)))))
        gelu = op("Mul", op("Mul", inner, op("Add", erf, const(f32(1.0)))), const(f32(0.5)))
        x = layer_norm(op("Add", linear(gelu, lw["f_w"], lw["f_b"]), x), lw["ln2"])

    # Mean pooling over the mask, then L2 normalisation (as sentence-transformers does).
    mask3 = op("Unsqueeze", mask, const(np.array([2], np.int64)))  # B,L,1
    axis1 = const(np.array([1], np.int64))
    summed = op("ReduceSum", op("Mul", x, mask3), axis1, keepdims=0)
    count = op("Max", op("ReduceSum", mask3, axis1, keepdims=0), const(f32(1e-9)))
    pooled = op("Div", summed, count)
    norm = op("Max", op("ReduceL2", pooled, axes=[1], keepdims=1), const(f32(1e-12)))
    nodes.append(helper.make_node("Div", [pooled, norm], ["embeddings"]))

    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "length"])
           for n in ("input_ids", "attention_mask")]
    out = [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", h])]
    graph = helper.make_graph(nodes, "all-MiniLM-L6-v2", ids, out, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="agentops_pipelines")
    model.ir_version = 8  # what opset 17 needs; ONNX Runtime reads it
    onnx.checker.check_model(model)
    return model


def quantize(model, per_channel: bool = True) -> bytes:
    """``model`` with its weight matrices in int8 (dynamic quantization), serialized.

    Only the products with a weight matrix are quantized (``MatMulConstBOnly``, the default for
    dynamic quantization): attention's activation × activation products stay in float32.
    """
    import logging
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer logs on the root logger: a line per tensor (INFO) and advice to pre-process
    # (shape inference, fusions: the session does them). A serving process's log is not for that.
    def quiet(record: logging.LogRecord) -> bool:
        from_quantizer = "onnxruntime" in record.pathname and "quantization" in record.pathname
        return not from_quantizer or record.levelno >= logging.ERROR

    logging.getLogger().addFilter(quiet)
    try:
        with tempfile.TemporaryDirectory(prefix="minilm-onnx-") as folder:
            out = Path(folder) / "int8.onnx"
            quantize_dynamic(model, out, op_types_to_quantize=["MatMul"],
                             per_channel=per_channel, weight_type=QuantType.QInt8)
            return out.read_bytes()
    finally:
        logging.getLogger().removeFilter(quiet)


def session(model_bytes: bytes):
    """An ONNX Runtime session on one thread that does not spin (a request is a few ms of work)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


class OnnxMiniLMEncoder(MiniLMEncoder):
    """:class:`MiniLMEncoder` (same tokenizer, batching and output) with the transformer run by
    ONNX Runtime; ``int8=True`` for the quantized graph (one text per call, module docstring)."""

    def __init__(self, model_dir: str | Path | None = None, int8: bool = True, **kwargs):
        self.int8 = int8
        super().__init__(model_dir, **kwargs)
        if int8:
            self.batch_size = 1

    def _load_weights(self) -> None:
        super()._load_weights()
        model = build_graph(self)
        self.session = session(quantize(model) if self.int8 else model.SerializeToString())
        # The numpy copies and the graph are no longer needed: the session holds its own.
        del self.word_emb, self.pos_type_emb, self.emb_ln, self.layers, model
        _release_freed_memory()

    def encode(self, texts, batch_size: int | None = None) -> np.ndarray:
        return self._encode(texts, 1 if self.int8 else batch_size)  # no BLAS threads to limit

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})
        return out


def _release_freed_memory() -> None:
    """Give the ~200 MB freed after building the session back to the system (glibc keeps freed
    heap otherwise: a serving process would hold 330 MB more instead of 140 MB)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory is reused by the process later
        pass
