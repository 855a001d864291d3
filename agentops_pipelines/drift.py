"""Drift scoring with Evidently's verdicts at a fraction of Evidently's cost.

Evidently 0.7's ``DataDriftPreset`` is the reference implementation; this module reproduces its
decisions column by column, from a reference profile computed once:

* **Column kind** (``evidently.core.datasets.infer_column_type``), decided on the *current* data
  (the report's data definition is the current dataset's): float → numerical; int → categorical
  when it has at most 10 distinct values, else numerical; str/object → text when more than half
  of the non-null values are distinct, else categorical; bool/category → categorical. Nullable
  extension dtypes (``Int64``, ``Float64``, ``boolean``) and ``uint*`` are "unknown" to Evidently
  and raise here too.
* **Cleaning**: NaN and ±inf are dropped from both sides before testing; the reference size that
  switches the defaults is the number of non-null values.
* **Default stattest** (``legacy/calculations/stattests/registry.py``), with ``n_values`` the
  number of distinct values of reference ∪ current: reference ≤ 1,000 values → numerical: KS if
  ``n_values`` > 5, else chi-square (> 2) or Z-test (≤ 2); categorical: chi-square (> 2) or Z.
  Reference > 1,000 → numerical: normed Wasserstein if ``n_values`` > 5, else Jensen-Shannon;
  categorical: Jensen-Shannon.
* **Verdicts**: KS drifts when p ≤ threshold, chi-square and Z when p < threshold, Wasserstein,
  Jensen-Shannon and PSI when the distance ≥ threshold; default thresholds 0.05 (p-values) and
  0.1 (distances); dataset drift when the share of drifted columns ≥ ``drift_share`` (0.5).
* **Binning** (``stattests/utils.get_binned_data``): categories (or the distinct values of a
  numerical column whose reference has ≤ 20 of them) are compared as frequencies over the union
  of values; numerical columns with more than 20 distinct reference values use Sturges bins over
  reference ∪ current. PSI replaces empty bins by a tiny share; Jensen-Shannon does not.

Every test above is a function of each side's distinct values and their counts, so the profile
stores exactly that (lossless: a sketch would turn exact Wasserstein/KS into approximations and
break verdict parity) plus the reference's ``np.std``. A current column is reduced to its
distinct values and counts in one vectorised pass (``np.bincount`` for small-range integers, one
``np.sort`` for floats, a hash count for strings), from which KS, chi-square, Z, Wasserstein,
Jensen-Shannon and PSI are computed with the same formulas, in the same floating-point order where
it matters (KS statistics are bit-identical; other scores agree to ~1e-14 relative, the order of
floating-point summation being the only difference).

Sampling: scores always use every current row. Evidently's p-values depend on the current's size
(chi-square grows with it: a 100,000-row current whose shares are 2.5 points off an 800-row
reference is flagged, a 1,000-row sample of it is not, see ``tests/test_drift.py``), and a sampled
distance is noisy exactly where it matters, near the threshold. No sample size is safe for every
column, there is no cheap certificate that a sampled verdict equals the full one, and the exact
pass costs ~20 ms per million-row column. Sampling is used where it cannot change the verdicts we
gate on: the human-readable Evidently HTML (``evidently_report``), whose figures are
informational.

Text is scored as numerical descriptors (``text_descriptors``): length, word count, share of
non-letter characters, share of words out of the reference vocabulary.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

NUMERICAL = "numerical"
CATEGORICAL = "categorical"
TEXT = "text"
DATETIME = "datetime"
LIST = "list"
UNKNOWN = "unknown"

SMALL_REFERENCE_ROWS = 1000  # Evidently: reference_data.shape[0] <= 1000 → p-value tests
INTEGER_CARDINALITY_LIMIT = 10  # Evidently: int columns with <= 10 distinct values are categorical
FEW_VALUES = 5  # Evidently: numerical columns with <= 5 distinct values get categorical tests
BINARY_VALUES = 2  # ... and with <= 2 the Z-test instead of chi-square
STURGES_MIN_VALUES = 20  # get_binned_data: numerical with > 20 reference values → Sturges bins
KS_EXACT_MAX_N = 10000  # scipy.stats.ks_2samp(method="auto"): exact when max(n1, n2) <= 10000

PROFILE_FORMAT = "agentops.drift.reference_profile"
PROFILE_VERSION = 1
DESCRIPTORS = ("length", "word_count", "non_letter_pct", "oov_pct")


@dataclass(frozen=True)
class StatTest:
    name: str  # Evidently's registry name (accepted as ``method=``)
    display_name: str  # what Evidently shows and stores as the resolved ValueDrift method
    default_threshold: float
    kind: str  # "p_value": drift when small; "distance": drift when large
    column_kinds: frozenset[str]  # where Evidently allows it when chosen explicitly

    def drifted(self, score: float, threshold: float) -> bool:
        if self.name == "ks":
            return bool(score <= threshold)
        if self.kind == "p_value":
            return bool(score < threshold)
        return bool(score >= threshold)


STATTESTS: dict[str, StatTest] = {t.name: t for t in (
    StatTest("ks", "K-S p_value", 0.05, "p_value", frozenset({NUMERICAL})),
    StatTest("chisquare", "chi-square p_value", 0.05, "p_value", frozenset({CATEGORICAL})),
    StatTest("z", "Z-test p_value", 0.05, "p_value", frozenset({CATEGORICAL})),
    StatTest("wasserstein", "Wasserstein distance (normed)", 0.1, "distance", frozenset({NUMERICAL})),
    StatTest("jensenshannon", "Jensen-Shannon distance", 0.1, "distance",
             frozenset({NUMERICAL, CATEGORICAL})),
    StatTest("psi", "PSI", 0.1, "distance", frozenset({NUMERICAL, CATEGORICAL})),
)}
_BY_DISPLAY = {t.display_name: t.name for t in STATTESTS.values()}


# --------------------------------------------------------------------------- distributions

@dataclass(frozen=True)
class _Dist:
    """Distinct non-null finite values (sorted when numeric) and how often each occurs."""

    values: np.ndarray
    counts: np.ndarray  # int64, > 0

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def numeric(self) -> bool:
        return self.values.dtype.kind in "biuf"


def _runs(sorted_values: np.ndarray) -> _Dist:
    if sorted_values.size == 0:
        return _Dist(sorted_values, np.zeros(0, dtype=np.int64))
    starts = np.concatenate(([0], np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1))
    counts = np.diff(np.concatenate((starts, [sorted_values.size]))).astype(np.int64)
    return _Dist(sorted_values[starts], counts)


def _int_dist(arr: np.ndarray) -> _Dist:
    if arr.size == 0:
        return _Dist(arr.astype(np.int64), np.zeros(0, dtype=np.int64))
    lo, hi = int(arr.min()), int(arr.max())
    if hi - lo <= max(1 << 16, 4 * arr.size):  # bincount: O(n), no sort
        counts = np.bincount((arr - lo).astype(np.intp, copy=False), minlength=hi - lo + 1)
        nz = np.flatnonzero(counts)
        return _Dist((nz + lo).astype(arr.dtype), counts[nz].astype(np.int64))
    return _runs(np.sort(arr))


def _distribution(s: pd.Series) -> tuple[_Dist, int]:
    """What Evidently tests, after ``replace([-inf, inf], nan).dropna()``; and ``s.count()``."""
    dtype = s.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "iu":
        return _int_dist(s.to_numpy()), len(s)
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        ordered = np.sort(s.to_numpy())  # -inf first, then finite, +inf, NaN last
        lo = np.searchsorted(ordered, -np.inf, side="right")
        hi = np.searchsorted(ordered, np.inf, side="left")
        return _runs(ordered[lo:hi]), int(np.searchsorted(ordered, np.nan, side="left"))
    if isinstance(dtype, np.dtype) and dtype.kind == "b":
        arr = s.to_numpy()
        ones = int(np.count_nonzero(arr))
        values, counts = np.array([False, True]), np.array([arr.size - ones, ones], dtype=np.int64)
        keep = counts > 0
        return _Dist(values[keep], counts[keep]), len(s)
    if isinstance(dtype, pd.CategoricalDtype):
        codes = s.cat.codes.to_numpy()
        counts = np.bincount(codes[codes >= 0], minlength=len(dtype.categories))
        nz = np.flatnonzero(counts)
        values = np.asarray(dtype.categories)[nz].astype(object)
        return _Dist(values, counts[nz].astype(np.int64)), int(counts.sum())
    vc = s.value_counts(dropna=True, sort=False)
    count = int(vc.sum())
    keys = [k for k in vc.index.tolist() if not (isinstance(k, float) and math.isinf(k))]
    vc = vc.loc[keys] if len(keys) != len(vc) else vc
    values = np.empty(len(vc), dtype=object)
    values[:] = vc.index.tolist()
    return _Dist(values, vc.to_numpy().astype(np.int64)), count


def _first_and_last_valid(s: pd.Series) -> tuple[Any, Any]:
    arr = s.to_numpy()
    head, tail = pd.notna(arr[:64]), pd.notna(arr[-64:])
    if not (head.any() and tail.any()):  # rare: scan everything
        mask = pd.notna(arr)
        if not mask.any():
            return None, None
        return arr[int(np.argmax(mask))], arr[len(arr) - 1 - int(np.argmax(mask[::-1]))]
    return arr[int(np.argmax(head))], arr[len(arr) - len(tail) + int(np.flatnonzero(tail)[-1])]


def evidently_column_kind(s: pd.Series, n_unique: int | None = None, count: int | None = None) -> str:
    """``evidently.core.datasets.infer_column_type``, quirks included (``uint8``, ``Int64`` → unknown).

    ``n_unique`` (``s.nunique()``) and ``count`` (``s.count()``) may be passed when known."""
    name = s.dtype.name
    if name.startswith("float"):
        return NUMERICAL
    if name.startswith("int"):
        nunique = s.nunique() if n_unique is None else n_unique
        return CATEGORICAL if nunique <= INTEGER_CARDINALITY_LIMIT else NUMERICAL
    if name in ("string", "str"):
        nunique = s.nunique() if n_unique is None else n_unique
        return TEXT if nunique > (s.count() if count is None else count) * 0.5 else CATEGORICAL
    if name == "object":
        first, last = _first_and_last_valid(s)
        if first is None:
            return UNKNOWN
        if isinstance(first, str) and isinstance(last, str):
            nunique = s.nunique() if n_unique is None else n_unique
            return TEXT if nunique > (s.count() if count is None else count) * 0.5 else CATEGORICAL
        if isinstance(first, list | tuple) and isinstance(last, list | tuple):
            return LIST
        return UNKNOWN
    if name in ("bool", "category"):
        return CATEGORICAL
    if name.startswith("datetime"):
        return DATETIME
    return UNKNOWN


def _kind_and_dist(s: pd.Series) -> tuple[str, _Dist]:
    dist, count = _distribution(s)
    # Evidently counts distinct values before dropping ±inf; only floats (always numerical) and
    # objects can hold inf, and an object column holding inf is not all-strings anyway.
    return evidently_column_kind(s, n_unique=len(dist.values), count=count), dist


def _n_values(ref: _Dist, cur: _Dist, merged: _Merged | None) -> int:
    if merged is not None:
        return int(merged.union.size)
    return len(set(ref.values.tolist()) | set(cur.values.tolist()))


def default_stattest(kind: str, n_reference: int, n_values: int) -> str:
    """``registry._get_default_stattest`` for numerical and categorical columns."""
    if kind not in (NUMERICAL, CATEGORICAL):
        raise ValueError(f"no default stattest for a {kind} column")
    if n_reference <= SMALL_REFERENCE_ROWS:
        if kind == NUMERICAL and n_values > FEW_VALUES:
            return "ks"
        return "chisquare" if n_values > BINARY_VALUES else "z"
    if kind == NUMERICAL and n_values > FEW_VALUES:
        return "wasserstein"
    return "jensenshannon"


# --------------------------------------------------------------------------- the tests

def _aligned_counts(ref: _Dist, cur: _Dist) -> tuple[list, np.ndarray, np.ndarray]:
    """Counts of both sides over the union of values (Evidently's ``keys``)."""
    r = dict(zip(ref.values.tolist(), ref.counts.tolist(), strict=True))
    c = dict(zip(cur.values.tolist(), cur.counts.tolist(), strict=True))
    keys = list(r.keys() | c.keys())
    return (keys, np.array([r.get(k, 0) for k in keys], dtype=np.int64),
            np.array([c.get(k, 0) for k in keys], dtype=np.int64))


@dataclass(frozen=True)
class _Merged:
    """Both sides' cumulative counts at every distinct value of reference ∪ current."""

    union: np.ndarray  # float64, sorted, distinct
    cum_ref: np.ndarray  # reference values <= union[i]
    cum_cur: np.ndarray


def _merge(ref: _Dist, cur: _Dist) -> _Merged:
    # Both value arrays are sorted: a stable argsort of their concatenation is a linear merge.
    values = np.concatenate((ref.values.astype(np.float64, copy=False),
                             cur.values.astype(np.float64, copy=False)))
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    last = np.empty(ordered.size, dtype=bool)  # the last copy of each distinct value
    np.not_equal(ordered[1:], ordered[:-1], out=last[:-1])
    last[-1] = True
    if ref.n < 1 << 31 and cur.n < 1 << 31:  # both running counts in one int64 cumsum
        packed = np.cumsum(np.concatenate((ref.counts, cur.counts << 32))[order])[last]
        return _Merged(ordered[last], packed & 0xFFFFFFFF, packed >> 32)
    from_ref = order < ref.values.size
    weights = np.concatenate((ref.counts, cur.counts))[order]
    return _Merged(ordered[last], np.cumsum(np.where(from_ref, weights, 0))[last],
                   np.cumsum(np.where(from_ref, 0, weights))[last])


def _ks(ref: _Dist, cur: _Dist, merged: _Merged) -> float:
    from scipy import stats

    if max(ref.n, cur.n) <= KS_EXACT_MAX_N:  # small: let scipy run its exact test on the rows
        return float(stats.ks_2samp(np.repeat(ref.values, ref.counts),
                                    np.repeat(cur.values, cur.counts))[1])
    # ks_2samp evaluates cdf1 - cdf2 at every data point; only the distinct values matter, and
    # the differences are the same floats (count / n), so the statistic is bit-identical.
    diffs = merged.cum_ref / ref.n - merged.cum_cur / cur.n
    max_s = diffs.max()
    min_s = np.clip(-diffs.min(), 0, 1)
    d = min_s if min_s > max_s else max_s
    m, n = sorted([float(ref.n), float(cur.n)], reverse=True)
    return float(np.clip(stats.kstwo.sf(d, np.round(m * n / (m + n))), 0, 1))


def _wasserstein(ref: _Dist, cur: _Dist, merged: _Merged, std: float) -> float:
    """scipy's ``wasserstein_distance`` (∫|F_ref − F_cur|) over the distinct values, / max(std, 0.001)."""
    gaps = np.abs(merged.cum_ref[:-1] / ref.n - merged.cum_cur[:-1] / cur.n)
    return float(np.dot(gaps, np.diff(merged.union))) / max(std, 0.001)


def _chisquare(ref: _Dist, cur: _Dist) -> float:
    from scipy import stats

    _, r, c = _aligned_counts(ref, cur)
    k_norm = cur.n / ref.n
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(stats.chisquare(c.tolist(), [x * k_norm for x in r.tolist()])[1])


def _z(ref: _Dist, cur: _Dist) -> float:
    from scipy.stats import norm

    if len(ref.values) == 1 and len(cur.values) == 1 and ref.values[0] == cur.values[0]:
        return 1.0
    keys, r, c = _aligned_counts(ref, cur)
    first = keys.index(sorted(keys)[0])
    n1, n2 = ref.n, cur.n
    p1 = float(n1 - int(r[first])) / n1  # share of values other than the smallest key
    p2 = float(n2 - int(c[first])) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - norm.cdf(np.abs(z))))


