"""Data preparation: scan the raw dataset, check frames, split, class weights, the frame cache; synthetic data."""
