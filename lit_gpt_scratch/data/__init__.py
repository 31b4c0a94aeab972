"""Data: document sources, offline tokenization into token shards, and the training windows."""
