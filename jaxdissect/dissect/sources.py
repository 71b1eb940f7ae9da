"""The dissection's sources of samples; they live in `jaxdissect.data.sources` (re-exported here)."""
from jaxdissect.data.sources import (LOADER_THREADS, Batch, FolderSource, ScenesSource, Source, TfdsSource,  # noqa: F401
                                     ZSource, batch_ranges, local_batch, pad_batch, prefetch, prefetch_map)
