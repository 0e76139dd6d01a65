"""Prompt anatomy: measure a prompt corpus and recommend a context length and a vocabulary.

The library behind ``edgeseg analyze``. Three parts:

* **lengths**: the token-length distribution of the prompts, per source file and overall, and for
  each context length L what packing costs (padding) and what it loses (truncation);
* **vocabulary**: which of CLIP's 49,408 token ids the corpus uses, how few of them cover most of
  the token occurrences, and the id set a pruned vocabulary would keep;
* **embedding**: PCA explained variance and a TwoNN intrinsic-dimension estimate of the pooled
  text memory of a deterministic sample of prompts (needs torch; the other parts do not).

Definitions (the same words are used in ``analysis.json`` and ``report.md``):

* a prompt's **length** n = its content tokens (:meth:`edgeseg.tokenizer.Tokenizer.encode`) + 2,
  the SOT and EOT tokens that SAM3 packs around them;
* at context length L a prompt has **valid tokens** min(n, L); **density** = mean(valid) / L;
  **padding** = 1 - density; **truncated** = the fraction of prompts with n > L; **tokens lost** =
  sum(max(0, n - L)) / sum(n);
* **percentiles** are nearest-rank: the p-th percentile is the smallest length such that at least
  p% of the prompts are no longer;
* **occurrences** are content tokens only (SOT/EOT are in every prompt and always kept); the
  coverage at k is the share of occurrences taken by the k most frequent ids;
* the **pruned vocabulary** keeps all 512 byte-level ids (0-511: the 256 bytes, then the 256
  bytes + ``</w>``), SOT and EOT (49406, 49407) and the corpus's ids;
* identical prompt lines are tokenized once and counted: every statistic is weighted by those
  counts, so it equals the statistic over the files line by line.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.tokenizer import EOT_ID, SOT_ID, VOCAB_SIZE, get_tokenizer

log = logging.getLogger(__name__)

SPECIAL_TOKENS = 2  # SOT + EOT around every prompt
MAX_CONTEXT = 77  # CLIP's position table; --contexts and the recommendation search stay within it
SEARCH_CONTEXTS = tuple(range(4, MAX_CONTEXT + 1))
SAM3_CONTEXT = 32  # SAM3 packs prompts to 32 tokens (its position table has 32 rows)
BYTE_TOKENS = 512  # ids 0-255: bytes; 256-511: bytes + "</w>"
PERCENTILES = (5, 25, 50, 75, 90, 95, 99)
COVERAGE_LEVELS = (0.9, 0.99, 0.999, 1.0)
PCA_LEVELS = (0.9, 0.95, 0.99)
TWONN_DISCARD = 0.1  # Facco et al. drop the largest 10% of the ratios before the fit
TWONN_METHOD = (
    "TwoNN (Facco, d'Errico, Rodriguez & Laio 2017, Sci. Rep. 7:12140): mu = r2/r1 from each point's two "
    "nearest neighbours (Euclidean); d = slope of the least-squares line through the origin of "
    "-log(1 - F(mu)) against log(mu), F the empirical CDF (i/N), the largest 10% of mu discarded; "
    "points with a duplicate (r1 = 0) are left out"
)
PCA_METHOD = "PCA of the mean-pooled valid-token memory (centred, SVD); explained variance ratio per component"
DEFAULT_CONTEXTS = (8, 16, 32)
_EPS = 1e-9  # tolerance when a cumulative share is compared with a level (0.9, 0.99, ...)

# SAM3-LiteText's table for its corpus, to compare against; the paper does not say whether its mean
# prompt length (7.9 tokens) counts SOT and EOT.
PAPER = {
    "contexts": {
        32: {"density": 0.245, "padding": 0.755, "truncated": 0.001},
        16: {"density": 0.480, "padding": 0.520, "truncated": 0.050},
        8: {"density": 0.800, "padding": 0.200, "truncated": 0.285},
    },
    "mean_length": 7.9,
    "intrinsic_dimension": [16, 19],
    "embedding_width": 256,
}

DEFINITIONS = {
    "length": "n = content tokens (Tokenizer.encode) + 2 (SOT and EOT), as SAM3 packs a prompt",
    "content_tokens": "n - 2",
    "valid_tokens": "min(n, L) at context length L",
    "density": "mean over prompts of valid tokens / L",
    "padding": "1 - density",
    "truncated": "fraction of prompts with n > L",
    "tokens_lost": "sum over prompts of max(0, n - L) / sum of n",
    "percentile": "nearest rank: the smallest length such that at least p% of prompts are no longer",
    "occurrences": "content tokens only; SOT/EOT occur once per prompt and are always kept",
    "coverage": "share of occurrences taken by the k most frequent token ids",
    "pruned_vocabulary": (
        "ids 0-511 (256 byte tokens and 256 byte+</w> tokens) + SOT 49406 + EOT 49407 + the corpus's ids; "
        "the 100% set tokenizes every prompt of this corpus id-for-id, a smaller set needs a fallback "
        "(spelling the missing words with byte tokens), which changes their ids"
    ),
    "weighting": "identical prompt lines are tokenized once and counted; statistics are weighted by the counts",
    "recommended_context": "smallest L in 4..77 whose truncated fraction is below --max-truncation",
}


# -- inputs ---------------------------------------------------------------------------------------
def parse_contexts(text: str) -> list[int]:
    """``"8,16,32"`` -> ``[8, 16, 32]`` (sorted, unique); anything else is a user error."""
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise EdgesegError("--contexts is empty: give comma-separated lengths such as 8,16,32")
    values = []
    for item in items:
        try:
            value = int(item)
        except ValueError:
            raise EdgesegError(f"--contexts: {item!r} is not a whole number (expected e.g. 8,16,32)") from None
        if not 2 <= value <= MAX_CONTEXT:
            raise EdgesegError(f"--contexts: {value} is out of range; a context length is 2..{MAX_CONTEXT} "
                               "(it holds SOT and EOT)")
        values.append(value)
    return sorted(set(values))


def read_sources(paths: Sequence[str | Path]) -> dict[str, list[str]]:
    """Prompts of each file, keyed by the file stem (which must be unique)."""
    from edgeseg.fileio import read_prompts

    if not paths:
        raise EdgesegError("give at least one prompts file (--prompts FILE...)")
    sources: dict[str, list[str]] = {}
    for path in paths:
        name = Path(path).stem
        if name in sources:
            raise EdgesegError(f"two prompts files are named {name!r}; the file stem names each source, "
                               "so give files with different names")
        sources[name] = read_prompts(path)
    return sources


# -- tokenization ---------------------------------------------------------------------------------
@dataclass
class TokenizedCorpus:
    """The distinct prompts of some sources, tokenized once, and how often each source holds each.

    ``lengths[u]`` is prompt u's n (content + 2); its content ids are ``ids[offsets[u]:offsets[u+1]]``.
    ``sources[name]`` is ``(index, count)``: which distinct prompts the source holds, how many times.
    """

    texts: list[str]
    lengths: np.ndarray
    ids: np.ndarray
    offsets: np.ndarray
    sources: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def content(self) -> np.ndarray:
        return self.lengths - SPECIAL_TOKENS

    def weights(self, name: str | None = None) -> np.ndarray:
        """Count of every distinct prompt in one source (or, with ``None``, in all of them)."""
        total = np.zeros(len(self.texts), dtype=np.int64)
        for key, (index, count) in self.sources.items():
            if name is None or key == name:
                np.add.at(total, index, count)
        return total


def tokenize_corpus(sources: dict[str, Sequence[str]], progress: Callable[[int], None] | None = None
                    ) -> TokenizedCorpus:
    """Count identical prompts, then tokenize each distinct prompt once (``Tokenizer.encode``)."""
    encode = get_tokenizer().encode
    index: dict[str, int] = {}
    texts: list[str] = []
    lengths: list[int] = []
    flat: list[int] = []
    per_source: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, prompts in sources.items():
        counts = Counter(prompts)
        rows = np.empty(len(counts), dtype=np.int64)
        for j, text in enumerate(counts):
            u = index.get(text)
            if u is None:
                u = index[text] = len(texts)
                texts.append(text)
                ids = encode(text)
                flat.extend(ids)
                lengths.append(len(ids) + SPECIAL_TOKENS)
            rows[j] = u
        per_source[name] = (rows, np.fromiter(counts.values(), dtype=np.int64, count=len(counts)))
        if progress is not None:
            progress(len(prompts))
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths_arr - SPECIAL_TOKENS, out=offsets[1:])
    return TokenizedCorpus(texts, lengths_arr, np.asarray(flat, dtype=np.int64), offsets, per_source)


# -- lengths --------------------------------------------------------------------------------------
def length_histogram(lengths: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``hist[n]`` = number of prompts of length n (weighted by ``weights``), as int64."""
    lengths = np.asarray(lengths, dtype=np.int64)
    hist = np.bincount(lengths, weights=weights, minlength=SPECIAL_TOKENS + 1)
    return np.rint(hist).astype(np.int64)


