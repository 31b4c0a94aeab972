"""Data: document sources, offline tokenization into token shards, and (later) loading."""
