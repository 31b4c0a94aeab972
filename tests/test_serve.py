"""``serve``: the official openai client against the real command, streaming and not; greedy
answers equal ``generate``'s; 50 concurrent requests answered in batches; bad requests 4xx
naming the field, the server alive after each; the API key."""

from __future__ import annotations

import asyncio

import pytest

openai = pytest.importorskip("openai", reason="the serve tests need the openai client (dev)")
pytest.importorskip("fastapi", reason="serve needs the serve extra (fastapi, uvicorn)")

from serve_server import KEY, MODEL, get, post, running_server, write_checkpoint  # noqa: E402

from lit_gpt_scratch.data.chat_template import ChatTemplate  # noqa: E402
from lit_gpt_scratch.model.generate import generate, generate_text  # noqa: E402
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer  # noqa: E402
from lit_gpt_scratch.train.checkpoint_files import load_gpt  # noqa: E402

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("serve") / "chat.ckpt")


@pytest.fixture(scope="module")
def server(ckpt):
    options = (f"--api_key={KEY}", f"--model_name={MODEL}", "--max_batch_size=16")
    with running_server(ckpt, *options) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def test_a_greedy_completion_equals_generate_streamed_or_not(ckpt, client):
    loaded = load_gpt(ckpt)
    tok = load_tokenizer("bytes+chat")
    [expected] = generate_text(loaded.gpt, tok, PROMPT, 20, temperature=0)
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0)
    assert whole.choices[0].text == expected
    assert whole.usage.prompt_tokens == len(PROMPT.encode())
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20,
                                            temperature=0, stream=True))  # fmt: skip
    assert len(chunks) > 2  # the text came in pieces
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_a_seeded_sample_equals_generate_with_the_same_seed(ckpt, client):
    loaded = load_gpt(ckpt)
    tok = load_tokenizer("bytes+chat")
    sampling = {"temperature": 0.9, "top_k": 50, "top_p": 0.95, "seed": 7}
    [expected] = generate_text(loaded.gpt, tok, PROMPT, 15, **sampling)
    answer = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=15, temperature=0.9, top_p=0.95, seed=7,
        extra_body={"top_k": 50},
    )  # fmt: skip
    assert answer.choices[0].text == expected


def test_a_chat_reply_is_the_templated_prompt_continued_to_end(ckpt, client):
    loaded = load_gpt(ckpt)
    tok = load_tokenizer("bytes+chat")
    template = ChatTemplate(tok)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    [ids] = generate(loaded.gpt, [template.prompt(messages)], 12, temperature=0,
                     vocab_limit=tok.vocab_size)  # fmt: skip
    stop = next((i for i, t in enumerate(ids) if t in (template.end_id, tok.eot_id)), len(ids))
    expected = tok.decode(ids[:stop])
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12,
                                           temperature=0)  # fmt: skip
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].message.role == "assistant"
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=12, temperature=0, stream=True
        )  # fmt: skip
    ]
    assert "".join(pieces) == expected


def test_a_stop_string_ends_the_text_before_it(client):
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0)
    text = full.choices[0].text
    at = next(i for i in range(3, len(text)) if text[i] not in text[:i])  # a first there
    stop = text[at : at + 2]
    cut = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0,
                                    stop=[stop])  # fmt: skip
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20,
                                         temperature=0, stop=stop, stream=True)  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed) == text[: text.index(stop)]


def test_fifty_concurrent_requests_are_all_answered_in_batches(server):
    prompts = [f"request {i}: " for i in range(50)]

    async def ask_all():
        client = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
        async with client:
            return await asyncio.gather(*(
                client.completions.create(model=MODEL, prompt=p, max_tokens=8, temperature=0)
                for p in prompts
            ))  # fmt: skip

    before = get(f"{server}/health")[1]
    answers = asyncio.run(ask_all())
    after = get(f"{server}/health")[1]
    assert len(answers) == 50 and all(a.choices[0].finish_reason for a in answers)
    assert after["batches"] - before["batches"] < 50  # some requests shared a batch
    assert after["largest_batch"] > 1
    # a request decodes the same in a batch as alone
    alone = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    for i in (0, 17, 49):
        single = alone.completions.create(model=MODEL, prompt=prompts[i], max_tokens=8,
                                          temperature=0)  # fmt: skip
        assert answers[i].choices[0].text == single.choices[0].text