def percentile(hist: np.ndarray, p: float) -> int:
    """Nearest-rank percentile of a length histogram: smallest n with at least p% of prompts <= n."""
    total = int(hist.sum())
    if total == 0:
        raise ValueError("empty histogram")
    cumulative = np.cumsum(hist)
    need = p / 100.0 * total
    return int(np.argmax(cumulative >= need - _EPS * total))


def context_row(hist: np.ndarray, context: int) -> dict[str, Any]:
    """Packing at one context length L: density, padding, truncated, tokens lost (see module docs)."""
    n = np.arange(len(hist), dtype=np.int64)
    prompts = int(hist.sum())
    tokens = int((n * hist).sum())
    valid = int((np.minimum(n, context) * hist).sum())
    lost = int((np.maximum(n - context, 0) * hist).sum())
    truncated = int(hist[context + 1:].sum())
    density = valid / (prompts * context)
    return {
        "context_length": int(context),
        "density": density,
        "padding": 1.0 - density,
        "truncated": truncated / prompts,
        "truncated_prompts": truncated,
        "tokens_lost": lost / tokens if tokens else 0.0,
        "mean_valid_tokens": valid / prompts,
    }


def recommend_context(hist: np.ndarray, max_truncation: float, search: Sequence[int] = SEARCH_CONTEXTS
                      ) -> int | None:
    """Smallest L in ``search`` that truncates fewer than ``max_truncation`` of the prompts (or None)."""
    prompts = int(hist.sum())
    for context in search:
        if int(hist[context + 1:].sum()) < max_truncation * prompts:
            return int(context)
    return None