def _sturges_percents(ref: _Dist, cur: _Dist) -> tuple[np.ndarray, np.ndarray]:
    """``np.histogram_bin_edges(reference ∪ current, "sturges")``; the edges depend only on the
    combined size, min, max and dtype, so a two-valued stand-in of that size gives the same ones."""
    dtype = np.result_type(ref.values.dtype, cur.values.dtype)
    stand_in = np.full(ref.n + cur.n, min(ref.values[0], cur.values[0]), dtype=dtype)
    stand_in[-1] = max(ref.values[-1], cur.values[-1])
    edges = np.histogram_bin_edges(stand_in, bins="sturges")

    def hist(d: _Dist) -> np.ndarray:  # np.histogram semantics: [e_i, e_i+1), last bin closed
        idx = np.minimum(np.searchsorted(edges, d.values, side="right") - 1, len(edges) - 2)
        return np.bincount(idx, weights=d.counts, minlength=len(edges) - 1)

    return hist(ref) / ref.n, hist(cur) / cur.n


def _binned(ref: _Dist, cur: _Dist, kind: str, fill_zeroes: bool) -> tuple[np.ndarray, np.ndarray]:
    """``stattests.utils.get_binned_data``."""
    if kind == NUMERICAL and len(ref.values) > STURGES_MIN_VALUES:
        p, q = _sturges_percents(ref, cur)
    else:
        _, r, c = _aligned_counts(ref, cur)
        p, q = r / ref.n, c / cur.n
    if fill_zeroes:
        for a in (p, q):
            smallest = a[a != 0].min()
            np.place(a, a == 0, smallest / 10**6 if smallest <= 0.0001 else 0.0001)
    return p, q


