"""One encode path for every target (a product's image, its title): prepare chunks, record outputs, store vectors.

- `targets`: what differs between an image and a title (`Target`, `IMAGE`, `TITLE`, `wanted`).
- `store`: one target's store (`Store`), its catalogue of what is encoded, what is pending.
- `chunks`: the run's input chunks, ManifestFile and encode plan.
- `outputs`: the transform's `.npz` outputs, recorded in the store and read back streamed.
- `titles`: title ids by content, title records, the title lookup spool of the load.
"""

from catalogue_search.encoding.chunks import MAX_CHUNK_RECORDS, EncodePlan, read_plan, write_chunks
from catalogue_search.encoding.outputs import (
    ChunkOutput,
    EncodeReport,
    encode_output,
    iter_vectors,
    parse_output,
    record_outputs,
)
from catalogue_search.encoding.store import (
    Catalogue,
    EmbeddingStoreError,
    MissingOutputError,
    Store,
    pending_ids,
)
from catalogue_search.encoding.targets import IMAGE, TARGETS, TITLE, Target, Wanted, image_records, wanted
from catalogue_search.encoding.titles import TitleVectors, title_id, title_records, titles_of

__all__ = [
    "IMAGE",
    "MAX_CHUNK_RECORDS",
    "TARGETS",
    "TITLE",
    "Catalogue",
    "ChunkOutput",
    "EmbeddingStoreError",
    "EncodePlan",
    "EncodeReport",
    "MissingOutputError",
    "Store",
    "Target",
    "TitleVectors",
    "Wanted",
    "encode_output",
    "image_records",
    "iter_vectors",
    "parse_output",
    "pending_ids",
    "read_plan",
    "record_outputs",
    "title_id",
    "title_records",
    "titles_of",
    "wanted",
    "write_chunks",
]
