"""The vector store: row schema, the one filter-quoting function, the collection, its catalog."""
