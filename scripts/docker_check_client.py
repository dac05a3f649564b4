"""The host-side client of scripts/docker_check.sh: the OpenAI SDK against a rain-serve container.

  chat URL KEY          a chat completion in vanilla and in RAIN mode, streamed and not; one line each
  drain URL KEY MARKER  one streamed answer; touches MARKER at its first token (the script then runs
                        `docker stop`), and prints how the stream ended
Exits non-zero on the first check that fails.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import openai

MODEL = "smollm2"
MESSAGES = [{"role": "user", "content": "Name three colours."}]
VANILLA = {"rain": {"enabled": False}}
# Two iterations per committed set: enough to show the search ran, short on two CPU cores.
RAIN = {"rain": {"enabled": True, "max_iters": 2, "min_iters": 2}}
MAX_TOKENS = 4  # short: a RAIN answer takes minutes on two busy CPU cores


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str | None
    rain: dict


def non_streamed(client: openai.OpenAI, extra: dict) -> Answer:
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, extra_body=extra)
    (choice,) = out.choices
    return Answer(choice.message.content or "", choice.finish_reason, out.model_extra["rain"])


def streamed(client: openai.OpenAI, extra: dict, max_tokens: int = MAX_TOKENS, marker: Path | None = None) -> Answer:
    text, finish, summary = [], None, {}
    for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=max_tokens,
                                                stream=True, extra_body=extra):
        # The last chunk's `rain` is the summary, or holds it under "summary" beside its set's search.
        rain = chunk.model_extra.get("rain") or {}
        summary = rain.get("summary", rain) if "summary" in rain or "enabled" in rain else summary
        for choice in chunk.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
                if marker is not None and not marker.exists():
                    marker.touch()
            finish = choice.finish_reason or finish
    return Answer("".join(text), finish, summary)


def check(name: str, answer: Answer, rain_mode: bool) -> None:
    """A whole answer, and a search behind it exactly when RAIN was asked for."""
    searched = answer.rain.get("enabled") is True and answer.rain.get("iterations", 0) > 0
    ok = bool(answer.text) and answer.finish_reason in ("length", "stop") and searched == rain_mode
    print(f"{'ok  ' if ok else 'FAIL'} {name}: finish={answer.finish_reason} rain.enabled={answer.rain.get('enabled')} "
          f"iterations={answer.rain.get('iterations')} text={answer.text!r}", flush=True)
    if not ok:
        sys.exit(1)


def chat(url: str, key: str) -> None:
    client = openai.OpenAI(base_url=url, api_key=key, timeout=600)
    for mode, extra in (("vanilla", VANILLA), ("RAIN", RAIN)):
        check(f"SDK chat completion, {mode}, not streamed", non_streamed(client, extra), mode == "RAIN")
        check(f"SDK chat completion, {mode}, streamed", streamed(client, extra), mode == "RAIN")


def drain(url: str, key: str, marker: Path) -> None:
    # A long enough answer that `docker stop` lands while it streams (the marker says it has begun).
    client = openai.OpenAI(base_url=url, api_key=key, timeout=600, max_retries=0)
    check("stream in flight across docker stop", streamed(client, VANILLA, max_tokens=48, marker=marker), False)


def main(argv: list[str]) -> None:
    command, url, key, *rest = argv
    if command == "chat":
        chat(url, key)
    elif command == "drain":
        drain(url, key, Path(rest[0]))
    else:
        sys.exit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
