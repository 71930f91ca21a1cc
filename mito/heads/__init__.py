"""Heads trained from the embedding store: features, noise, training loop, save/load, predict."""