def _jensenshannon(ref: _Dist, cur: _Dist, kind: str) -> float:
    from scipy.spatial import distance

    p, q = _binned(ref, cur, kind, fill_zeroes=False)
    return float(distance.jensenshannon(p, q))


def _psi(ref: _Dist, cur: _Dist, kind: str) -> float:
    p, q = _binned(ref, cur, kind, fill_zeroes=True)
    return float(np.sum((p - q) * np.log(p / q)))


# --------------------------------------------------------------------------- options & results

@dataclass(frozen=True)
class DriftOptions:
    """The subset of ``DataDriftPreset``'s options we honour, resolved with Evidently's priority:
    per column > per kind (``cat_``/``num_``) > all columns > the stattest's default."""

    drift_share: float = 0.5
    method: str | None = None
    cat_method: str | None = None
    num_method: str | None = None
    per_column_method: Mapping[str, str] | None = None
    threshold: float | None = None
    cat_threshold: float | None = None
    num_threshold: float | None = None
    per_column_threshold: Mapping[str, float] | None = None

    def method_for(self, column: str, kind: str) -> str | None:
        method = self.method
        by_kind = self.cat_method if kind == CATEGORICAL else self.num_method
        method = by_kind if by_kind is not None else method
        if self.per_column_method is not None:
            method = self.per_column_method.get(column, method)
        if method is not None and method not in STATTESTS:
            raise ValueError(f"unsupported stattest {method!r} for column {column!r}; "
                             f"choose one of {sorted(STATTESTS)}")
        return method

    def threshold_for(self, column: str, kind: str) -> float | None:
        if self.per_column_threshold is not None and column in self.per_column_threshold:
            return self.per_column_threshold[column]
        if kind == CATEGORICAL and self.cat_threshold is not None:
            return self.cat_threshold
        if kind == NUMERICAL and self.num_threshold is not None:
            return self.num_threshold
        return self.threshold

    def preset_kwargs(self) -> dict[str, Any]:
        return {"drift_share": self.drift_share, "method": self.method,
                "cat_method": self.cat_method, "num_method": self.num_method,
                "per_column_method": dict(self.per_column_method) if self.per_column_method else None,
                "threshold": self.threshold, "cat_threshold": self.cat_threshold,
                "num_threshold": self.num_threshold,
                "per_column_threshold": (dict(self.per_column_threshold)
                                         if self.per_column_threshold else None)}


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: str  # numerical | categorical, as Evidently infers it from the current data
    stattest: str  # registry name: ks, chisquare, z, wasserstein, jensenshannon, psi
    score: float  # p-value or distance
    threshold: float
    drifted: bool
    n_reference: int | None = None  # non-null values tested
    n_current: int | None = None

    @property
    def stattest_display_name(self) -> str:
        return STATTESTS[self.stattest].display_name


