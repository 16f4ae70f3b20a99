"""`rag` sub-commands kept in their own modules; each registers itself on `rag.cli.app`."""
