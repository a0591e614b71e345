"""On-disk formats of albat: every file the pipeline reads or writes goes through here."""