@dataclass(frozen=True)
class DriftResult:
    columns: dict[str, ColumnDrift]
    drift_share: float  # the dataset-drift threshold on the share of drifted columns
    n_drifted: int
    share_drifted: float
    dataset_drift: bool

    @property
    def drifted_columns(self) -> list[str]:
        return [c for c, r in self.columns.items() if r.drifted]

    def verdicts(self) -> dict[str, bool]:
        return {c: r.drifted for c, r in self.columns.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"dataset_drift": self.dataset_drift, "share_drifted": self.share_drifted,
                "n_drifted": self.n_drifted, "drift_share": self.drift_share,
                "drifted_columns": self.drifted_columns,
                "columns": {c: {"kind": r.kind, "stattest": r.stattest, "score": r.score,
                                "threshold": r.threshold, "drifted": r.drifted,
                                "n_reference": r.n_reference, "n_current": r.n_current}
                            for c, r in self.columns.items()}}

    def to_markdown(self) -> str:
        lines = ["| column | kind | stattest | score | threshold | drifted |",
                 "|---|---|---|---:|---:|---|"]
        lines += [f"| {c} | {r.kind} | {r.stattest} | {r.score:.4g} | {r.threshold:g} | "
                  f"{'**yes**' if r.drifted else 'no'} |" for c, r in self.columns.items()]
        lines.append(f"\n{self.n_drifted}/{len(self.columns)} columns drifted "
                     f"(share {self.share_drifted:.3f}, dataset drift at >= {self.drift_share}): "
                     f"{'**dataset drift**' if self.dataset_drift else 'no dataset drift'}")
        return "\n".join(lines)


