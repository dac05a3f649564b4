"""Torch-free chat handling: the chat template, the answer's committed ids as text."""
