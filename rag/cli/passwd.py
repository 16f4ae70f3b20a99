"""`rag passwd`: an argon2 hash for `RAG_UI_USERS`, so no plain password sits in `.env`."""

from __future__ import annotations

from typing import Annotated

import typer

from rag.auth import hash_password
from rag.cli.app import app, console, errors


@app.command()
def passwd(
    user: Annotated[str, typer.Argument(help="The user name the entry is for.")],
) -> None:
    """Ask for a password twice and print the `user:hash` entry for RAG_UI_USERS."""
    password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        entry = f"{user}:{hash_password(password)}"
    except ValueError as error:
        errors.print(f"[bold red]error[/]: {error}", highlight=False)
        raise typer.Exit(2) from None
    console.print(entry, highlight=False, markup=False, soft_wrap=True)
    # The hash holds `$` signs, which a shell sourcing .env would expand: single quotes.
    errors.print(f"add it to RAG_UI_USERS in .env, in single quotes: RAG_UI_USERS='{user}:…'")