def length_stats(hist: np.ndarray, contexts: Sequence[int], max_truncation: float) -> dict[str, Any]:
    """Length distribution and per-L packing of one length histogram."""
    n = np.arange(len(hist), dtype=np.int64)
    prompts = int(hist.sum())
    mean = float((n * hist).sum() / prompts)
    present = np.flatnonzero(hist)
    return {
        "prompts": prompts,
        "mean_length": mean,
        "mean_content_tokens": mean - SPECIAL_TOKENS,
        "min_length": int(present[0]),
        "max_length": int(present[-1]),
        "percentiles": {f"p{p}": percentile(hist, p) for p in PERCENTILES},
        "histogram": {str(int(k)): int(hist[k]) for k in present},
        "contexts": [context_row(hist, c) for c in contexts],
        "recommended_context": recommend_context(hist, max_truncation),
    }


# -- vocabulary -----------------------------------------------------------------------------------
def token_counts(corpus: TokenizedCorpus, weights: np.ndarray) -> np.ndarray:
    """Occurrences of every id (content tokens) over prompts weighted by ``weights``: int64 [49408]."""
    per_token = np.repeat(weights, corpus.content)
    counts = np.bincount(corpus.ids, weights=per_token, minlength=VOCAB_SIZE)
    return np.rint(counts).astype(np.int64)


def tokens_for_coverage(counts: np.ndarray, level: float) -> int:
    """How many of the most frequent ids take at least ``level`` of all occurrences."""
    ranked = np.sort(counts[counts > 0])[::-1]
    if ranked.size == 0:
        return 0
    cumulative = np.cumsum(ranked)
    total = int(cumulative[-1])
    return int(np.argmax(cumulative >= level * total - _EPS * total)) + 1


def kept_ids(counts: np.ndarray, level: float = 1.0) -> np.ndarray:
    """Sorted ids of the pruned vocabulary: bytes (0-511), SOT/EOT and the top ids covering ``level``."""
    k = tokens_for_coverage(counts, level)
    order = np.lexsort((np.arange(counts.size), -counts))  # by count, descending; ties by id
    top = order[:k]
    keep = np.union1d(np.arange(BYTE_TOKENS), top)
    return np.union1d(keep, [SOT_ID, EOT_ID]).astype(np.int64)


def vocabulary_stats(counts: np.ndarray, coverage: float) -> dict[str, Any]:
    levels = sorted(set(COVERAGE_LEVELS) | {coverage})
    rows = []
    for level in levels:
        k = tokens_for_coverage(counts, level)
        rows.append({"coverage": level, "tokens": k, "vocabulary_size": int(kept_ids(counts, level).size)})
    return {
        "vocabulary_size": VOCAB_SIZE,
        "occurrences": int(counts.sum()),
        "distinct_tokens": int((counts > 0).sum()),
        "coverage": rows,
    }


# -- embedding ------------------------------------------------------------------------------------
def pca_explained_variance(x: np.ndarray) -> np.ndarray:
    """Explained-variance ratio of each principal component of the rows of ``x`` (descending)."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(0)
    singular = np.linalg.svd(x, compute_uv=False)
    variance = singular**2
    total = variance.sum()
    if total <= 0:
        return np.zeros_like(variance)
    return variance / total


def pca_dimensions(ratios: np.ndarray, level: float) -> int:
    """Smallest number of components whose explained variance reaches ``level``."""
    cumulative = np.cumsum(ratios)
    if cumulative.size == 0 or cumulative[-1] <= 0:
        return 0
    return int(np.argmax(cumulative >= level - _EPS)) + 1


def _two_nearest(x: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Distances to each row's nearest and second-nearest other row, ``[N, 2]`` (brute force)."""
    sq = (x * x).sum(1)
    out = np.empty((len(x), 2))
    for start in range(0, len(x), chunk):
        block = x[start:start + chunk]
        d2 = sq[start:start + chunk, None] + sq[None, :] - 2.0 * block @ x.T
        np.maximum(d2, 0.0, out=d2)
        rows = np.arange(len(block))
        d2[rows, start + rows] = np.inf  # not its own neighbour
        two = np.partition(d2, 1, axis=1)[:, :2]
        out[start:start + chunk] = np.sqrt(np.sort(two, axis=1))
    return out


def twonn(x: np.ndarray, discard: float = TWONN_DISCARD) -> dict[str, Any]:
    """TwoNN intrinsic dimension of the rows of ``x`` (see :data:`TWONN_METHOD`).

    Returns the fitted ``dimension``, the maximum-likelihood variant ``mle`` = N / sum(log mu) on
    all points, and the point counts. Distances are Euclidean, computed in float64.
    """
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 3:
        raise ValueError("TwoNN needs at least 3 points")
    near = _two_nearest(x)
    usable = near[:, 0] > 0
    mu = near[usable, 1] / near[usable, 0]
    n = mu.size
    if n < 3:
        raise ValueError("TwoNN needs at least 3 distinct points")
    log_mu = np.sort(np.log(mu))
    keep = max(2, int(math.floor(n * (1.0 - discard))))
    empirical = np.arange(1, n + 1) / n
    xs = log_mu[:keep]
    ys = -np.log(1.0 - empirical[:keep])
    denominator = float((xs * xs).sum())
    # all ratios 1 (every point equidistant from its two neighbours, e.g. a lattice): no estimate
    dimension = float((xs * ys).sum() / denominator) if denominator > 0 else None
    total_log = float(log_mu.sum())
    return {
        "method": TWONN_METHOD,
        "dimension": dimension,
        "mle": n / total_log if total_log > 0 else None,
        "points": int(len(x)),
        "points_used": int(n),
        "points_in_fit": int(keep),
        "duplicates_dropped": int(len(x) - n),
        "fit": {"log_mu": xs.tolist(), "minus_log_survival": ys.tolist()},
    }


