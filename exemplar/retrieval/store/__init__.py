"""The store: catalog, segments and manifests, writes, compaction, retention, media; the only
code that touches the catalog and the data directory's files."""
