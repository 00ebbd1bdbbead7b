"""Image side, before the model: discovery, safe decoding, preprocessing, batching, datasets."""
