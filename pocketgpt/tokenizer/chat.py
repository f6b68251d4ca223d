"""The chat template: the one place that knows how a conversation becomes token ids.

Template "pocketgpt-chat-v1":

    <|endoftext|> <|system|> ...system text... <|end|> <|user|> ...question... <|end|>
                  <|assistant|> ...answer... <|end|> <|user|> ... <|end|> <|assistant|> ...

Each message is its role token, its content encoded as ORDINARY text (a "<|end|>" typed by a user stays
the characters "<|end|>", so no one can forge a turn), and `<|end|>`. The leading `<|endoftext|>` is the
document boundary the model saw before every document in pre-training.

Lives here: message validation, `render_conversation` -> (ids, loss mask) for fine-tuning,
`render_for_completion` -> ids that end with `<|assistant|>` for generation, and the stop ids.
Not here: special-token strings (special.py), JSONL formats and batching (data/sft.py), sampling
(generate/), and anything torch.
"""

from __future__ import annotations

from pocketgpt.errors import UserError
from pocketgpt.tokenizer.special import ASSISTANT, CHAT_TOKENS, END, EOT, SYSTEM, USER

TEMPLATE = "pocketgpt-chat-v1"
ROLES = ("system", "user", "assistant")
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
_KEYS = frozenset({"role", "content", "name"})


def validate_messages(messages, *, where: str = "", need_assistant: bool = False) -> list[dict]:
    """Check a list of {"role", "content"[, "name"]} dicts; returns fresh {"role", "content"} dicts.

    `where` (e.g. "data.jsonl line 7") prefixes every error message. `need_assistant`: at least one
    assistant turn is required (training data: something to learn).
    """
    at = f"{where}: " if where else ""
    if not isinstance(messages, (list, tuple)):
        raise UserError(f'{at}messages must be a list of {{"role", "content"}} objects, got {type(messages).__name__}')
    if not messages:
        raise UserError(f"{at}messages is an empty list; give at least one message")
    out = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict):
            raise UserError(f"{at}message {k} must be an object with role and content, got {type(m).__name__}")
        extra = sorted(set(m) - _KEYS)
        if extra:
            raise UserError(f"{at}message {k} has unknown keys {extra}; allowed: role, content, name")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise UserError(f"{at}message {k} has role {role!r}; roles are {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise UserError(f"{at}message {k} ({role}) content must be a string, got {type(content).__name__}")
        if "name" in m and not isinstance(m["name"], str):
            raise UserError(f"{at}message {k} ({role}) name must be a string, got {type(m['name']).__name__}")
        out.append({"role": role, "content": content})
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        raise UserError(f"{at}the conversation has no assistant message, so nothing to learn from")
    return out


def chat_problem(tokenizer, template: str | None) -> str | None:
    """Why a checkpoint cannot chat with this pocketgpt (None: it can). The one chat-readiness check: the CLI chat,
    the server and anything else that renders chats ask it. `template` is the checkpoint's recorded
    chat_template (None when it records none: such a checkpoint may still have been fine-tuned for chat)."""
    missing = [s for s in CHAT_TOKENS if s not in tokenizer.special_tokens]
    if missing:
        return f"this checkpoint was not fine-tuned for chat: its tokenizer lacks {', '.join(missing)}"
    if template is not None and template != TEMPLATE:
        return f"this checkpoint uses the chat template {template!r}, but this pocketgpt renders {TEMPLATE!r}"
    return None


def _chat_ids(tokenizer) -> dict[str, int]:
    """Special string -> id for EOT and the chat tokens; UserError if the tokenizer lacks any."""
    missing = [s for s in CHAT_TOKENS if s not in tokenizer.special_tokens]
    if missing:
        raise UserError(
            f"the tokenizer lacks the chat special tokens {missing}; "
            "use tokenizer.with_chat_specials() (and give the model embedding rows for them)"
        )
    return {s: tokenizer.special_tokens[s] for s in (EOT, *CHAT_TOKENS)}


def _render(messages, tokenizer) -> tuple[list[int], list[int]]:
    sp = _chat_ids(tokenizer)
    ids, mask = [sp[EOT]], [0]
    for m in messages:
        content = tokenizer.encode(m["content"])  # special strings stay ordinary text
        learn = 1 if m["role"] == "assistant" else 0
        ids += [sp[ROLE_TOKENS[m["role"]]], *content, sp[END]]
        mask += [0, *[learn] * len(content), learn]  # the answer and the <|end|> that closes it
    return ids, mask


def render_conversation(messages, tokenizer) -> tuple[list[int], list[int]]:
    """(ids, mask) of a whole conversation; mask[i] == 1 iff the model must learn to predict ids[i]:
    assistant content tokens and the <|end|> closing each assistant turn, nothing else."""
    return _render(validate_messages(messages), tokenizer)


def render_for_completion(messages, tokenizer) -> list[int]:
    """Ids of the conversation so far followed by <|assistant|>, for the model to continue with the answer."""
    ids, _ = _render(validate_messages(messages), tokenizer)
    return ids + [tokenizer.special_tokens[ASSISTANT]]


ROLE_STRINGS: tuple[str, ...] = (EOT, SYSTEM, USER, ASSISTANT, END)


def answer_stops(stop: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Stop strings for an answer: the caller's, and the special strings spelled out as ordinary text. A model can
    write "<|system|>" from the pieces "<", "|", "system", ... instead of the special id, which the stop ids
    would catch; the answer must end there too, and never show it."""
    return tuple(dict.fromkeys((*stop, *ROLE_STRINGS)))


def stop_token_ids(tokenizer) -> list[int]:
    """Ids that end an answer: <|end|> (the template's), <|endoftext|> (a base model's habit), and any role token
    (a model that starts a new turn has finished its own)."""
    sp = _chat_ids(tokenizer)
    return [sp[END], sp[EOT], sp[USER], sp[SYSTEM], sp[ASSISTANT]]
