"""The layers stay apart: the search imports no execution code, and the API modules no torch.

Each check runs in a fresh interpreter, so what this test session has imported does not count."""
from __future__ import annotations

import json
import subprocess
import sys

# torch itself is allowed (the tree keeps its statistics in tensors); model code is not
EXECUTION = ("transformers", "vllm", "rain_core.runner", "rain_core.models", "rain_core.backends.vllm",
             "rain_core.backends.transformers", "rain_core.selfeval", "rain_core.branches")


def imported_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_the_search_imports_no_execution_code():
    modules = imported_after("import rain_core.search, rain_core.baselines, rain_core.vanilla, rain_core.ops, "
                             "rain_core.judge_prompt")
    assert not {m for m in modules if m.startswith(EXECUTION)}


def test_the_api_process_loads_no_torch():
    """Its modules, and the tokenizer it checks prompts with."""
    modules = imported_after("import server.app, server.cli\n"
                             "from rain_core.engine import prompt_ids\n"
                             "from rain_core.models import load_text_tokenizer, resolve\n"
                             "prompt_ids(load_text_tokenizer(resolve(None)), [{'role': 'user', 'content': 'Hi'}])")
    assert "torch" not in modules and "vllm" not in modules