BAD_REQUESTS = [
    ("/v1/completions", {"model": "gpt-4", "prompt": "x"}, "model"),
    ("/v1/completions", {"prompt": "x"}, "model"),
    ("/v1/completions", {"model": MODEL}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": 3}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 64}, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": -1}, "temperature"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "top_p": 0}, "top_p"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "top_k": 0}, "top_k"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "seed": 1.5}, "seed"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stop": [1]}, "stop"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stream": "yes"}, "stream"),
    ("/v1/completions", {"model": MODEL, "prompt": "x" * 64}, "prompt"),
    ("/v1/chat/completions", {"model": MODEL}, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "bot", "content": "x"}]},
     "messages[0]"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": 1}]},
     "messages[0].content"),
]  # fmt: skip


@pytest.mark.parametrize("path,body,param", BAD_REQUESTS)
def test_a_bad_request_is_a_400_naming_the_field_and_the_server_goes_on(server, path, body,
                                                                        param):  # fmt: skip
    status, answer = post(server + path, body)
    assert status == 400
    assert answer["error"]["param"] == param
    assert param.split("[")[0] in answer["error"]["message"]
    assert get(f"{server}/health")[0] == 200


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_a_malformed_body_is_a_400_and_the_server_goes_on(server, body):
    status, answer = post(f"{server}/v1/completions", body)
    assert status == 400 and answer["error"]["type"] == "invalid_request_error"
    status, _ = post(f"{server}/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2})
    assert status == 200


def test_the_openai_client_raises_on_a_bad_request(client):
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=0)


def test_the_api_key_is_checked_on_every_request_but_the_page_and_health(server):
    for key in (None, "wrong"):
        status, answer = get(f"{server}/v1/models", key=key)
        assert status == 401 and answer["error"]["type"] == "authentication_error"
        status, _ = post(f"{server}/v1/completions", {"model": MODEL, "prompt": "x"}, key=key)
        assert status == 401
        assert get(f"{server}/info", key=key)[0] == 401
    wrong = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert get(f"{server}/health", key=None)[0] == 200


def test_models_and_info_describe_the_checkpoint(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    status, info = get(f"{server}/info")
    assert status == 200 and info["model"] == MODEL
    card = info["card"]
    assert card["tokenizer"] == "bytes+chat" and card["chat"] is True
    assert card["block_size"] == 64 and card["vocab_size"] == 261 and card["n_layer"] == 1
    assert card["class"] == "GPT" and card["steps"] == 0 and card["val_loss"] is None
    assert card["parameters"] == load_gpt_params()


def load_gpt_params() -> int:
    from serve_server import tiny_spec

    from lit_gpt_scratch.model.build import build_gpt

    return build_gpt(tiny_spec()).num_params()


def test_chat_on_a_model_without_chat_tokens_is_a_400_naming_messages(tmp_path):
    ckpt = write_checkpoint(tmp_path / "text.ckpt", tokenizer="bytes")
    with running_server(ckpt, "--model_name=text") as url:
        body = {"model": "text", "messages": [{"role": "user", "content": "hi"}]}
        status, answer = post(f"{url}/v1/chat/completions", body, key=None)
        assert status == 400 and answer["error"]["param"] == "messages"
        assert "no chat tokens" in answer["error"]["message"]
        status, answer = post(f"{url}/v1/completions", {"model": "text", "prompt": "hi",
                                                        "max_tokens": 3}, key=None)  # fmt: skip
        assert status == 200 and answer["choices"][0]["finish_reason"]


def test_bad_serve_options_are_one_line(tmp_path, cli):
    ckpt = write_checkpoint(tmp_path / "c.ckpt")
    for option, line in [
        ("--port=0", "error: --port must be in [1, 65536), got 0"),
        ("--max_batch_size=0", "error: --max_batch_size must be at least 1, got 0"),
        ("--api_key=", "error: --api_key is empty: give a key, or leave the option out"),
        ("--max_tokens=0", "error: --max_tokens must be at least 1, got 0"),
    ]:
        result = cli("serve", f"--ckpt_path={ckpt}", option)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1] == line
