"""``serve``: a checkpoint over HTTP, OpenAI-compatible, with a chat page at ``/``."""

from __future__ import annotations

from lit_gpt_scratch.cli.commands import check_sampling
from lit_gpt_scratch.devices import usable_device
from lit_gpt_scratch.errors import UserError, check_at_least, check_in, one_line
from lit_gpt_scratch.train.checkpoint_files import checkpoint_tokenizer, load_gpt

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    ckpt_path: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    model_name: str | None = None,
    device: str = "auto",
    max_batch_size: int = 8,
    max_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 200,
    top_p: float | None = None,
    tokenizer: str | None = None,
) -> None:
    """Serve a checkpoint over HTTP: OpenAI-compatible /v1/completions and
    /v1/chat/completions (streamed with "stream": true), /v1/models, /health, and a chat page
    at /. Runs until Ctrl-C.

    Args:
        ckpt_path: A checkpoint written by fit or import_hf.
        host: Address to listen on. The default answers this machine only; another (0.0.0.0)
            lets the network in: set --api_key then.
        port: Port to listen on.
        api_key: When set, every request but the page and /health must send
            "Authorization: Bearer KEY" (the openai client's api_key), else 401.
        model_name: The model id requests name; by default the checkpoint path as given.
        device: cpu, cuda, cuda:N, or auto (cuda when available).
        max_batch_size: Most requests decoded together as one batch on the KV cache.
        max_tokens: Most tokens of an answer when a request does not set max_tokens (fewer
            when the context has less room).
        temperature: Softmax temperature when a request does not set one; 0 is greedy.
        top_k: Sample among the k most likely tokens, when a request does not set top_k
            (None: all).
        top_p: Sample among the most likely tokens holding this much probability, when a
            request does not set top_p (None: all).
        tokenizer: Tokenizer spec; by default the one recorded in the checkpoint.
    """
    check_in("--port", port, 1, 65536)
    check_at_least("--max_batch_size", max_batch_size, 1)
    check_at_least("--max_tokens", max_tokens, 1)
    check_sampling(1, temperature, top_k, top_p)  # the rest as generate checks them
    if api_key is not None and not api_key:
        raise UserError("--api_key is empty: give a key, or leave the option out")
    try:
        import uvicorn

        from lit_gpt_scratch.serve.app import build_app
    except ImportError as e:
        raise UserError(
            f"serve needs the serve extra ({one_line(e)}): pip install 'lit-gpt-scratch[serve]'"
        ) from None
    from lit_gpt_scratch.data.chat_template import ChatTemplate
    from lit_gpt_scratch.serve.batcher import Batcher
    from lit_gpt_scratch.serve.card import served_card
    from lit_gpt_scratch.serve.requests import Served

    loaded = load_gpt(ckpt_path, usable_device(device))
    tok = checkpoint_tokenizer(loaded, tokenizer)
    try:
        template = ChatTemplate(tok)
    except UserError:  # no chat tokens: /v1/chat/completions answers 400 naming messages
        template = None
    name = model_name or ckpt_path
    served = Served(name, tok, template, loaded.gpt.block_size, temperature, top_k, top_p,
                    max_tokens)  # fmt: skip
    card = served_card(ckpt_path, loaded, tok, chat=template is not None)
    app = build_app(served, Batcher(loaded.gpt, tok, max_batch_size), card, api_key)
    if host not in LOOPBACK and api_key is None:
        print(f"warning: --host {host} without --api_key: anyone who reaches it can use it")
    print(f"serving {name!r} on http://{_url_host(host)}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    except SystemExit:  # uvicorn exits when it cannot bind, after logging why
        raise UserError(
            f"--host {host} --port {port}: could not listen there (see above)"
        ) from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
