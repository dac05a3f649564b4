"""Prompt checks in the API process, so a conversation that cannot be served is refused (400)
before it queues. Only the tokenizer is loaded here; the model stays in the workers."""
from __future__ import annotations

import threading
from typing import Callable, Optional

from rain_core.engine import check_fits, prompt_ids
from rain_core.models import ModelSource, load_tokenizer

DEFAULT_MAX_TOKENS = 256  # when the client sets no limit (less if the context has less room)


class Prompts:
    """The engine's own prompt layout and context check, so both processes agree."""

    def __init__(self, source: ModelSource, context_length: Callable[[], Optional[int]]):
        self.source = source
        self.tokenizer = None
        self._context_length = context_length  # the workers report it once loaded

    @property
    def context_length(self) -> Optional[int]:
        return self._context_length()

    @property
    def ready(self) -> bool:
        return self.tokenizer is not None and self.context_length is not None

    def start(self) -> None:
        """Load the tokenizer in the background (seconds for a GGUF), while the workers load too."""
        threading.Thread(target=self._load, name="tokenizer", daemon=True).start()

    def _load(self) -> None:
        self.tokenizer = load_tokenizer(self.source)

    def max_new_tokens(self, messages: tuple[dict, ...], limit: Optional[int]) -> int:
        """The token budget to run with; raises RequestError when the request cannot fit."""
        prompt_tokens = len(prompt_ids(self.tokenizer, messages))
        budget = limit or max(1, min(DEFAULT_MAX_TOKENS, self.context_length - prompt_tokens))
        check_fits(self.context_length, prompt_tokens, budget)
        return budget
