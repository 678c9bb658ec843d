"""What a query asks for and what it gets back: value objects, and the limits checked where a query enters.

`Page` (k hits after an offset), `Filters` (facet values) and `Fold` (near-
duplicate folding) travel unchanged from the API or the CLI to the engine. A
`Page` checks the engine's fixed limits when it is made; `query_text` and
`query_image` refuse input the engine or the encoder would refuse, before
anything is encoded or sent to OpenSearch.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

from catalogue_search.search.errors import (
    EmptyQueryError,
    ImageTooLargeError,
    OutOfRangeError,
    QueryTooLongError,
    UnreadableImageError,
)
from catalogue_search.search.ranking import cosine_similarity

# The k-NN plugin refuses a `k` above 10,000, whatever the index settings say.
KNN_MAX_K = 10_000
# A text query's length. CLIP reads its first 77 tokens (a few hundred characters); the rest is for BM25.
MAX_QUERY_CHARS = 1_000
# Words of a BM25 query (hybrid mode). The title query's clauses grow about twice as fast as its words
# (words, and words joined in pairs and triples); the node's 1,024-clause limit (indices.query.bool.
# max_clause_count) refused 512 distinct words and took 511 (measured, docs/search.md). Half of that.
MAX_LEXICAL_TERMS = 256
# SageMaker serverless endpoints refuse a request over 4 MB (AWS: "Invoke a serverless endpoint").
SERVERLESS_MAX_PAYLOAD = 4_000_000

IMAGE_MODE = "image"
NAME_MODE = "name"
HYBRID_MODE = "hybrid"
MODES = (IMAGE_MODE, NAME_MODE, HYBRID_MODE)
# Filters and facets, by their name in the CLI, the API and the index.
FACETS = {"product_type": "product types", "brand": "brands"}


@dataclass(frozen=True)
class Page:
    """`k` hits after the first `offset`, checked when made: whole numbers, k >= 1, offset >= 0, and
    k + offset within `limit` (None until `SearchClient.fit` checks the page against the alias's own
    `index.max_result_window`; the k-NN plugin's largest k applies meanwhile)."""

    k: int = 5
    offset: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        k, offset = self.k, self.offset
        if any(isinstance(n, bool) or not isinstance(n, int) for n in (k, offset)):
            raise OutOfRangeError("k and offset must be whole numbers")
        if k < 1:
            raise OutOfRangeError(f"k must be at least 1, got {_short_int(k)}")
        if offset < 0:
            raise OutOfRangeError(f"offset must be 0 or more, got {_short_int(offset)}")
        if k + offset > self.ceiling:
            raise OutOfRangeError(
                f"k + offset must be at most {self.ceiling} (the engine's limit: index.max_result_window and the "
                f"k-NN plugin's largest k), got k={_short_int(k)} offset={_short_int(offset)}"
            )

    @property
    def ceiling(self) -> int:
        return KNN_MAX_K if self.limit is None else min(self.limit, KNN_MAX_K)

    @property
    def end(self) -> int:
        return self.offset + self.k

    def within(self, limit: int) -> Page:
        """This page, checked against an alias whose ceiling on k + offset is `limit`."""
        return Page(self.k, self.offset, limit)

    def probe(self) -> Page:
        """One hit more where the ceiling allows: whether that hit comes back tells if a next page exists."""
        return Page(self.k + 1, self.offset, self.limit) if self.end < self.ceiling else self

    def fetch(self, factor: int = 1) -> int:
        """How many hits to ask the engine for: the page's end, `factor` times (folding), within the ceiling."""
        return min(self.ceiling, self.end * factor)


def _short_int(n: int) -> str:
    text = str(n)
    return text if len(text) <= 24 else f"{text[:6]}…({len(text)} digits)"


@dataclass(frozen=True)
class Filters:
    """Facet values a hit must have; any case (the index's lowercase normalizer), blanks ignored."""

    product_type: str | None = None
    brand: str | None = None

    def __post_init__(self) -> None:
        for name in FACETS:
            value = getattr(self, name)
            object.__setattr__(self, name, str(value).strip() or None if value is not None else None)

    def clauses(self, without: str | None = None) -> list[dict[str, Any]]:
        """Term filters, leaving out the facet `without` (a facet counts what the other filters leave)."""
        return [{"term": {name: value}} for name in FACETS if name != without and (value := getattr(self, name))]


assert set(FACETS) == {f for f in Filters.__dataclass_fields__}, "every facet is a filter"


@dataclass(frozen=True)
class Fold:
    """Fold hits that show the same product image (same image id or path, or image vectors with
    cosine >= `threshold`; None: the `duplicate_cosine_threshold` setting) into one hit with a count."""

    threshold: float | None = None


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float  # the engine's score, (1 + cos) / 2; hybrid: the fused score
    item_id: str
    item_name: str
    image_path: str
    image_id: str | None = None
    product_type: str | None = None
    brand: str | None = None
    # With folding: how many other hits showed the same product image, and their item ids.
    duplicates: int = 0
    duplicate_ids: tuple[str, ...] = ()
    # The cosine similarity, -1 .. 1; by default the score's. Hybrid: the best of the hit's vector lists' (0 when
    # only BM25 found it).
    similarity: float = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.similarity is None:
            object.__setattr__(self, "similarity", cosine_similarity(self.score))

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["duplicate_ids"] = list(self.duplicate_ids)
        return doc


@dataclass(frozen=True)
class FacetValue:
    value: str  # as written in the catalogue (the most common spelling of the normalised value)
    count: int


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
    return mode


def query_text(text: Any, *, lexical: bool) -> str:
    """The stripped text, or a plain refusal: empty, longer than MAX_QUERY_CHARS, or (`lexical`: for
    BM25) more words than the engine's clause limit leaves room for."""
    if not isinstance(text, str) or not text.strip():
        raise EmptyQueryError("the text query is empty")
    text = text.strip()
    if len(text) > MAX_QUERY_CHARS:
        raise QueryTooLongError(
            f"the text query is {len(text):,} characters long; a query may have at most {MAX_QUERY_CHARS:,}"
        )
    if lexical and (words := lexical_terms(text)) > MAX_LEXICAL_TERMS:
        raise QueryTooLongError(
            f"the text query has {words:,} words; a hybrid query may have at most {MAX_LEXICAL_TERMS} "
            "(or search in mode image or name)"
        )
    return text


# One token each in the standard tokenizer (Unicode word breaks): Han ideographs and Hiragana.
_SINGLES = "\u3040-\u309f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_TERMS = re.compile(rf"[{_SINGLES}]|[^\W{_SINGLES}]+|[^\w\s\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e]")


def lexical_terms(text: str) -> int:
    """At least as many terms as the title analyzer makes of `text` (words, each ideograph, each emoji
    or symbol): an upper bound, so that a query it lets through fits the engine's clause limit."""
    bare = "".join(c for c in unicodedata.normalize("NFC", text) if not unicodedata.category(c).startswith("M"))
    return sum(1 for _ in _TERMS.finditer(bare))


def image_limit(setting: int) -> int:
    """The largest query image: the setting, within what a serverless endpoint accepts."""
    return min(setting, SERVERLESS_MAX_PAYLOAD)


def query_image(data: Any, limit: int) -> bytes:
    """The image bytes, or a plain refusal: empty, or over `limit` bytes (before any encoder is called)."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise UnreadableImageError("the image is empty")
    if len(data) > limit:
        raise ImageTooLargeError(
            f"the image is larger than {limit:,} bytes ({limit / 1e6:g} MB), the most a query image may have"
        )
    return bytes(data)
