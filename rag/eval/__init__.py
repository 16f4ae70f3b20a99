"""`rag eval`: gold questions, retrieval and answer metrics, reports."""
