"""`pocketgpt chat CHECKPOINT`: talk to a model fine-tuned for chat (`pocketgpt finetune --task chat`) in a terminal.

Lives here: the chat flags, the loop (read a line, run a /command or answer it), the history and how it is cut
to fit the context (the oldest user/assistant turns go first, the system message never), streaming the answer
and Ctrl-C. On a terminal it shows "you> " / "bot> "; on a pipe it prints only the answers, one per input line.
Not here: the chat template (tokenizer/chat.py), generation and stop handling (generate/text.py).
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from typing import Optional

from pocketgpt.cli.fields import (
    add_bos_flag,
    add_dataclass_flags,
    add_kernel_flags,
    add_quantize_flag,
    dataclass_from,
    resolve_bos,
)
from pocketgpt.cli.report import print_kernels
from pocketgpt.config import RuntimeConfig, SampleConfig
from pocketgpt.errors import UserError
from pocketgpt.tokenizer.chat import answer_stops, chat_problem, render_for_completion, stop_token_ids

SKIP = {
    "stop",
    "num_beams",
    "num_samples",
    "logprobs",
    "top_logprobs",  # one streamed answer per turn,
    "length_penalty",
    "early_stopping",
}  # never a beam search
PROMPT, BOT = "you> ", "bot> "
HELP = """commands:
  /reset         forget the conversation (the system message stays)
  /system TEXT   set the system message (no TEXT: remove it)
  /help          show this list
  /quit, /exit   leave (so does Ctrl-D; Ctrl-C stops an answer, or leaves at the prompt)"""


def add_chat_arguments(parser) -> None:
    """The flags of `pocketgpt chat` on a jsonargparse (or argparse) parser."""
    parser.add_argument("checkpoint", help="checkpoint or run folder of a model fine-tuned for chat")
    parser.add_argument(
        "-p",
        "--prompt",
        type=Optional[str],
        default=None,
        help="one message: print the answer and exit (default: an interactive chat)",
    )
    parser.add_argument("--system", type=Optional[str], default=None, help="system message that opens the conversation")
    add_dataclass_flags(parser, SampleConfig, dashes=True, skip=SKIP)
    add_dataclass_flags(parser, RuntimeConfig)
    add_kernel_flags(parser)
    add_bos_flag(parser)
    add_quantize_flag(parser)


def _note(msg: str) -> None:
    """Notes go to stderr so that stdout holds only the answers."""
    print(msg, file=sys.stderr, flush=True)


class ChatSession:
    """The conversation so far, and how one user message becomes a streamed answer."""

    def __init__(self, generator, sample: SampleConfig, system: str | None = None, bos: bool = True):
        self.generator, self.system, self.bos = generator, system, bos  # bos: the template's leading <|endoftext|>
        self.sample = dataclasses.replace(sample, stop=answer_stops(sample.stop))  # role strings end an answer
        self.tokenizer = generator.tokenizer
        self.history: list[dict] = []  # user / assistant turns, oldest first
        self.stop_ids = stop_token_ids(self.tokenizer)
        block = generator.engine.cfg.block_size
        self.block_size = block
        self.budget = max(1, block - max(16, block // 4))  # prompt tokens; the rest is room for the answer

    def messages(self, user: str) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return head + self.history + [{"role": "user", "content": user}]

    def reset(self) -> None:
        self.history = []

    def prompt_ids(self, user: str) -> list[int]:
        """The rendered prompt for `user`, after dropping the oldest turns until it fits the budget."""
        dropped = 0
        while True:
            ids = render_for_completion(self.messages(user), self.tokenizer)
            ids = ids if self.bos else ids[1:]
            if len(ids) <= self.budget or not self.history:
                break
            del self.history[0]  # the oldest user message ...
            if self.history and self.history[0]["role"] == "assistant":
                del self.history[0]  # ... and its answer
            dropped += 1
        if dropped:
            _note(
                f"(dropped the oldest {dropped} turn{'s' if dropped > 1 else ''} to fit the "
                f"{self.block_size}-token context)"
            )
        if len(ids) > self.budget:
            _note(
                f"(this message takes {len(ids)} tokens with the system message, more than the {self.budget} "
                f"the {self.block_size}-token context leaves for it: the model sees only its end)"
            )
        return ids

    def say(self, user: str, out) -> str:
        """Stream the answer to `user` into `out`; Ctrl-C stops it early. Returns the answer kept in history."""
        ids = self.prompt_ids(user)
        pieces: list[str] = []
        stream = self.generator.stream_ids(ids, self.sample, self.stop_ids)
        try:
            for piece in stream:
                pieces.append(piece)
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            pass  # keep what was said so far
        finally:
            stream.close()
            out.write("\n")
            out.flush()
        answer = "".join(pieces)
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return answer


def _check_chat_ready(path) -> None:
    """UserError unless the checkpoint speaks our template; read before the weights are loaded."""
    from pocketgpt.checkpoint import read_meta, resolve
    from pocketgpt.tokenizer import Tokenizer

    meta = read_meta(path)
    template = meta.get("chat_template")
    problem = chat_problem(Tokenizer.load(resolve(path)), template)
    if problem:
        hint = "; fine-tune it first with `pocketgpt finetune --task chat`" if "lacks" in problem else ""
        raise UserError(problem + hint)
    if template is None:
        warnings.warn(
            "this checkpoint's config names no chat_template: unless it was fine-tuned with "
            "`pocketgpt finetune --task chat`, its answers will be noise",
            stacklevel=2,
        )


def _read_line(tty: bool) -> str | None:
    """The next line of input without its newline; None at end of input."""
    if tty:
        try:
            return input(PROMPT)
        except EOFError:
            print()
            return None
    line = sys.stdin.readline()
    return None if line == "" else line.rstrip("\r\n")


def _command(session: ChatSession, line: str, tty: bool) -> bool:
    """Run a /command; False means leave."""
    name, _, arg = line.partition(" ")
    if name in ("/quit", "/exit"):
        return False
    if name == "/reset":
        session.reset()
        if tty:
            _note("(conversation cleared)")
    elif name == "/system":
        session.system = arg.strip() or None
        if tty:
            _note("(system message set)" if session.system else "(system message removed)")
    elif name == "/help":
        print(HELP, flush=True)
    else:
        _note(f"unknown command {name!r}; /help lists them")
    return True


def run_chat(ns) -> int:
    """`pocketgpt chat`: one answer with -p, else a loop until /quit, end of input or Ctrl-C at the prompt."""
    from pocketgpt.checkpoint import load_checkpoint
    from pocketgpt.device import setup_runtime
    from pocketgpt.generate.text import TextGenerator
    from pocketgpt.model.quant import is_quantized, quantize_model

    sample = dataclass_from(ns, SampleConfig)
    _check_chat_ready(ns.checkpoint)
    device, dtype = setup_runtime(dataclass_from(ns, RuntimeConfig), verbose=False)
    ckpt = load_checkpoint(ns.checkpoint, device=device)
    if ns.quantize == "int8" and not is_quantized(ckpt.model):
        quantize_model(ckpt.model)
    gen = TextGenerator(ckpt.model, ckpt.tokenizer, device=device, dtype=dtype, kernels=ns.kernels)
    if ns.verbose:
        print_kernels(gen.engine, file=sys.stderr)
    session = ChatSession(gen, sample, system=ns.system, bos=resolve_bos(ns, ckpt))
    if ns.prompt is not None:
        session.say(ns.prompt, sys.stdout)
        return 0
    tty = sys.stdin.isatty()
    if tty:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        print(f"chatting with {ckpt.path} ({session.block_size}-token context); /help for commands", flush=True)
    while True:
        try:
            line = _read_line(tty)
        except KeyboardInterrupt:
            print(flush=True)
            return 0
        if line is None:
            return 0
        if not line.strip():
            continue
        if line.startswith("/"):
            if not _command(session, line.strip(), tty):
                return 0
            continue
        if tty:
            sys.stdout.write(BOT)
        session.say(line, sys.stdout)
