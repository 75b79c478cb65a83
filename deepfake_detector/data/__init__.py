"""Data stages: dataset sources, video reading and sampling, face cropping, cache, datasets."""
