"""Conversations: the chat template, the sources of conversations, the offline stdlib set."""
