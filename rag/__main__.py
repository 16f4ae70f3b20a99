"""`python -m rag …` is the `rag` command (`python -m rag.cli` would load the CLI twice:
the command modules register on the imported `rag.cli`, not on `__main__`)."""

from rag.cli import app

app()
