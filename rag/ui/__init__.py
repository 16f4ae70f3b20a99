"""The Chainlit chat: thin handlers over `rag.app`, uploads and the welcome page."""
