"""pocketgpt: understand, train, fine-tune and run GPT models.

    from pocketgpt import GPT, ModelConfig, Tokenizer, load_checkpoint, generate_text

The public API; everything else is reachable through the subpackages (model, tokenizer, data, train,
generate, checkpoint, evaluate, explain, device, config).
"""

from pocketgpt.checkpoint import Checkpoint, load_checkpoint, load_tokenizer, save_checkpoint
from pocketgpt.config import (
    CorpusConfig,
    ModelConfig,
    SampleConfig,
    TokenizerConfig,
    TrainConfig,
    TrainRun,
    model_preset,
)
from pocketgpt.errors import UserError
from pocketgpt.evaluate import evaluate_tokens
from pocketgpt.explain import explain_prompt, explain_tokens, token_report
from pocketgpt.generate import generate_ids
from pocketgpt.generate.text import generate_text
from pocketgpt.model import GPT, KVCache
from pocketgpt.model.quant import quantize_model
from pocketgpt.quantize import quantize_checkpoint
from pocketgpt.tokenizer import Tokenizer
from pocketgpt.train.pretrain import pretrain

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "ModelConfig",
    "KVCache",
    "Tokenizer",
    "TrainRun",
    "TrainConfig",
    "TokenizerConfig",
    "CorpusConfig",
    "SampleConfig",
    "model_preset",
    "pretrain",
    "load_checkpoint",
    "save_checkpoint",
    "load_tokenizer",
    "Checkpoint",
    "generate_text",
    "generate_ids",
    "evaluate_tokens",
    "explain_prompt",
    "explain_tokens",
    "token_report",
    "quantize_model",
    "quantize_checkpoint",
    "UserError",
]
