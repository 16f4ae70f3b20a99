"""`rag eval`: gold questions, retrieval and answer metrics, reports.

One module per job: ``dataset`` (the JSONL question format and its validation),
``configs`` (the search configurations compared, as ``SearchOptions``), ``metrics`` (pure
figures: recall@k, MRR, nDCG, refusals, answers), ``run`` (searching and asking, timed),
``report`` (the tables, JSON and Markdown).
"""
