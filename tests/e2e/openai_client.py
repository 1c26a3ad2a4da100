# The official `openai` Python SDK against the gateway: run by tests/it/e2e.rs with keys in the environment.
"""Checks that OpenAI's own client sees the gateway the way it sees OpenAI.

Usage: openai_client.py --gateway http://127.0.0.1:PORT
Environment: E2E_PREMIUM_KEY (a key bound to the premium subscription),
             E2E_FREE_KEY (a key bound to the free subscription).
Exits non-zero with a message on the first failed check. Never prints a key.
"""

import argparse
import os
import sys

import openai

PROMPT = "Hello, how are you?"


def client(gateway: str, model: str, key: str) -> openai.OpenAI:
    # Model URLs are <gateway>/<model>; the SDK appends /chat/completions to base_url.
    return openai.OpenAI(
        api_key=key, base_url=f"{gateway}/{model}/v1", max_retries=0, timeout=20.0
    )


def chat(c: openai.OpenAI, model: str, **kwargs):
    return c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], **kwargs
    )


def expect_error(name: str, error_class: type, status: int, code: str, call) -> None:
    try:
        call()
    except error_class as error:
        if error.status_code != status:
            fail(f"{name}: status {error.status_code}, wanted {status}")
        if error.code != code:
            fail(f"{name}: error code {error.code!r}, wanted {code!r}")
        print(f"ok: {name} -> {type(error).__name__} ({status} {code})")
        return
    except openai.APIError as error:
        fail(f"{name}: raised {type(error).__name__}, wanted {error_class.__name__}")
    fail(f"{name}: no error raised, wanted {error_class.__name__}")


def fail(message: str) -> None:
    print(f"FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True, help="Envoy URL, e.g. http://127.0.0.1:8888")
    gateway = parser.parse_args().gateway.rstrip("/")
    premium = os.environ["E2E_PREMIUM_KEY"]
    free = os.environ["E2E_FREE_KEY"]
    # A well-formed key nobody minted.
    unknown = "sk-oai-AAAAAAAAAAAAAAAA_" + "B" * 43

    expect_error(
        "unknown key",
        openai.AuthenticationError,
        401,
        "invalid_api_key",
        lambda: chat(client(gateway, "simulator", unknown), "simulator"),
    )
    expect_error(
        "free key on a premium model",
        openai.PermissionDeniedError,
        403,
        "access_denied",
        lambda: chat(client(gateway, "qwen3", free), "qwen3"),
    )
    expect_error(
        "unknown model",
        openai.NotFoundError,
        404,
        "model_not_found",
        lambda: chat(client(gateway, "no-such-model", premium), "no-such-model"),
    )

    completion = chat(client(gateway, "simulator", premium), "simulator", max_tokens=7)
    text = completion.choices[0].message.content or ""
    usage = completion.usage
    if not text or usage is None:
        fail("chat completion without content or usage")
    if (usage.prompt_tokens, usage.completion_tokens) != (4, len(text.split())):
        fail(f"chat usage {usage} does not match the prompt and the {len(text.split())}-word reply")
    if usage.completion_tokens != 7 or completion.choices[0].finish_reason != "length":
        fail(f"max_tokens=7 not honoured: {usage}, {completion.choices[0].finish_reason}")
    print(f"ok: chat completion ({usage.total_tokens} tokens)")

    stream = chat(
        client(gateway, "qwen3", premium),
        "qwen3",
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, final_usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            final_usage = chunk.usage
    streamed = "".join(pieces)
    if final_usage is None or final_usage.completion_tokens != len(streamed.split()):
        fail(f"streamed usage {final_usage} does not match {len(streamed.split())} streamed words")
    print(f"ok: streaming chat completion ({final_usage.total_tokens} tokens)")

    # Without include_usage the gateway still meters the stream (it asks for usage itself) but
    # must hand back exactly what the client asked for: every chunk has a choice (code that reads
    # chunk.choices[0] keeps working) and none carries usage.
    naive = []
    for chunk in chat(client(gateway, "simulator", premium), "simulator", stream=True, max_tokens=5):
        naive.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            fail(f"usage reached a client that did not ask for it: {chunk.usage}")
    if len("".join(naive).split()) != 5:
        fail(f"stream without include_usage: {naive}")
    print("ok: streaming chat completion without include_usage (metered by the gateway)")

    legacy = client(gateway, "simulator", free).completions.create(
        model="simulator", prompt="one two three", max_tokens=2
    )
    if legacy.usage is None or legacy.usage.prompt_tokens != 3 or legacy.usage.completion_tokens != 2:
        fail(f"completions usage {legacy.usage}")
    print("ok: legacy completion with a free key")


if __name__ == "__main__":
    main()
