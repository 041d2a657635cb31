"""Records of a run: metrics file, TensorBoard events, checkpoints, progress display."""
