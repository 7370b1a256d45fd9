"""The Annoy index: build and publish a versioned file, coalesce rebuilds (`builder`), search it
(`searcher`).

Files in index_dir, per model key (":" becomes "-"): `<name>.<version>.ann` (Annoy, angular) and
`<name>.<version>.ids` (one image id per line; Annoy item i is line i). A build writes temp files,
renames them to a name never used before and then publishes the version in Redis: a file that a
searcher has mmapped is never rewritten (that would SIGBUS the reader). The current and the
previous version are kept, older ones removed.

A `Searcher` answers from the newest loaded file merged with an exact search over the items
written since that file was built ("fresh"), minus the ids deleted since then.
"""
from services.index.builder import (  # noqa: F401
    LOCK_TTL_S, N_TREES, STALE_TMP_S, IndexLoadError, build_index, index_basename, request_build, run_coalesced_build,
)
from services.index.searcher import (  # noqa: F401
    SEARCH_K_FACTOR, LoadedIndex, Searcher, find_near_duplicate, load_index, near_duplicate,
)
