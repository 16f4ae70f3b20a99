"""Ask questions about your own documents: Milvus for retrieval, any OpenAI-compatible LLM."""

__version__ = "0.1.0"
