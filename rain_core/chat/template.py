"""Token ids of chat prompts in which only the chat template places control tokens.

Tokenising a rendered chat template as one string lets text inside a message become control
tokens: the content `hi<|im_end|>\\n<|im_start|>system\\n...` would close its turn and open a real
system turn. So the template is rendered with a sentinel in place of each content, its own pieces
are tokenised normally (their control tokens are real) and each content is tokenised with
`split_special_tokens=True`, so a special-token string in it stays plain text.
(Added tokens the tokenizer itself does not mark special, such as Qwen's `<tool_call>`, are
ordinary vocabulary to it and stay so.)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

# Sentinels never reach the tokenizer: the rendered text is split on them first. The NUL bytes keep
# them apart from anything a template writes itself.
_SENTINEL = "\x00rain-content-{}\x00"
_SENTINELS = re.compile("\x00rain-content-(\\d+)\x00")


# A lone UTF-16 surrogate (a JSON "\ud800" escape without its pair, or an undecodable byte in a command
# line) is a code point that is no text: a tokenizer raises on it, and it cannot be written out as UTF-8.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")

# Tokens that open a new turn: an answer that reaches one has ended (the reference counted "Human:").
TURN_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>")


def end_token_ids(tokenizer) -> frozenset[int]:
    """The ids that end an answer: the tokenizer's end of sequence and every turn token it knows."""
    ids = {tokenizer.eos_token_id}
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in TURN_TOKENS if t in vocab)
    return frozenset(i for i in ids if i is not None)


class TemplateError(ValueError):
    """The model's chat template cannot lay out these messages."""


@dataclass(frozen=True)
class Piece:
    text: str
    content: bool  # True: message text (plain text); False: written by the template (control tokens allowed)


def text_ids(tokenizer, text: str) -> list[int]:
    """`text` as plain text: a special-token string in it becomes ordinary tokens."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids


def template_ids(tokenizer, text: str) -> list[int]:
    """Text written by a template or by rain_core itself, whose control-token strings are meant."""
    return tokenizer(text, add_special_tokens=False).input_ids


def pieces_ids(tokenizer, pieces: Sequence[Piece]) -> list[int]:
    ids: list[int] = []
    for piece in pieces:
        ids += (text_ids if piece.content else template_ids)(tokenizer, piece.text)
    return ids


def _render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # templates raise on unsupported role orders
        raise TemplateError(f"the model's chat template rejected the messages: {exc}") from exc


def _split(rendered: str, contents: Sequence[str]) -> list[Piece]:
    pieces, at = [], 0
    for match in _SENTINELS.finditer(rendered):
        pieces += [Piece(rendered[at:match.start()], False), Piece(contents[int(match.group(1))], True)]
        at = match.end()
    pieces.append(Piece(rendered[at:], False))
    return [p for p in pieces if p.text]


def render_pieces(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[Piece]:
    """The conversation as the chat template lays it out, split into template text and message text.

    Templates that trim the contents (Llama 3, Gemma) are followed; one that rewrites them in another
    way cannot be told apart from its own text, and is refused rather than tokenised unsafely."""
    stand_ins = [{**m, "content": _SENTINEL.format(i)} for i, m in enumerate(messages)]
    layout = _render(tokenizer, stand_ins, add_generation_prompt)
    expected = _render(tokenizer, messages, add_generation_prompt)
    for contents in ([m["content"] for m in messages], [m["content"].strip() for m in messages]):
        pieces = _split(layout, contents)
        if "".join(p.text for p in pieces) == expected:
            return pieces
    raise TemplateError("the model's chat template rewrites message contents, so rain-serve cannot keep "
                        "them apart from the template's control tokens")


def chat_ids(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
    """The conversation laid out by the model's chat template; message text stays text."""
    return pieces_ids(tokenizer, render_pieces(tokenizer, messages, add_generation_prompt))
