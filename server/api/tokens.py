"""Token ids as clients see them in `logprobs`: each token's text and its exact bytes."""
from __future__ import annotations

from functools import lru_cache

from rain_core.events import TokenLogprob


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-to-character table, reversed: byte-level BPE vocabularies (SmolLM2, Qwen, Llama 3)
    spell every byte as one of these characters, so a token's exact bytes can be read off its piece."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


BYTE_LEVEL = _byte_level_decoder()


class TokenTexts:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.token_bytes = lru_cache(maxsize=65536)(self._bytes)

    def _bytes(self, token_id: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if piece and all(c in BYTE_LEVEL for c in piece):
            return bytes(BYTE_LEVEL[c] for c in piece)
        return self.tokenizer.decode([token_id]).encode()  # other vocabularies: the decoded text

    def text(self, token_id: int) -> str:
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def chat_entry(self, token_id: int, logprob: float) -> dict:
        raw = self.token_bytes(token_id)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    def chat_content(self, logprobs: list[TokenLogprob]) -> list[dict]:
        """`choices[].logprobs.content` of chat completions."""
        return [{**self.chat_entry(t.token_id, t.logprob),
                 "top_logprobs": [self.chat_entry(top.token_id, top.logprob) for top in t.top]}
                for t in logprobs]

    def completion_logprobs(self, logprobs: list[TokenLogprob], offset: int) -> dict:
        """`choices[].logprobs` of text completions; `offset` is the text length before these tokens."""
        tokens, offsets = [], []
        for t in logprobs:
            offsets.append(offset)
            tokens.append(self.text(t.token_id))
            offset += len(tokens[-1])
        return {"tokens": tokens, "token_logprobs": [t.logprob for t in logprobs],
                "top_logprobs": [{self.text(top.token_id): top.logprob for top in t.top} for t in logprobs],
                "text_offset": offsets}
