"""Chat-message rows for training (`--messages-field`): many SFT sets (OpenR1-Math-220k,
NuminaMath-CoT) hold a list of {"role", "content"} turns instead of problem/solution columns.
`exchange` reads such a list as the (problem, solution) pair `data_jsonl.encode_rows` tokenises,
so every check and drop of problem/solution rows applies to these rows too.

A row must be one exchange: an optional system turn, one user turn (the problem), one assistant
turn (the solution). Evaluation sends one question with no earlier turns, under the run's own
system prompt, and training must see the prompts evaluation sends:
- a multi-turn row is refused: its last answer without the earlier turns answers a question
  never asked, and with them it is a prompt evaluation never sends;
- a system turn is taken only when its text is the run's --system-prompt (the row then says what
  the run sends anyway); another text is refused, not silently replaced by the run's.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROLES = ("system", "user", "assistant")
# The turns a row may hold, in order.
EXCHANGES = (("user", "assistant"), ("system", "user", "assistant"))
_SHAPE = "a row is one exchange: [system,] user, assistant"


def exchange(messages: Any, *, at: str, field: str, system_prompt: str | None) -> tuple[str, str]:
    """(problem, solution): the content of the user and the assistant turn of a row's `messages`
    ([system,] user, assistant, each a mapping with a "role" and a string "content").

    ValueError starting with `at` (the file and line or row) for anything else: not a list, a turn
    without a role or content, another role, content that is not a string (a list of content
    parts, say), missing or extra turns, or a system turn whose text is not `system_prompt` (the
    run's system prompt; None: the template's default, so no row may hold one). `field` names the
    messages column in the errors ("messages[1]"). A one-dimensional array of messages is read as
    a list: rows from pandas (`pd.read_parquet(path).to_dict("records")`) hold numpy arrays."""
    if getattr(messages, "ndim", None) == 1 and hasattr(messages, "tolist"):
        messages = messages.tolist()
    if not isinstance(messages, (list, tuple)):
        hint = "; decode a JSON-encoded column to lists first" if isinstance(messages, str) else ""
        raise ValueError(f"{at}: field {field!r} is {type(messages).__name__}, not a list of messages "
                         f"{{'role', 'content'}}{hint}")
    roles = []
    for i, message in enumerate(messages):
        name = f"{field}[{i}]"
        if not isinstance(message, Mapping):
            raise ValueError(f"{at}: {name} is {type(message).__name__}, not a message {{'role', 'content'}}")
        for key in ("role", "content"):
            if key not in message:
                raise ValueError(f"{at}: {name} has no {key!r}; it has {', '.join(map(repr, message)) or 'nothing'}")
        if message["role"] not in ROLES:
            raise ValueError(f"{at}: {name} has the role {message['role']!r}; roles are {', '.join(ROLES)} "
                             f"({_SHAPE})")
        if not isinstance(message["content"], str):
            raise ValueError(f"{at}: {name} ({message['role']}) content is {type(message['content']).__name__}, "
                             "not a string")
        roles.append(message["role"])
    if tuple(roles) not in EXCHANGES:
        turns = ", ".join(roles) or "none"
        why = ("evaluation asks one question, with no earlier turns" if roles.count("user") > 1
               or roles.count("assistant") > 1 else "the user turn is the problem, the assistant turn the solution")
        raise ValueError(f"{at}: {field!r} holds the turns {turns}; {_SHAPE} ({why})")
    if roles[0] == "system":
        _check_system_turn(messages[0]["content"], at=at, field=field, system_prompt=system_prompt)
    return messages[-2]["content"], messages[-1]["content"]


def _check_system_turn(text: str, *, at: str, field: str, system_prompt: str | None) -> None:
    """ValueError unless a row's system turn says what the run sends (`system_prompt`, whitespace
    around either aside): the prompt is built from the run's, which evaluation sends too."""
    if system_prompt is not None and text.strip() == system_prompt.strip():
        return
    ours = ("the run sends none of its own (--template-system-prompt)" if system_prompt is None
            else f"the run's --system-prompt is {_shown(system_prompt)}")
    raise ValueError(f"{at}: {field}[0] is the system turn {_shown(text)}, and {ours}: prompts are built with the run's "
                     "system prompt, the one evaluation sends; pass this text as --system-prompt (and to "
                     "`superthoughts eval`), or remove the system turns from the data")


def _shown(text: str, limit: int = 80) -> str:
    """`text` quoted, its start alone with "..." past `limit` characters: a repr cut short lost its
    closing quote, and the default prompt's "\\boxed{}." read as "\\boxed{"."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}..."
