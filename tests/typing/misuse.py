"""Calls that are wrong, which `mypy --strict` must reject (tests/test_typing.py checks each line)."""

import numpy as np

import fastattn

q = np.zeros((2, 4, 8, 16), np.float32)
out: np.ndarray = fastattn.attention(q, q, q, return_lse=True)  # E1: with return_lse it is a tuple
fastattn.attention(q, q, q, casual=True)  # E2: a misspelt option
fastattn.attention(q, q, q, num_threads="2")  # E3: num_threads is an int
fastattn.set_num_threads(2.5)  # E4
