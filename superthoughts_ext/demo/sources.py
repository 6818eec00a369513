"""Which package files decide what the demo's training produces (`training_sources`), whose
text the demo's model cache key hashes (`superthoughts_ext.demo.run.training_code_hash`)."""
from __future__ import annotations

import ast
from pathlib import Path

# Where the walk of training's imports starts (training_sources): the training entry point and
# the demo's data. build_base and train_model are hashed from demo/run.py's text (training_code_hash).
TRAINING_ENTRY_POINTS = ("train.py", "demo/task.py", "demo/tokenizer.py")
# Where it stops: the model's generate() method imports the decoding stack, which trains nothing
# (hashing it would retrain the demo's models after every decoding change).
DECODING_ENTRY_POINT = "generate.py"


def training_sources() -> list[str]:
    """The package files whose code decides what training produces: the entry points and every
    package module they import, directly or not (read from their import statements, lazy ones
    too). Found, not listed: a hand-kept list missed the modules split off train.py later, and
    the cache then reused models that other code had trained."""
    package = Path(__file__).resolve().parents[1]
    found: set[str] = set()
    todo = list(TRAINING_ENTRY_POINTS)
    while todo:
        name = todo.pop()
        if name in found or name == DECODING_ENTRY_POINT:
            continue
        found.add(name)
        for node in ast.walk(ast.parse((package / name).read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("superthoughts_ext"):
                # "from superthoughts_ext.x import y" and "from superthoughts_ext import x" (x a module)
                base = node.module.split(".")[1:]
                candidates = [base] + [base + [alias.name] for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name.split(".")[1:] for alias in node.names
                              if alias.name.startswith("superthoughts_ext.")]
            else:
                continue
            for parts in candidates:
                if parts and (package / Path(*parts)).with_suffix(".py").is_file():
                    todo.append("/".join(parts) + ".py")
    return sorted(found)
