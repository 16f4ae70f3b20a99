"""Ingestion: discover -> load -> split -> write, as async stages joined by bounded queues."""
