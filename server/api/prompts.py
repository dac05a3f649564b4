"""Prompt checks in the API process, so a request that cannot be served is refused (400) before it
queues. Only the tokenizer is loaded here, without torch; the model stays in the workers. Templating and tokenising
run on a small thread pool, never on the event loop, so a huge prompt cannot stall /health or the
other streams; a prompt that is too long to fit by its length alone is refused without tokenising.
A Rust tokenizer encodes one text at a time (a second caller waits for the first), so each prompt
thread tokenises with a copy of its own: a huge prompt being checked delays no other request's check."""
from __future__ import annotations

import asyncio
import copy
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable, Optional

from rain_core.chat.prompt import check_fits, request_ids
from rain_core.config import GenerationRequest
from rain_core.models import ModelSource, load_text_tokenizer

from server.api.tokens import TokenTexts

PROMPT_THREADS = 2  # concurrent prompt checks; more wait their turn instead of taking every core


class Prompts:
    """The engine's own prompt layout and context check, so both processes agree."""

    def __init__(self, source: ModelSource, context_length: Callable[[], Optional[int]]):
        self.source = source
        self.tokenizer = None
        self.texts: Optional[TokenTexts] = None
        self.longest_token_chars = 1
        self._context_length = context_length  # the workers report it once loaded
        self._executor = ThreadPoolExecutor(PROMPT_THREADS, thread_name_prefix="prompt")
        self._tokenizers: queue.SimpleQueue = queue.SimpleQueue()  # one per prompt thread, never waited for

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
        tokenizer = load_text_tokenizer(self.source)
        # no token spells more characters than its vocabulary entry has, so text of C characters is at
        # least C / longest tokens: a lower bound that costs nothing to check
        self.longest_token_chars = max(map(len, tokenizer.get_vocab()), default=1)
        self.texts = TokenTexts(tokenizer)
        for _ in range(PROMPT_THREADS):
            self._tokenizers.put(copy.deepcopy(tokenizer))
        self.tokenizer = tokenizer

    async def off_loop(self, work: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)

    async def fit(self, request: GenerationRequest, limit: Optional[int], default: int,
                  prompt_field: str) -> GenerationRequest:
        """`request` with the token budget to run with; raises RequestError (naming `prompt_field` when the
        prompt alone is too long, else max_tokens) when it cannot fit."""
        chars = len(request.prompt_text) if request.prompt_text is not None else sum(
            len(m["content"]) for m in request.messages)
        at_least = chars // self.longest_token_chars
        if at_least:  # the length proves something: refuse without tokenising when it proves too much
            self._check(at_least, limit, prompt_field, f"the prompt's {chars} characters are at least")
        ids = await self.off_loop(self._ids, request)
        self._check(len(ids), limit, prompt_field, "the prompt has")
        budget = limit or min(default, self.context_length - len(ids))
        # the worker is fed these ids as they are: the conversation is templated and tokenised once
        return replace(request, prompt_ids=tuple(ids), params=replace(request.params, max_new_tokens=budget))

    def _ids(self, request: GenerationRequest) -> list[int]:
        tokenizer = self._tokenizers.get()
        try:
            return request_ids(tokenizer, request)
        finally:
            self._tokenizers.put(tokenizer)

    def _check(self, prompt_tokens: int, limit: Optional[int], prompt_field: str, counted: str) -> None:
        check_fits(self.context_length, prompt_tokens, limit or 1, "max_tokens" if limit else prompt_field, counted)
