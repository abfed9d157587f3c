"""SPADE (Cohen & Hoshen 2020) on faiss k-NN as a method plugin."""
