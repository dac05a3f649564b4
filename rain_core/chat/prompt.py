"""What the model is fed before the answer, and the one context check: the API process runs them before a
request queues (with a tokenizer that needs no torch), the engine again before it runs one."""
from __future__ import annotations

from typing import Optional

from rain_core.chat.template import LONE_SURROGATE, TemplateError, chat_ids
from rain_core.config import GenerationRequest


class RequestError(ValueError):
    """The request cannot be served as asked (too long for the context, bad messages, ...)."""

    def __init__(self, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.param = param


def prompt_ids(tokenizer, messages) -> list[int]:
    """The conversation laid out by the model's chat template, ready for the answer; special-token
    strings inside the messages stay text (the one function for prompt ids: the API process counts
    the prompt with it too)."""
    if not messages:
        raise RequestError("messages must hold at least one message", "messages")
    try:
        return chat_ids(tokenizer, messages)
    except TemplateError as exc:
        raise RequestError(str(exc), "messages") from exc


def text_prompt_ids(tokenizer, text: str) -> list[int]:
    """A text completion's prompt: the text as the model continues it (with the tokenizer's own BOS,
    if it has one); control-token strings in it are text, never control tokens."""
    ids = tokenizer(text, split_special_tokens=True).input_ids
    if not ids:
        raise RequestError("prompt must not be empty", "prompt")
    return ids


def request_ids(tokenizer, request: GenerationRequest) -> list[int]:
    """What the model is fed before the answer: the chat-templated messages, or a completion's text."""
    if request.prompt_text is not None:
        _refuse_non_text(request.prompt_text, "prompt")
        return text_prompt_ids(tokenizer, request.prompt_text)
    for i, message in enumerate(request.messages):
        _refuse_non_text(message["content"], f"messages[{i}].content")
    return prompt_ids(tokenizer, request.messages)


def _refuse_non_text(text: str, param: str) -> None:
    """The server refuses these before a request is built; a library caller (rain-generate's argv) may not."""
    if LONE_SURROGATE.search(text):
        raise RequestError(f"{param} holds a lone UTF-16 surrogate, which is not text", param)


def check_fits(context_length: int, prompt_tokens: int, max_new_tokens: int, param: str = "max_tokens",
               counted: str = "the prompt has") -> None:
    """The one context check (the API process runs it before a request queues, the engine again)."""
    if prompt_tokens + max_new_tokens > context_length:
        raise RequestError(f"this model's context is {context_length} tokens; {counted} {prompt_tokens} tokens and "
                           f"the answer asks for {max_new_tokens} more", param)
