"""The layers stay apart: the search imports no execution code, and the API modules no torch.

Each check runs in a fresh interpreter, so what this test session has imported does not count."""
from __future__ import annotations

import json
import subprocess
import sys

# torch itself is allowed in the search (the tree keeps its statistics in tensors); model code is not
EXECUTION = ("transformers", "vllm", "rain_core.backends", "rain_core.models", "rain_core.engine")
EVERY_MODULE_OF = "import importlib, pkgutil, {0}\nfor m in pkgutil.walk_packages({0}.__path__, '{0}.'): importlib.import_module(m.name)"


def imported_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_the_search_and_the_chat_handling_import_no_execution_code():
    modules = imported_after(EVERY_MODULE_OF.format("rain_core.search") + "\n" + EVERY_MODULE_OF.format("rain_core.chat"))
    assert "rain_core.search.rain" in modules and "rain_core.chat.prompt" in modules
    assert not {m for m in modules if m.startswith(EXECUTION)}


def test_the_api_process_loads_no_torch():
    """Its modules, and the tokenizer it checks prompts with."""
    modules = imported_after(EVERY_MODULE_OF.format("server.api") + "\nimport server.cli\n"
                             "from rain_core.chat.prompt import prompt_ids\n"
                             "from rain_core.models import load_text_tokenizer, resolve\n"
                             "prompt_ids(load_text_tokenizer(resolve(None)), [{'role': 'user', 'content': 'Hi'}])")
    assert "server.api.app" in modules and "torch" not in modules and "vllm" not in modules
