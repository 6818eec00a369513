"""Every ```python block of README.md and docs/*.md runs, on the CPU, against tiny stand-ins.

The blocks are what a user copies first; nothing else would notice a renamed argument or a
result field that is gone. Each block is one test case, named `page:line` (the line of its
opening fence). The rules:

- Blocks of one page share one namespace and one working directory, and run in page order:
  a later block may use an earlier one's variables and files (README's decode block reads the
  `out/st` its train block wrote). A case runs its page's earlier blocks first when they have
  not run yet (`-k` on one block works), and fails naming the earlier block that failed.
- Each page starts in a fresh temporary directory holding `train.jsonl` (8 rows of the demo
  task), with the names and files PAGE_GIVENS lists for it: what the page's reader is
  assumed to have already (the checkpoint another page trained, the inputs of an op).
- SUBSTITUTIONS turn the placeholders a user would replace (model paths, "cuda", step counts)
  into the tiny stand-ins; each entry must still occur in some block, so the table cannot rot.
- Every top-level expression statement (`out.sequences, out.num_tokens, ...`) is evaluated; a
  trailing comment that shows a dict (`# {'version': ..., 'with_cuda': ...}`, continued on
  following indented comment lines) names keys that the value must have.
- SKIPS lists blocks that cannot run here, each with its reason; none today.
"""
from __future__ import annotations

import ast
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from superthoughts_ext.demo.task import make_split, write_jsonl
from superthoughts_ext.demo.tokenizer import build_tokenizer
from superthoughts_ext.modeling import SuperThoughtsForCausalLM

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Placeholder in the docs -> its stand-in here ({base}: the tiny base checkpoint's directory).
SUBSTITUTIONS: dict[str, str] = {
    '"/models/base"': '"{base}"',
    '"cuda"': '"cpu"',
    "max_steps=1000": "max_steps=2",
    "max_new_tokens=2048": "max_new_tokens=8",
}

# Blocks that cannot run on this CPU machine: "page:line" -> why. Keep it empty where possible.
SKIPS: dict[str, str] = {}

# The tiny base names no pad, like Qwen2.5-Math: from_base's warning is the one the blocks' comment describes.
pytestmark = pytest.mark.filterwarnings("ignore:SuperThoughts. the backbone config has no pad_token_id:UserWarning")

# A dict shown in a comment: its keys.
DOCUMENTED_KEY = re.compile(r"'(\w+)':")


@dataclass(frozen=True)
class Block:
    """One ```python block: its page (relative to the root), fence line and source."""

    page: str
    line: int
    source: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def python_blocks(page: Path) -> list[Block]:
    """The page's ```python blocks in order (other languages' blocks: test_docs_cli.py)."""
    blocks, code, start = [], None, 0
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if code is None and line.strip() == "```python":
            code, start = [], number
        elif code is not None and line.startswith("```"):
            blocks.append(Block(str(page.relative_to(ROOT)), start, "\n".join(code) + "\n"))
            code = None
        elif code is not None:
            code.append(line)
    return blocks


BLOCKS = [block for page in PAGES for block in python_blocks(page)]


@dataclass(frozen=True)
class StandIns:
    """Tiny random Qwen2 base (`base`, with the demo tokenizer) and a SuperThoughts checkpoint
    built from it (`checkpoint`, untrained, with the tokenizer)."""

    base: Path
    checkpoint: Path


def step_inputs(stand_ins: StandIns, cwd: Path) -> dict[str, Any]:
    """The arguments docs/step-op.md names: B = 2 rows, V = 16 tokens, H = 8."""
    generator = torch.Generator().manual_seed(0)
    return dict(logits=torch.randn(2, 2, 16, generator=generator), embed=torch.randn(16, 8, generator=generator),
                merge_weight=torch.randn(8, 16, generator=generator), merge_bias=torch.randn(8, generator=generator),
                finished=torch.zeros(2, dtype=torch.bool), pad_id=0, eos_id=1, threshold=0.9)


def trained_checkpoint(stand_ins: StandIns, cwd: Path) -> dict[str, Any]:
    """docs/generation.md decodes with the `out/st` that docs/training.md trains (here: untrained)."""
    shutil.copytree(stand_ins.checkpoint, cwd / "out" / "st")
    return {}


# Page -> what its reader has before its first block: names in the namespace, files in the cwd.
PAGE_GIVENS: dict[str, Callable[[StandIns, Path], dict[str, Any]]] = {
    "docs/step-op.md": step_inputs,
    "docs/generation.md": trained_checkpoint,
}


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory) -> StandIns:
    root = tmp_path_factory.mktemp("docs_python")
    tokenizer = build_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    SuperThoughtsForCausalLM.from_base(root / "base", pad_token_id=tokenizer.pad_token_id).save_pretrained(
        root / "checkpoint")
    tokenizer.save_pretrained(root / "checkpoint")
    return StandIns(root / "base", root / "checkpoint")


