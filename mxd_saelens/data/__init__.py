"""Data in: the model's hook points, datasets, token sequences, the paired store and the activation cache (writer, reader, format)."""
