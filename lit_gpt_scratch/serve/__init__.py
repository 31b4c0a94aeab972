"""The HTTP server of ``python -m lit_gpt_scratch serve``: OpenAI-compatible completions and
chat completions (streamed as server-sent events), batched on the KV cache, and one static
chat page."""
