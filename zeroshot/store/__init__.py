"""Persistent image embeddings: index a photo library once, then classify, evaluate, search and
sort it without encoding again.

    from zeroshot.models import load_model
    from zeroshot.store.db import Store
    from zeroshot.store.keys import embedding_key

    loaded = load_model("ViT-B-32", "openai")
    with Store.open("photos/.zeroshot") as store:
        stats = store.index(loaded, ["photos/"])      # incremental
        paths, matrix = store.matrix(embedding_key(loaded, fast_decode=False))

Modules: :mod:`.keys` (what determines a vector), :mod:`.files` (file identity, locations),
:mod:`.db` (the SQLite store), :mod:`.index` (incremental indexing).
"""

from .db import KeyStats, PruneStats, Store, StoreError, StoreInfo
from .files import FileRecord, content_hash, default_store_dir
from .index import IndexStats
from .keys import EmbeddingKey, embedding_key

__all__ = ["EmbeddingKey", "FileRecord", "IndexStats", "KeyStats", "PruneStats", "Store", "StoreError",
           "StoreInfo", "content_hash", "default_store_dir", "embedding_key"]
