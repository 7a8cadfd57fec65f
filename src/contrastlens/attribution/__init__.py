"""The attribution engine: one forward and one modified backward pass per explanation."""