def sample_prompts(corpus: TokenizedCorpus, sample: int, seed: int) -> list[str]:
    """``sample`` prompts with distinct token ids, drawn uniformly without replacement (seeded).

    Candidates are the distinct prompts in first-occurrence order, one per distinct id sequence
    (prompts that differ only in case or spacing tokenize alike and would give duplicate points).
    """
    seen: set[tuple[int, ...]] = set()
    candidates = []
    for u in range(len(corpus.texts)):
        key = tuple(corpus.ids[corpus.offsets[u]:corpus.offsets[u + 1]].tolist())
        if key not in seen:
            seen.add(key)
            candidates.append(u)
    size = min(sample, len(candidates))
    pick = np.sort(np.random.default_rng(seed).choice(len(candidates), size=size, replace=False))
    return [corpus.texts[candidates[i]] for i in pick]


def pooled_memory(model, prompts: Sequence[str], batch_size: int = 64,
                  progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
    """Mean-pooled valid-token memory ``[N, 256]`` of ``prompts`` and how many were truncated."""
    from edgeseg.encode import encode_prompts
    from edgeseg.outputs import pooled

    vectors, truncated = [], 0
    step = 16 * batch_size  # bounds the memory held at once
    for start in range(0, len(prompts), step):
        encoded = encode_prompts(model, prompts[start:start + step], batch_size=batch_size, progress=progress)
        vectors.append(pooled(encoded.memory, encoded.mask))
        truncated += encoded.truncated
    return np.concatenate(vectors), truncated


def embedding_stats(vectors: np.ndarray) -> dict[str, Any]:
    ratios = pca_explained_variance(vectors)
    return {
        "pca": {
            "method": PCA_METHOD,
            "dimensions": [{"variance": level, "components": pca_dimensions(ratios, level)} for level in PCA_LEVELS],
            "explained_variance_ratio": ratios.tolist(),
        },
        "twonn": twonn(vectors),
        "width": int(vectors.shape[1]),
    }


# -- the whole analysis ---------------------------------------------------------------------------
def analyze_corpus(corpus: TokenizedCorpus, contexts: Sequence[int] = DEFAULT_CONTEXTS,
                   max_truncation: float = 0.01, coverage: float = 0.999) -> dict[str, Any]:
    """Length and vocabulary anatomy, per source and overall, and the recommendation."""
    overall_w = corpus.weights()
    overall_hist = length_histogram(corpus.lengths, overall_w)
    counts = token_counts(corpus, overall_w)
    sources = {}
    for name, (index, _) in corpus.sources.items():
        w = corpus.weights(name)
        stats = length_stats(length_histogram(corpus.lengths, w), contexts, max_truncation)
        source_counts = token_counts(corpus, w)
        stats["unique_prompts"] = int(index.size)
        stats["distinct_tokens"] = int((source_counts > 0).sum())
        stats["tokens_for_coverage"] = tokens_for_coverage(source_counts, coverage)
        sources[name] = stats
    overall = length_stats(overall_hist, contexts, max_truncation)
    overall["unique_prompts"] = int((overall_w > 0).sum())
    curve = [context_row(overall_hist, c) for c in range(SPECIAL_TOKENS, MAX_CONTEXT + 1)]
    vocabulary = vocabulary_stats(counts, coverage)
    comparison = []
    for context, paper in sorted(PAPER["contexts"].items(), reverse=True):
        ours = context_row(overall_hist, context)
        comparison.append({"context_length": context, "ours": ours, "paper": paper})
    recommended = overall["recommended_context"]
    at_coverage = next(r for r in vocabulary["coverage"] if r["coverage"] == coverage)
    full = next(r for r in vocabulary["coverage"] if r["coverage"] == 1.0)
    return {
        "lengths": {"overall": overall, "sources": sources},
        "context_curve": {key: [row[key] for row in curve]
                          for key in ("context_length", "density", "padding", "truncated", "tokens_lost")},
        "paper_comparison": {
            "rows": comparison,
            "mean_length": {
                "paper": PAPER["mean_length"],
                "ours_with_sot_eot": overall["mean_length"],
                "ours_without_sot_eot": overall["mean_content_tokens"],
                "note": "the paper does not say whether its 7.9 tokens count SOT and EOT",
            },
        },
        "vocabulary": vocabulary,
        "recommendation": {
            "context_length": recommended,
            "max_truncation": max_truncation,
            "searched": [SEARCH_CONTEXTS[0], SEARCH_CONTEXTS[-1]],
            "at_recommended": context_row(overall_hist, recommended) if recommended is not None else None,
            "vocabulary": {"coverage": coverage, "corpus_tokens": at_coverage["tokens"],
                           "vocabulary_size": at_coverage["vocabulary_size"]},
            "vocabulary_full": {"coverage": 1.0, "corpus_tokens": full["tokens"],
                                "vocabulary_size": full["vocabulary_size"]},
        },
        "_counts": counts,  # for vocabulary.txt and the plots; not written to analysis.json
        "_overall_hist": overall_hist,
    }


def run(paths: Sequence[str | Path], out: str | Path, *, contexts: Sequence[int] = DEFAULT_CONTEXTS,
        encoder: str = "sam3", checkpoint: str | Path | None = None, embedding: bool = True, sample: int = 512,
        max_truncation: float = 0.01, coverage: float = 0.999, seed: int = 0,
        note: Callable[[str], None] = log.info) -> dict[str, Any]:
    """``edgeseg analyze``: read, measure, plot, write ``out/`` atomically; returns analysis.json's dict."""
    from tqdm import tqdm

    started = time.perf_counter()
    timing: dict[str, float] = {}
    contexts = _check_options(out, contexts, embedding, sample, max_truncation, coverage)
    out = Path(out)
    if not embedding and checkpoint is not None:
        note("--no-embedding: --teacher-checkpoint is not used")

    t0 = time.perf_counter()
    sources = read_sources(paths)
    timing["read"] = time.perf_counter() - t0
    total_prompts = sum(len(p) for p in sources.values())
    model = _embedding_model(encoder, checkpoint, seed, timing, note) if embedding else None

    t0 = time.perf_counter()
    with tqdm(total=total_prompts, unit="prompt", desc="tokenize", disable=None, leave=False) as bar:
        corpus = tokenize_corpus(sources, progress=bar.update)
    timing["tokenize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = analyze_corpus(corpus, contexts, max_truncation, coverage)
    timing["statistics"] = time.perf_counter() - t0
    timing["length_and_vocabulary"] = timing["read"] + timing["tokenize"] + timing["statistics"]
    counts, overall_hist = result.pop("_counts"), result.pop("_overall_hist")

    if model is not None:
        t0 = time.perf_counter()
        result["embedding"] = _embedding_part(model, corpus, encoder, checkpoint, sample, seed, note)
        timing["embedding"] = time.perf_counter() - t0
    else:
        result["embedding"] = {"skipped": "--no-embedding"}

    inputs = {
        "files": [{"name": name, "path": str(path), "prompts": len(sources[name]),
                   "unique_prompts": int(corpus.sources[name][0].size)}
                  for name, path in zip(sources, paths)],
        "prompts": total_prompts, "unique_prompts": len(corpus.texts), "contexts": contexts,
        "max_truncation": max_truncation, "coverage": coverage, "seed": seed,
        "sample": sample if embedding else None, "encoder": encoder if embedding else None,
    }
    result = _document(inputs, result)
    _write_outputs(out, result, counts, overall_hist, timing, started)
    return result


def _check_options(out: str | Path, contexts: Sequence[int], embedding: bool, sample: int, max_truncation: float,
                   coverage: float) -> list[int]:
    """Refuse bad options and an unusable ``out`` before any work; returns the sorted context lengths."""
    from edgeseg.fileio import check_output_folder

    if not 0.0 < max_truncation <= 1.0:
        raise EdgesegError(f"--max-truncation must be in (0, 1], got {max_truncation}")
    if not 0.0 < coverage <= 1.0:
        raise EdgesegError(f"--coverage must be in (0, 1], got {coverage}")
    if embedding and sample < 3:
        raise EdgesegError(f"--sample must be at least 3 (TwoNN needs 3 points), got {sample}")
    contexts = sorted(set(int(c) for c in contexts))
    if not contexts or not all(2 <= c <= MAX_CONTEXT for c in contexts):
        raise EdgesegError(f"context lengths must be 2..{MAX_CONTEXT}, got {contexts}")
    out = Path(out)
    check_output_folder(out)
    if out.exists() and not out.is_dir():
        raise EdgesegError(f"--out {out} exists and is not a folder")
    return contexts


def _embedding_model(encoder: str, checkpoint: str | Path | None, seed: int, timing: dict[str, float],
                     note: Callable[[str], None]):
    """The encoder of the embedding part, built before the long work so that a bad checkpoint fails first."""
    from edgeseg.checkpoints import load_encoder

    t0 = time.perf_counter()
    model = load_encoder(encoder, checkpoint, None, seed=seed)
    timing["model"] = time.perf_counter() - t0
    if checkpoint is None:
        note(f"no --teacher-checkpoint given: {encoder} has RANDOM weights (seed {seed}); "
             "the embedding part is not meaningful")
    return model


def _embedding_part(model, corpus: TokenizedCorpus, encoder: str, checkpoint: str | Path | None, sample: int,
                    seed: int, note: Callable[[str], None]) -> dict[str, Any]:
    """PCA and TwoNN of the pooled memory of a seeded sample of the corpus, with what produced them."""
    from tqdm import tqdm

    weights = "random" if checkpoint is None else Path(checkpoint).name
    label = f"RANDOM WEIGHTS (seed {seed}): not meaningful" if checkpoint is None else f"weights {weights}"
    chosen = sample_prompts(corpus, sample, seed)
    if len(chosen) < 3:
        raise EdgesegError("the embedding part needs at least 3 prompts with distinct tokens; use --no-embedding")
    if len(chosen) < sample:
        note(f"--sample {sample}: the corpus has only {len(chosen)} prompts with distinct tokens; using all")
    with tqdm(total=len(chosen), unit="prompt", desc=encoder, disable=None, leave=False) as bar:
        vectors, truncated = pooled_memory(model, chosen, progress=bar.update)
    emb = embedding_stats(vectors)
    emb.update({
        "encoder": encoder,
        "weights": weights,
        "label": label,
        "seed": seed,
        "context_length": model.context_length,
        "sample": len(chosen),
        "sample_rule": "distinct token sequences, uniform without replacement, numpy default_rng(seed)",
        "sample_truncated": int(truncated),
        "paper_intrinsic_dimension": PAPER["intrinsic_dimension"],
    })
    return emb


def _document(inputs: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """analysis.json's dict: the tool, definitions and inputs, the measurements, the paper's figures."""
    from edgeseg import __version__

    return {
        "tool": "edgeseg analyze",
        "version": __version__,
        "definitions": DEFINITIONS,
        "inputs": inputs,
        **result,
        "paper": {"contexts": {str(k): v for k, v in PAPER["contexts"].items()},
                  **{k: v for k, v in PAPER.items() if k != "contexts"}},
    }


def _write_outputs(out: Path, result: dict[str, Any], counts: np.ndarray, overall_hist: np.ndarray,
                   timing: dict[str, float], started: float) -> None:
    """vocabulary.txt, the plots, report.md and analysis.json into ``out``, all or nothing."""
    from edgeseg.fileio import atomic_path

    t0 = time.perf_counter()
    with atomic_path(out, directory=True) as tmp:
        ids = kept_ids(counts, 1.0)
        tokenizer = get_tokenizer()
        (tmp / "vocabulary.txt").write_text(
            "".join(f"{i}\t{tokenizer.decoder[int(i)]}\n" for i in ids), encoding="utf-8")
        plots = write_plots(result, counts, overall_hist, tmp)
        result["outputs"] = ["analysis.json", "report.md", "vocabulary.txt", *plots]
        timing["plots_and_writing"] = time.perf_counter() - t0
        timing["total"] = time.perf_counter() - started
        result["timing_s"] = timing
        (tmp / "report.md").write_text(render_report(result), encoding="utf-8")
        (tmp / "analysis.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


def summary_line(result: dict[str, Any], out: str | Path) -> str:
    """One line on a finished analysis: what was read, how long it took, what is recommended."""
    timing, rec, inputs = result["timing_s"], result["recommendation"], result["inputs"]
    emb = f", embedding {timing['embedding']:.1f} s" if "embedding" in timing else ""
    return (f"analyzed {inputs['prompts']:,} prompt(s) ({inputs['unique_prompts']:,} distinct) from "
            f"{len(inputs['files'])} file(s): length+vocabulary {timing['length_and_vocabulary']:.1f} s{emb}, total "
            f"{timing['total']:.1f} s; recommended context {rec['context_length']}, vocabulary "
            f"{rec['vocabulary']['vocabulary_size']:,} ids at {rec['vocabulary']['coverage']:.1%} coverage -> {out}")


# -- report ---------------------------------------------------------------------------------------
def _pct(value: float, digits: int = 1) -> str:
    return f"{100 * value:.{digits}f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def render_report(result: dict[str, Any]) -> str:
    """``report.md`` from analysis.json's dict."""
    lines = _report_header(result)
    lines += ["## Definitions", ""]
    lines += [f"- **{key.replace('_', ' ')}**: {text}" for key, text in result["definitions"].items()]
    lines += _report_lengths(result)
    lines += _report_vocabulary(result["vocabulary"])
    lines += _report_embedding(result["embedding"])
    lines += _report_recommendation(result["recommendation"], result["vocabulary"])
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({name})" for name in result["outputs"] if name.endswith(".png")]
    return "\n".join(lines) + "\n"


def _report_header(result: dict[str, Any]) -> list[str]:
    inputs, emb, timing = result["inputs"], result["embedding"], result["timing_s"]
    lines = ["# Prompt anatomy", ""]
    lines.append(f"{inputs['prompts']:,} prompts ({inputs['unique_prompts']:,} distinct lines) from "
                 f"{len(inputs['files'])} file(s): " + ", ".join(f"`{f['path']}`" for f in inputs["files"]) + ".")
    if "skipped" in emb:
        lines.append("Embedding part: skipped (--no-embedding).")
    else:
        lines.append(f"Embedding part: {emb['encoder']}, **{emb['label']}**.")
    extra = (f", building the model {timing['model']:.1f} s, embedding {timing['embedding']:.1f} s"
             if "embedding" in timing else "")
    lines += ["", f"Time: length and vocabulary parts {timing['length_and_vocabulary']:.1f} s "
              f"(read {timing['read']:.1f} s, tokenize {timing['tokenize']:.1f} s, statistics "
              f"{timing['statistics']:.1f} s){extra}, total {timing['total']:.1f} s.", ""]
    return lines


def _report_lengths(result: dict[str, Any]) -> list[str]:
    inputs, overall, vocab = result["inputs"], result["lengths"]["overall"], result["vocabulary"]
    lines = ["", "## Length anatomy", ""]
    p = overall["percentiles"]
    lines.append(f"Overall: mean length {overall['mean_length']:.2f} tokens with SOT/EOT "
                 f"({overall['mean_content_tokens']:.2f} without); median {p['p50']}, p90 {p['p90']}, p95 {p['p95']}, "
                 f"p99 {p['p99']}, max {overall['max_length']} (all with SOT/EOT).")
    lines += ["", "### Ours vs the paper", ""]
    rows = []
    for row in result["paper_comparison"]["rows"]:
        ours, paper = row["ours"], row["paper"]
        rows.append([row["context_length"], f"{ours['density']:.3f}", f"{paper['density']:.3f}",
                     _pct(ours["padding"]), _pct(paper["padding"]), _pct(ours["truncated"], 2),
                     _pct(paper["truncated"]), _pct(ours["tokens_lost"], 2)])
    lines += _table(["L", "density (ours)", "density (paper)", "padding (ours)", "padding (paper)",
                     "truncated (ours)", "truncated (paper)", "tokens lost (ours)"], rows)
    mean = result["paper_comparison"]["mean_length"]
    lines += ["", f"Mean prompt length: paper {mean['paper']} tokens; ours {mean['ours_with_sot_eot']:.2f} with "
              f"SOT/EOT, {mean['ours_without_sot_eot']:.2f} without. The paper's exact length definition is not "
              "known to us (whether its 7.9 counts SOT and EOT), so compare with both. The paper's corpus is not "
              "ours: the differences come from what the prompts are (see the per-source table: category names are "
              "short, referring sentences long), not from the tokenizer, which is SAM3's own.", ""]

    lines += ["### Per context length (--contexts)", ""]
    lines += _table(["source", "L", "density", "padding", "truncated", "prompts truncated", "tokens lost"],
                    [[name, r["context_length"], f"{r['density']:.3f}", _pct(r["padding"]), _pct(r["truncated"], 2),
                      f"{r['truncated_prompts']:,}", _pct(r["tokens_lost"], 2)]
                     for name, stats in [("**overall**", overall), *result["lengths"]["sources"].items()]
                     for r in stats["contexts"]])
    lines += ["", "### Per source", ""]
    header = ["source", "prompts", "distinct", "mean n", "mean content", "p50", "p90", "p99", "max",
              *[f"trunc@{c}" for c in inputs["contexts"]], "rec. L", "distinct ids"]
    body = []
    for name, s in [("**overall**", overall), *result["lengths"]["sources"].items()]:
        q = s["percentiles"]
        body.append([name, f"{s['prompts']:,}", f"{s['unique_prompts']:,}", f"{s['mean_length']:.2f}",
                     f"{s['mean_content_tokens']:.2f}", q["p50"], q["p90"], q["p99"], s["max_length"],
                     *[_pct(r["truncated"], 2) for r in s["contexts"]],
                     s["recommended_context"] if s["recommended_context"] is not None else "none",
                     f"{s.get('distinct_tokens', vocab['distinct_tokens']):,}"])
    lines += _table(header, body)
    return lines


def _report_vocabulary(vocab: dict[str, Any]) -> list[str]:
    lines = ["", "## Vocabulary anatomy", ""]
    lines.append(f"{vocab['distinct_tokens']:,} distinct token ids of {vocab['vocabulary_size']:,} are used "
                 f"({_pct(vocab['distinct_tokens'] / vocab['vocabulary_size'])}), over "
                 f"{vocab['occurrences']:,} content-token occurrences.")
    lines.append("")
    lines += _table(["coverage of occurrences", "most frequent ids needed", "pruned vocabulary size"],
                    [[_pct(r["coverage"], 1), f"{r['tokens']:,}", f"{r['vocabulary_size']:,}"]
                     for r in vocab["coverage"]])
    lines += ["", "`vocabulary.txt` lists the 100% set, one `id<TAB>token` per line, ids ascending: all 512 "
              "byte-level ids (0-511), SOT/EOT and every id the corpus uses.", ""]
    return lines


def _report_embedding(emb: dict[str, Any]) -> list[str]:
    lines = ["## Embedding anatomy", ""]
    if "skipped" in emb:
        lines.append("Skipped (--no-embedding).")
    else:
        pca, tw = emb["pca"], emb["twonn"]
        lines.append(f"**{emb['label']}.** Encoder {emb['encoder']} at context {emb['context_length']}, "
                     f"{emb['sample']} sampled prompts ({emb['sample_rule']}, seed {emb['seed']}; "
                     f"{emb['sample_truncated']} truncated), width {emb['width']}.")
        lines.append("")
        lines.append("- PCA: " + ", ".join(f"{d['components']} components for {_pct(d['variance'], 0)}"
                                          for d in pca["dimensions"]) + f" of the variance. Method: {pca['method']}.")
        lines.append(f"- Intrinsic dimension (TwoNN): **{_num(tw['dimension'])}** (maximum-likelihood variant "
                     f"{_num(tw['mle'])}; {tw['points_used']} points used, {tw['duplicates_dropped']} dropped as "
                     f"duplicates). Method: {tw['method']}.")
        lo, hi = emb["paper_intrinsic_dimension"]
        lines.append(f"- The paper reports about {lo}-{hi} of {PAPER['embedding_width']} dimensions for the "
                     "trained teacher." + (" These are random weights: the figures describe an untrained network on "
                                           "this sample, not what the teacher learned; pass --teacher-checkpoint "
                                           "to compare." if emb["weights"] == "random" else ""))
    return lines


def _report_recommendation(rec: dict[str, Any], vocab: dict[str, Any]) -> list[str]:
    lines = ["", "## Recommendation", ""]
    at = rec["at_recommended"]
    if rec["context_length"] is None:
        lines.append(f"- Context length: no L in {rec['searched'][0]}..{rec['searched'][1]} truncates fewer than "
                     f"{_pct(rec['max_truncation'], 2)} of the prompts.")
    else:
        lines.append(f"- Context length: **{rec['context_length']}**, the smallest L in {rec['searched'][0]}.."
                     f"{rec['searched'][1]} that truncates fewer than {_pct(rec['max_truncation'], 2)} of the prompts "
                     f"(it truncates {_pct(at['truncated'], 2)}, loses {_pct(at['tokens_lost'], 3)} of tokens, "
                     f"density {at['density']:.3f}).")
        if rec["context_length"] > SAM3_CONTEXT:
            lines.append(f"  SAM3 itself packs prompts to {SAM3_CONTEXT} tokens.")
    v, f = rec["vocabulary"], rec["vocabulary_full"]
    lines.append(f"- Vocabulary: {v['vocabulary_size']:,} ids cover {_pct(v['coverage'], 1)} of occurrences "
                 f"({v['corpus_tokens']:,} corpus ids + bytes + SOT/EOT); {f['vocabulary_size']:,} cover 100% "
                 f"({f['corpus_tokens']:,} corpus ids), of {vocab['vocabulary_size']:,}.")
    return lines


# -- plots ----------------------------------------------------------------------------------------
def write_plots(result: dict[str, Any], counts: np.ndarray, hist: np.ndarray, folder: Path) -> list[str]:
    """PNG plots into ``folder``; returns their file names (none without matplotlib, the plots extra)."""
    from edgeseg.errors import optional_module

    matplotlib = optional_module("matplotlib", "the PNG plots")
    if matplotlib is None:
        return []
    matplotlib.use("Agg")
    _plot_lengths(result, hist, folder)
    _plot_contexts(result, folder)
    _plot_vocabulary(counts, folder)
    names = ["lengths.png", "contexts.png", "vocabulary.png"]
    if "skipped" not in result["embedding"]:
        _plot_embedding(result["embedding"], folder)
        names.append("embedding.png")
    return names


def _plot_lengths(result: dict[str, Any], hist: np.ndarray, folder: Path) -> None:
    from matplotlib.figure import Figure  # write_plots checked that matplotlib is installed

    contexts = result["inputs"]["contexts"]
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    n = np.arange(hist.size)
    ax.bar(n, hist / hist.sum(), width=0.9, color="tab:blue")
    for c in contexts:
        ax.axvline(c + 0.5, color="tab:red", linestyle="--", linewidth=1)
        ax.text(c + 0.5, ax.get_ylim()[1] * 0.95, f" L={c}", color="tab:red", fontsize=8)
    ax.set_xlim(-0.5, max(hist.size, max(contexts) + 4))
    ax.set_xlabel("prompt length n (content tokens + SOT + EOT)")
    ax.set_ylabel("fraction of prompts")
    ax.set_title(f"Token lengths: {result['inputs']['prompts']:,} prompts")
    fig.savefig(folder / "lengths.png", dpi=110)


def _plot_contexts(result: dict[str, Any], folder: Path) -> None:
    from matplotlib.figure import Figure  # write_plots checked that matplotlib is installed

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    curve = result["context_curve"]
    ax.plot(curve["context_length"], curve["density"], label="density (ours)", color="tab:blue")
    ax.plot(curve["context_length"], curve["truncated"], label="truncated prompts (ours)", color="tab:red")
    ax.plot(curve["context_length"], curve["tokens_lost"], label="tokens lost (ours)", color="tab:orange")
    paper = PAPER["contexts"]
    ax.scatter(list(paper), [v["density"] for v in paper.values()], marker="x", color="tab:blue",
               label="density (paper)", zorder=3)
    ax.scatter(list(paper), [v["truncated"] for v in paper.values()], marker="x", color="tab:red",
               label="truncated (paper)", zorder=3)
    rec = result["recommendation"]["context_length"]
    if rec is not None:
        ax.axvline(rec, color="gray", linestyle=":", label=f"recommended L={rec}")
    ax.set_xscale("log", base=2)
    ax.set_xticks([2, 4, 8, 16, 32, 64], labels=["2", "4", "8", "16", "32", "64"])
    ax.set_xlabel("context length L")
    ax.set_ylabel("fraction")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("Packing vs context length")
    fig.savefig(folder / "contexts.png", dpi=110)


def _plot_vocabulary(counts: np.ndarray, folder: Path) -> None:
    from matplotlib.figure import Figure  # write_plots checked that matplotlib is installed

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ranked = np.sort(counts[counts > 0])[::-1]
    if ranked.size:
        ax.plot(np.arange(1, ranked.size + 1), np.cumsum(ranked) / ranked.sum(), color="tab:green")
        ax.set_xscale("log")
    for level in COVERAGE_LEVELS[:-1]:
        ax.axhline(level, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("most frequent token ids kept")
    ax.set_ylabel("coverage of token occurrences")
    ax.set_title(f"Vocabulary coverage: {int((counts > 0).sum()):,} of {VOCAB_SIZE:,} ids used")
    fig.savefig(folder / "vocabulary.png", dpi=110)


def _plot_embedding(emb: dict[str, Any], folder: Path) -> None:
    from matplotlib.figure import Figure  # write_plots checked that matplotlib is installed

    fig = Figure(figsize=(10, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    ratios = np.asarray(emb["pca"]["explained_variance_ratio"])
    left.plot(np.arange(1, ratios.size + 1), np.cumsum(ratios), color="tab:purple")
    for d in emb["pca"]["dimensions"]:
        left.axhline(d["variance"], color="gray", linestyle=":", linewidth=1)
    left.set_xlabel("principal components")
    left.set_ylabel("cumulative explained variance")
    left.set_title("PCA of pooled memory")
    tw = emb["twonn"]
    xs, ys = np.asarray(tw["fit"]["log_mu"]), np.asarray(tw["fit"]["minus_log_survival"])
    right.scatter(xs, ys, s=6, color="tab:purple")
    if xs.size and tw["dimension"] is not None:
        right.plot([0, xs.max()], [0, tw["dimension"] * xs.max()], color="black",
                   label=f"slope d = {tw['dimension']:.1f}")
        right.legend(fontsize=8)
    right.set_xlabel("log(mu), mu = r2 / r1")
    right.set_ylabel("-log(1 - F(mu))")
    right.set_title("TwoNN (Facco et al. 2017)")
    fig.suptitle(f"{emb['encoder']}, {emb['sample']} prompts: {emb['label']}")
    fig.savefig(folder / "embedding.png", dpi=110)