def _result(columns: dict[str, ColumnDrift], drift_share: float) -> DriftResult:
    n_drifted = sum(r.drifted for r in columns.values())
    share = n_drifted / len(columns)
    return DriftResult(columns, drift_share, n_drifted, share, bool(share >= drift_share))


# --------------------------------------------------------------------------- text descriptors

_WORD_CHARS = r"[^a-zA-Z ]+"  # Evidently's WordCount strips everything but ASCII letters and spaces


def _words(texts: pd.Series) -> pd.Series:
    return texts.str.replace(_WORD_CHARS, "", regex=True).str.lower().str.split()


def text_vocabulary(texts: Iterable[str], max_words: int = 50_000) -> list[str]:
    """The reference's most frequent lower-case words (ties broken alphabetically)."""
    counts = Counter(w for ws in _words(pd.Series(list(texts), dtype=object).fillna("").astype(str))
                     for w in ws)
    return sorted(sorted(counts, key=lambda w: (-counts[w], w))[:max_words])


def text_descriptors(texts: Iterable[str] | pd.Series, vocabulary: Collection[str] | None = None,
                     prefix: str = "") -> pd.DataFrame:
    """Numerical descriptors of each text, defined like Evidently's:

    * ``length``: characters (``TextLength``);
    * ``word_count``: words made of ASCII letters (``WordCount``);
    * ``non_letter_pct``: % of characters that are neither letters nor spaces
      (``NonLetterCharacterPercentage``; letters are Unicode word characters minus digits and
      ``_``, which is ``str.isalpha`` for everything but exotic numerals);
    * ``oov_pct`` (with ``vocabulary``): % of those words not in the reference vocabulary
      (Evidently's ``OOVWordsPercentage`` uses NLTK's English word list; ours needs no download).

    Missing texts count as empty (Evidently's descriptors return 0 for them). All columns are
    float64, so Evidently always treats them as numerical.
    """
    s = pd.Series(texts, dtype=object) if not isinstance(texts, pd.Series) else texts.astype(object)
    s = s.fillna("").astype(str).reset_index(drop=True)
    length = s.str.len().to_numpy(dtype=np.float64)
    words = _words(s)
    word_count = words.str.len().to_numpy(dtype=np.float64)
    letters = s.str.count(r"[^\W\d_]").to_numpy(dtype=np.float64)
    spaces = s.str.count(" ").to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        non_letter = np.where(length > 0, 100 * (length - letters - spaces) / length, 0.0)
    out = {"length": length, "word_count": word_count, "non_letter_pct": non_letter}
    if vocabulary is not None:
        vocab = vocabulary if isinstance(vocabulary, set | frozenset) else set(vocabulary)
        exploded = words.explode()
        oov = (exploded.notna() & ~exploded.isin(vocab)).groupby(level=0).sum()
        oov = oov.reindex(range(len(s)), fill_value=0).to_numpy(dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["oov_pct"] = np.where(word_count > 0, 100 * oov / word_count, 0.0)
    frame = pd.DataFrame(out)
    return frame.add_prefix(prefix) if prefix else frame


def descriptor_columns(text_column: str, with_oov: bool = True) -> list[str]:
    names = DESCRIPTORS if with_oov else DESCRIPTORS[:-1]
    return [f"{text_column}.{d}" for d in names]


def _with_descriptors(frame: pd.DataFrame, columns: Sequence[str],
                      vocabularies: Mapping[str, Collection[str] | None],
                      reference: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Replace every text column named in ``columns`` by its descriptor columns.

    The vocabulary is built from the reference rows at even positions, so on the reference side
    (``reference=True``) the out-of-vocabulary share is left empty (NaN, which Evidently drops
    too) on those rows: measured on the held-out odd rows, it is the share a fresh day would see,
    instead of a constant 0 that would flag any new word as drift.
    """
    text = [c for c in columns if c in vocabularies]
    if not text:
        return frame, list(columns)
    missing = [c for c in text if c not in frame.columns]
    if missing:
        raise ValueError(f"text column(s) {missing} missing from the data "
                         f"(columns: {list(frame.columns)})")
    extra = []
    for c in text:
        d = text_descriptors(frame[c], vocabularies[c], prefix=f"{c}.")
        if reference and vocabularies[c] is not None:
            d.iloc[0::2, d.columns.get_loc(f"{c}.oov_pct")] = np.nan
        extra.append(d)
    expanded: list[str] = []
    for c in columns:
        expanded += descriptor_columns(c, vocabularies[c] is not None) if c in vocabularies else [c]
    keep = [c for c in expanded if c in frame.columns]
    frame = pd.concat([frame[keep].reset_index(drop=True), *extra], axis=1)
    return frame, expanded


def with_text_descriptors(frame: pd.DataFrame, profile: ReferenceProfile,
                          columns: Sequence[str] | None = None,
                          reference: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` with the profile's text columns replaced by their descriptors, and the scored
    column names: what ``score_drift`` scores, ready to hand to Evidently for a comparison.
    ``reference=True`` for the reference the profile was built from (held-out OOV rows)."""
    wanted = list(columns) if columns is not None else [*_plain_columns(profile), *profile.text_columns]
    vocabularies = {c: v for c, v in profile.text_columns.items() if c in wanted}
    return _with_descriptors(frame, wanted, vocabularies, reference)


def _plain_columns(profile: ReferenceProfile) -> list[str]:
    descriptors = {d for c, v in profile.text_columns.items() for d in descriptor_columns(c, v is not None)}
    return [c for c in profile.columns if c not in descriptors]


# --------------------------------------------------------------------------- the profile

@dataclass
class ColumnProfile:
    """Everything Evidently's tests need from one reference column, losslessly."""

    name: str
    dtype: str  # the reference column's pandas dtype
    kind: str  # Evidently's kind for the reference column itself
    n: int  # non-null finite values: the size Evidently compares with 1,000
    values: np.ndarray  # distinct values (sorted when numeric)
    counts: np.ndarray  # occurrences of each value
    std: float | None  # np.std of the values (Wasserstein's norm), numeric columns only

    @property
    def dist(self) -> _Dist:
        return _Dist(self.values, self.counts)

    @property
    def n_unique(self) -> int:
        return len(self.values)

    @property
    def expected_stattest(self) -> str:
        """Evidently's default when the current has this kind and no value the reference lacks."""
        return default_stattest(self.kind, self.n, self.n_unique)

    def to_json_dict(self) -> dict[str, Any]:
        kind = self.values.dtype.kind
        value_type = {"i": "int", "u": "int", "f": "float", "b": "bool"}.get(kind, "object")
        return {"dtype": self.dtype, "kind": self.kind, "n": self.n, "n_unique": self.n_unique,
                "expected_stattest": self.expected_stattest, "std": self.std,
                "value_type": value_type, "values": _encode(self.values),
                "counts": _encode(self.counts)}

    @classmethod
    def from_json_dict(cls, name: str, d: Mapping[str, Any]) -> ColumnProfile:
        dtype = {"int": np.int64, "float": np.float64, "bool": np.bool_}.get(d["value_type"], object)
        return cls(name, d["dtype"], d["kind"], int(d["n"]), _decode(d["values"], dtype),
                   _decode(d["counts"], np.int64), d["std"])


INLINE_MAX = 1000  # longer numeric arrays are stored as base64 of zlib'd little-endian bytes


def _encode(a: np.ndarray) -> list | dict[str, str]:
    """A JSON value for ``a``: a plain list when short or not numeric, else packed bytes (exact,
    ~10x smaller and ~50x faster to load than a list of float reprs)."""
    if a.dtype.kind not in "iuf" or a.size <= INLINE_MAX:
        return a.tolist()
    if a.dtype.kind in "iu" and a.size and a.min() >= 0:
        a = a.astype(np.min_scalar_type(int(a.max())))  # counts: mostly tiny numbers
    raw = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
    return {"dtype": a.dtype.newbyteorder("<").str, "zlib_base64": base64.b64encode(zlib.compress(raw)).decode()}


def _decode(v: list | Mapping[str, str], dtype: Any) -> np.ndarray:
    if isinstance(v, Mapping):
        raw = zlib.decompress(base64.b64decode(v["zlib_base64"]))
        return np.frombuffer(raw, dtype=np.dtype(v["dtype"])).astype(dtype)
    if dtype is object:
        out = np.empty(len(v), dtype=object)
        out[:] = v
        return out
    return np.asarray(v, dtype=dtype)


@dataclass
class ReferenceProfile:
    """Precomputed reference statistics: build once next to the training set, score daily."""

    columns: dict[str, ColumnProfile]
    n_rows: int
    text_columns: dict[str, list[str] | None] = field(default_factory=dict)  # → vocabulary
    evidently_version: str | None = None

    @property
    def feature_columns(self) -> list[str]:
        return list(self.columns)

    def to_json(self) -> str:
        return json.dumps({
            "format": PROFILE_FORMAT, "version": PROFILE_VERSION, "n_rows": self.n_rows,
            "evidently_version": self.evidently_version,
            "text_columns": {c: {"vocabulary": v, "descriptors": descriptor_columns(c, v is not None)}
                             for c, v in self.text_columns.items()},
            "columns": {c: p.to_json_dict() for c, p in self.columns.items()},
        }, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> ReferenceProfile:
        d = json.loads(text)
        if d.get("format") != PROFILE_FORMAT or d.get("version") != PROFILE_VERSION:
            raise ValueError(f"not a version-{PROFILE_VERSION} {PROFILE_FORMAT}: "
                             f"{d.get('format')!r} v{d.get('version')!r}")
        return cls({c: ColumnProfile.from_json_dict(c, p) for c, p in d["columns"].items()},
                   int(d["n_rows"]),
                   {c: t["vocabulary"] for c, t in d["text_columns"].items()},
                   d.get("evidently_version"))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReferenceProfile:
        return cls.from_json(Path(path).read_text())


def _evidently_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("evidently")
    except PackageNotFoundError:
        return None


def build_profile(reference: pd.DataFrame, columns: Sequence[str], *,
                  text_columns: Sequence[str] = (), oov: bool = True) -> ReferenceProfile:
    """Profile ``columns`` (numerical/categorical features) and ``text_columns`` (as descriptors,
    with the reference vocabulary for the out-of-vocabulary share when ``oov``)."""
    if not isinstance(reference, pd.DataFrame) or reference.empty:
        raise ValueError("the reference must be a non-empty DataFrame")
    missing = [c for c in [*columns, *text_columns] if c not in reference.columns]
    if missing:
        raise ValueError(f"column(s) {missing} missing from the reference "
                         f"(columns: {list(reference.columns)})")
    if oov and text_columns and len(reference) < 2:
        raise ValueError("the out-of-vocabulary share needs a reference of at least 2 rows")
    vocabularies = {c: (text_vocabulary(reference[c].iloc[0::2]) if oov else None)
                    for c in text_columns}
    frame, expanded = _with_descriptors(reference, [*columns, *text_columns], vocabularies,
                                        reference=True)
    profiles: dict[str, ColumnProfile] = {}
    for c in expanded:
        s = frame[c]
        kind, dist = _kind_and_dist(s)
        if kind not in (NUMERICAL, CATEGORICAL):
            hint = " (pass it in text_columns to score it as descriptors)" if kind == TEXT else ""
            raise ValueError(f"reference column {c!r} is {kind} for Evidently{hint}; "
                             "only numerical and categorical columns can be scored")
        if dist.n == 0:
            raise ValueError(f"reference column {c!r} has no non-null finite value")
        if not dist.numeric:  # a stable order for the JSON (numeric values are sorted already)
            order = sorted(range(len(dist.values)),
                           key=lambda i: (type(dist.values[i]).__name__, str(dist.values[i])))
            dist = _Dist(dist.values[order], dist.counts[order])
        std = None
        if pd.api.types.is_numeric_dtype(s) and dist.values.dtype.kind in "iuf":
            # the very call Evidently makes (np.std on the cleaned Series), for a bit-equal norm
            std = float(np.std(s.replace([-np.inf, np.inf], np.nan).dropna()))
        profiles[c] = ColumnProfile(c, s.dtype.name, kind, dist.n, dist.values, dist.counts, std)
    return ReferenceProfile(profiles, len(reference), vocabularies, _evidently_version())


# --------------------------------------------------------------------------- scoring

def _score_column(ref: ColumnProfile, current: pd.Series, options: DriftOptions) -> ColumnDrift:
    column = ref.name
    kind, cur = _kind_and_dist(current)  # the current decides the kind, as in Evidently
    if kind not in (NUMERICAL, CATEGORICAL):
        hint = " (score text through its descriptors)" if kind == TEXT else ""
        raise ValueError(f"current column {column!r} is {kind} for Evidently{hint}; "
                         "only numerical and categorical columns can be scored")
    if cur.n == 0:
        raise ValueError(f"current column {column!r} has no non-null finite value")
    if kind == NUMERICAL and not ref.dist.numeric:
        raise ValueError(f"column {column!r} is numerical in the current data but not in the reference")
    merged = _merge(ref.dist, cur) if ref.dist.numeric and cur.numeric else None
    method = options.method_for(column, kind)
    if method is None:
        method = default_stattest(kind, ref.n, _n_values(ref.dist, cur, merged))
    elif kind not in STATTESTS[method].column_kinds:
        raise ValueError(f"stattest {method!r} does not apply to {kind} column {column!r}")
    test = STATTESTS[method]
    threshold = options.threshold_for(column, kind)
    threshold = test.default_threshold if threshold is None else float(threshold)
    if method == "ks":
        score = _ks(ref.dist, cur, merged)
    elif method == "wasserstein":
        if ref.std is None or merged is None:
            raise ValueError(f"no numeric reference for numerical column {column!r}")
        score = _wasserstein(ref.dist, cur, merged, ref.std)
    elif method == "chisquare":
        score = _chisquare(ref.dist, cur)
    elif method == "z":
        score = _z(ref.dist, cur)
    elif method == "jensenshannon":
        score = _jensenshannon(ref.dist, cur, kind)
    else:
        score = _psi(ref.dist, cur, kind)
    return ColumnDrift(column, kind, method, score, threshold, test.drifted(score, threshold),
                       ref.n, cur.n)


def score_drift(profile: ReferenceProfile, current: pd.DataFrame,
                columns: Sequence[str] | None = None,
                options: DriftOptions | None = None) -> DriftResult:
    """Evidently's per-column and dataset drift verdicts for ``current`` against ``profile``.

    ``columns`` defaults to every profiled column; a text column of the profile may be named
    instead of its descriptor columns. Raises ``ValueError`` on empty data, missing columns,
    columns absent from the profile, and columns Evidently cannot score (text, datetime, unknown).
    """
    options = options or DriftOptions()
    if not isinstance(current, pd.DataFrame):
        raise TypeError(f"current must be a pandas DataFrame, got {type(current).__name__}")
    if len(current) == 0:
        raise ValueError("the current data is empty: nothing to score")
    wanted = list(profile.feature_columns if columns is None else columns)
    if not wanted:
        raise ValueError("no columns to score")
    text = {c: v for c, v in profile.text_columns.items()
            if c in wanted or any(d in wanted for d in descriptor_columns(c, v is not None))}
    plain = [c for c in wanted if c not in text and not any(
        c in descriptor_columns(t, v is not None) for t, v in text.items())]
    missing = [c for c in [*plain, *text] if c not in current.columns]
    if missing:
        raise ValueError(f"column(s) {missing} missing from the current data "
                         f"(columns: {list(current.columns)})")
    frame = current
    if text:
        frame, _ = _with_descriptors(current, [*plain, *text], text)
    expanded: list[str] = []
    for c in wanted:
        names = descriptor_columns(c, text[c] is not None) if c in text else [c]
        expanded += [n for n in names if n not in expanded]
    unknown = [c for c in expanded if c not in profile.columns]
    if unknown:
        raise ValueError(f"column(s) {unknown} are not in the reference profile "
                         f"(profiled: {profile.feature_columns})")
    results = {c: _score_column(profile.columns[c], frame[c], options) for c in expanded}
    return _result(results, options.drift_share)


# --------------------------------------------------------------------------- Evidently itself

def evidently_verdicts(snapshot: Any, current: pd.DataFrame | None = None) -> DriftResult:
    """Evidently's own verdicts from a ``DataDriftPreset`` snapshot (tests must be included)."""
    d = snapshot.dict()
    drift_share, dataset_drift, share = 0.5, None, None
    scores: dict[str, tuple[str, float, float]] = {}
    for m in d["metrics"]:
        cfg = m["config"]
        if cfg["type"].endswith(":DriftedColumnsCount"):
            drift_share, share = cfg.get("drift_share", 0.5), m["value"]["share"]
        elif cfg["type"].endswith(":ValueDrift"):
            method = cfg.get("method")
            scores[cfg["column"]] = (_BY_DISPLAY.get(method, method), float(m["value"]),
                                     float(cfg["threshold"]))
    drifted: dict[str, bool] = {}
    for t in d.get("tests", []):
        params = t.get("metric_config", {}).get("params", {})
        if params.get("type", "").endswith(":ValueDrift"):
            drifted[params["column"]] = t["status"] == "FAIL"
        elif params.get("type", "").endswith(":DriftedColumnsCount"):
            dataset_drift = t["status"] == "FAIL"
    if set(drifted) != set(scores):
        raise ValueError("the snapshot has no per-column drift tests: run it with include_tests=True")
    columns = {}
    for c, (method, score, threshold) in scores.items():
        kind = evidently_column_kind(current[c]) if current is not None else ""
        columns[c] = ColumnDrift(c, kind, method, score, threshold, drifted[c])
    result = _result(columns, drift_share)
    if dataset_drift is not None and (dataset_drift != result.dataset_drift
                                      or not math.isclose(share, result.share_drifted)):
        raise RuntimeError("Evidently's DriftedColumnsCount disagrees with its ValueDrift tests")
    return result


def run_evidently(reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str],
                  options: DriftOptions | None = None) -> tuple[DriftResult, Any]:
    """Evidently's ``DataDriftPreset`` on exactly these rows and columns: (verdicts, snapshot)."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    options = options or DriftOptions()
    columns = list(columns)
    preset = DataDriftPreset(columns=columns, **options.preset_kwargs())
    snapshot = Report([preset], include_tests=True).run(current_data=current[columns],
                                                        reference_data=reference[columns])
    return evidently_verdicts(snapshot, current), snapshot


def evidently_report(reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str],
                     path_html: str | Path, *, sample_size: int = 5000, seed: int = 0,
                     options: DriftOptions | None = None,
                     profile: ReferenceProfile | None = None) -> DriftResult:
    """Save Evidently's HTML drift report on a sample of each side; return Evidently's verdicts
    *on that sample* (informational: gate on ``score_drift``, which uses every row).

    The sample bounds Evidently's time (~1.5 s at 5,000 rows, ~30 s at 1M rows × 20 columns) and
    the data its HTML embeds (4.6 MB at 20 columns). Sampled verdicts can differ from the full
    data's: on the benchmark's data a 1,500-row sample flags a column that 5,000 rows and the full
    million do not. Text columns of ``profile`` named in ``columns`` are reported as the same
    descriptors ``score_drift`` uses. A reference above 1,000 rows must be sampled to more than
    1,000, so that Evidently keeps the same family of tests.
    """
    if len(current) == 0 or len(reference) == 0:
        raise ValueError("both the reference and the current data must have rows")
    if len(reference) > SMALL_REFERENCE_ROWS and sample_size <= SMALL_REFERENCE_ROWS:
        raise ValueError(f"sample_size must exceed {SMALL_REFERENCE_ROWS} for a reference of "
                         f"{len(reference)} rows, or Evidently would switch to p-value tests")
    vocabularies = {c: v for c, v in (profile.text_columns if profile else {}).items() if c in columns}
    # the reference's descriptors before sampling, so its held-out OOV rows are the profile's
    ref, expanded = _with_descriptors(reference, columns, vocabularies, reference=True)
    ref = ref.sample(sample_size, random_state=seed) if len(ref) > sample_size else ref
    cur = current.sample(sample_size, random_state=seed) if len(current) > sample_size else current
    cur, _ = _with_descriptors(cur, columns, vocabularies)
    result, snapshot = run_evidently(ref, cur, expanded, options)
    path = Path(path_html)
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    return result