@dataclass
class PageRun:
    """One page's namespace and working directory, and how far its blocks have run."""

    cwd: Path
    namespace: dict[str, Any] = field(repr=False)
    done: int = 0
    failed: str | None = None


@pytest.fixture(scope="module")
def page_runs(one_cpu_thread) -> dict[str, PageRun]:
    """Filled lazily: the first case of a page makes its PageRun."""
    return {}


def substituted(source: str, stand_ins: StandIns) -> str:
    for placeholder, stand_in in SUBSTITUTIONS.items():
        source = source.replace(placeholder, stand_in.format(base=stand_ins.base))
    return source


def documented_keys(lines: list[str], statement: ast.stmt) -> set[str]:
    """Keys of a dict shown in the statement's trailing comment and its indented comment lines."""
    comments = [lines[statement.end_lineno - 1][statement.end_col_offset:]]
    for line in lines[statement.end_lineno:]:
        if not (line[:1].isspace() and line.lstrip().startswith("#")):
            break
        comments.append(line)
    return set(DOCUMENTED_KEY.findall("\n".join(comments)))


def run_block(block: Block, source: str, namespace: dict[str, Any]) -> None:
    """Runs `source` statement by statement, checking what expression statements' comments show."""
    lines = source.splitlines()
    for statement in ast.parse(source, filename=block.where).body:
        if isinstance(statement, ast.Expr):
            value = eval(compile(ast.Expression(statement.value), block.where, "eval"), namespace)
            keys = documented_keys(lines, statement)
            missing = keys - set(value) if keys else set()
            assert not missing, f"{block.where}: the comment on line {statement.lineno} shows keys {sorted(missing)} " \
                                f"that the value lacks ({sorted(value)})"
        else:
            exec(compile(ast.Module([statement], type_ignores=[]), block.where, "exec"), namespace)


def page_run(block: Block, runs: dict[str, PageRun], stand_ins: StandIns, tmp_path_factory) -> PageRun:
    if block.page not in runs:
        cwd = tmp_path_factory.mktemp(re.sub(r"\W", "_", block.page))
        write_jsonl(make_split("train", 8), cwd / "train.jsonl")
        givens = PAGE_GIVENS.get(block.page, lambda *_: {})(stand_ins, cwd)
        runs[block.page] = PageRun(cwd, {"__name__": "__docs__", **givens})
    return runs[block.page]


def test_the_docs_have_python_blocks_and_the_tables_are_current():
    assert len(BLOCKS) >= 7, [block.where for block in BLOCKS]
    assert {block.page for block in BLOCKS} >= {"README.md", "docs/training.md", "docs/generation.md"}
    sources = "".join(block.source for block in BLOCKS)
    assert not [p for p in SUBSTITUTIONS if p not in sources], "SUBSTITUTIONS has placeholders no block has"
    assert not set(SKIPS) - {block.where for block in BLOCKS}, "SKIPS names blocks that are gone"
    assert not set(PAGE_GIVENS) - {block.page for block in BLOCKS}, "PAGE_GIVENS names pages without blocks"


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.where)
def test_python_block_runs(block, page_runs, stand_ins, tmp_path_factory, monkeypatch):
    if block.where in SKIPS:
        pytest.skip(SKIPS[block.where])
    run = page_run(block, page_runs, stand_ins, tmp_path_factory)
    page_blocks = [b for b in BLOCKS if b.page == block.page]
    monkeypatch.chdir(run.cwd)
    for earlier in page_blocks[run.done:page_blocks.index(block) + 1]:
        if run.failed:
            pytest.fail(f"{run.failed} failed earlier; {block.where} runs after it in the same namespace")
        run.failed = earlier.where  # until it has run through
        if earlier.where not in SKIPS:
            run_block(earlier, substituted(earlier.source, stand_ins), run.namespace)
        run.failed, run.done = None, run.done + 1
