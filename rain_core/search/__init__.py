"""The algorithm: typed model operations, the RAIN tree search, vanilla decoding and the baselines."""
