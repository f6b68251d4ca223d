"""All configuration: one typed dataclass per concern, and the named presets.

These dataclasses are the single schema for Python, YAML (`--config FILE`) and dotted CLI
flags (`--model.n_layer 6`): the CLI builds its parser from them, so every default lives
here, once, with a one-line doc under the field that `--help` shows. Derived values and
checks live in `__post_init__` and name the bad value.

What does not live here: parsing argv (cli/), reading files (checkpoint.py, data/).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from pocketgpt.config_dicts import deep_merge, flatten, from_dict, to_dict, unflatten  # noqa: F401  (public here too)
from pocketgpt.config_runtime import DEVICES, RuntimeConfig  # noqa: F401  (the public names live here too)
from pocketgpt.config_runtime import check as _check
from pocketgpt.config_runtime import check_ints as _ints
from pocketgpt.config_serve import ServeConfig  # noqa: F401  (the public name lives here too)
from pocketgpt.presets import PRESETS, get_preset, preset_names  # noqa: F401  (the public names live here too)


@dataclass
class ModelConfig:
    """The shape of the network. Names follow GPT-2 so checkpoints map onto Hugging Face."""

    n_layer: int = 4
    """number of transformer blocks stacked on top of each other"""
    n_head: int = 4
    """attention heads per block; n_embd must divide evenly by it"""
    n_embd: int = 128
    """width of the residual stream (embedding size)"""
    block_size: int = 128
    """context length: the most tokens the model attends over"""
    vocab_size: int = 4096
    """rows in the token embedding; set from the tokenizer when training"""
    dropout: float = 0.0
    """0 for pre-training; 0.1 or more for small fine-tuning sets"""
    bias: bool = True
    """biases in Linear layers and LayerNorms (GPT-2: True)"""
    pos_encoding: Literal["learned", "sinusoidal", "rope"] = "learned"
    """positional encoding: learned table (GPT-2), fixed sinusoids (the articles' formula) or rotary (RoPE)"""
    activation: Literal["gelu", "gelu_tanh", "relu", "relu2"] = "gelu"
    """MLP nonlinearity: exact erf GELU, GPT-2's tanh approximation, ReLU, or squared ReLU"""
    tie_embeddings: bool = True
    """share the output head's weights with the token embedding (GPT-2: True)"""
    n_inner: int | None = None
    """MLP hidden width; None means 4 * n_embd"""
    rope_base: float = 10000.0
    """RoPE frequency base (only with pos_encoding=rope)"""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon (GPT-2: 1e-5)"""
    init_std: float = 0.02
    """standard deviation of the normal weight initialisation (GPT-2: 0.02)"""
    qk_norm: bool = False
    """RMS-normalise each head's queries and keys before attention (QK-norm: steadier at high learning rates)"""

    def __post_init__(self) -> None:
        _ints(self, ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"), 1, "model.")
        e, h = self.n_embd, self.n_head
        _check(e % h == 0, f"model.n_embd ({e}) must be divisible by model.n_head ({h})")
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.pos_encoding in ("rope", "sinusoidal"):
            dim = self.head_dim if self.pos_encoding == "rope" else self.n_embd
            _check(dim % 2 == 0, f"pos_encoding={self.pos_encoding} needs an even dimension, got {dim}")
        _check(self.n_inner is None or self.n_inner > 0, f"model.n_inner must be positive, got {self.n_inner}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        return self.n_inner or 4 * self.n_embd


@dataclass
class TokenizerConfig:
    """How text becomes token ids."""

    kind: Literal["bpe", "char"] = "bpe"
    """byte-level BPE trained on the corpus, or one id per character (as nanoGPT's Shakespeare example)"""
    vocab_size: int = 4096
    """BPE vocabulary size, counting the 256 byte tokens and the special tokens"""
    path: str | None = None
    """use an existing tokenizer instead of training one: a pocketgpt tokenizer file/folder, or GPT-2 vocabulary files"""


@dataclass
class CorpusConfig:
    """Which text to read and how to split it."""

    include_source: bool = False
    """with the built-in corpus: add the standard library's source code to its docstrings"""
    extensions: tuple[str, ...] = (".txt", ".md", ".rst", ".py", ".json", ".jsonl", ".csv", ".tsv", ".html", ".tex")
    """file extensions read when --data is a folder"""
    val_fraction: float = 0.05
    """share of the corpus held out for validation (whole documents where there are many)"""

    def __post_init__(self) -> None:
        _check(0.0 < self.val_fraction <= 0.5, f"corpus.val_fraction must be in (0, 0.5], got {self.val_fraction}")


@dataclass
class TrainConfig(RuntimeConfig):
    """The optimisation loop (and, from RuntimeConfig, device, dtype and threads). Pre-training and fine-tuning both
    use it."""

    max_steps: int = 2000
    """optimizer steps to run"""
    batch_size: int = 16
    """sequences per micro-batch"""
    grad_accum: int = 1
    """micro-batches accumulated per optimizer step (tokens/step = batch_size * grad_accum * block_size)"""
    lr: float = 1e-3
    """peak learning rate"""
    min_lr_ratio: float = 0.1
    """final learning rate as a fraction of lr, reached at the last step"""
    warmup_steps: int = 100
    """steps of linear warmup from lr/warmup_steps up to lr"""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """decay after warmup"""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices only (not biases, norms or embeddings)"""
    optimizer: Literal["adamw", "muon"] = "adamw"
    """adamw for every parameter, or muon: Muon (orthogonalised momentum) for the blocks' 2-D weight matrices and
    AdamW for embeddings, the output head, norms and biases"""
    muon_lr: float = 0.02
    """Muon's peak learning rate (follows the same warmup and decay as lr)"""
    muon_momentum: float = 0.95
    """Muon's Nesterov momentum"""
    beta1: float = 0.9
    """AdamW beta1"""
    beta2: float = 0.95
    """AdamW beta2"""
    grad_clip: float = 1.0
    """clip the gradient's global norm to this; 0 turns clipping off"""
    eval_every: int = 250
    """run validation every this many steps (and at the end); 0 only at the end"""
    eval_tokens: int = 65536
    """validation tokens used during training; 0 uses the whole split"""
    save_every: int = 500
    """write a checkpoint every this many steps (and at the end)"""
    log_every: int = 10
    """append to metrics.jsonl every this many steps"""
    seed: int = 1337
    """seeds weights, data order and dropout; the same seed gives the same run"""
    compile: bool = False
    """torch.compile the model (pays off on GPU; on CPU the compile time often outweighs the gain)"""
    activation_checkpointing: bool = False
    """recompute each block's activations in the backward pass instead of storing them: less memory, ~30% more compute"""
    fused_loss: bool = True
    """compute the head and the cross-entropy chunk by chunk (model/head_loss.py), never the whole (batch x context x
    vocabulary) logits: same FLOPs, far less memory; false = lm_head then F.cross_entropy"""
    attention: Literal["auto", "sdpa", "matmul"] = "auto"
    """attention kernel: sdpa (PyTorch's fused kernel), matmul (the formula as three matmuls), or auto: whichever
    runs this run's attention forward + backward faster on this machine (measured at start, cached; SDPA on GPUs)"""
    max_time: float = 0.0
    """stop after this many seconds of training (0 = no limit); the learning-rate decay then follows whichever of
    steps or time runs out first, so a time-limited run is not bit-for-bit repeatable"""
    parallel: Literal["auto", "ddp", "fsdp"] = "auto"
    """under torchrun with more than one process: ddp (DistributedDataParallel, the default) or fsdp (FSDP2: each block's
    parameters, gradients and optimizer state sharded across processes); ignored in one process"""
    dist_backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend: auto = nccl when training on CUDA, gloo otherwise"""
    dist_timeout_s: float = 600.0
    """seconds a collective may wait for the other processes before the run fails (a lost rank never hangs it)"""
    samples: int = 2
    """samples printed at the end of training"""
    sample_tokens: int = 120
    """length of each printed sample, in tokens"""

    def __post_init__(self) -> None:
        super().__post_init__()
        _ints(self, ("max_steps", "batch_size", "grad_accum"), 1, "train.")
        counts = ("warmup_steps", "eval_every", "eval_tokens", "save_every", "log_every", "samples", "sample_tokens")
        _ints(self, counts, 0, "train.")
        _check(self.lr > 0 and math.isfinite(self.lr), f"train.lr must be positive, got {self.lr}")
        _check(0.0 <= self.min_lr_ratio <= 1.0, f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(self.grad_clip >= 0, f"train.grad_clip must be >= 0, got {self.grad_clip}")
        _check(self.muon_lr > 0 and math.isfinite(self.muon_lr), f"train.muon_lr must be positive, got {self.muon_lr}")
        _check(0.0 <= self.muon_momentum < 1.0, f"train.muon_momentum must be in [0, 1), got {self.muon_momentum}")
        _check(self.max_time >= 0 and math.isfinite(self.max_time), f"train.max_time must be >= 0, got {self.max_time}")
        t = self.dist_timeout_s
        _check(t > 0 and math.isfinite(t), f"train.dist_timeout_s must be positive, got {t}")


@dataclass
class SampleConfig:
    """How tokens are picked at generation time (OpenAI / Hugging Face semantics where they exist)."""

    max_new_tokens: int = 200
    """tokens to generate at most"""
    temperature: float | None = None
    """0 picks the most likely token (greedy); higher is more random; unset means 0.8 (and greedy with beams)"""
    top_k: int = 0
    """keep only the k most likely tokens; 0 keeps all"""
    top_p: float = 1.0
    """keep the smallest set of tokens whose probability reaches p (nucleus sampling); 1 keeps all"""
    min_p: float = 0.0
    """drop tokens less likely than min_p times the most likely one; 0 keeps all"""
    repetition_penalty: float = 1.0
    """divide positive (multiply negative) logits of tokens already in the text by this; 1 is off"""
    frequency_penalty: float = 0.0
    """subtract this times the count of each token generated so far (OpenAI), -2..2"""
    presence_penalty: float = 0.0
    """subtract this from every token generated at least once so far (OpenAI), -2..2"""
    logit_bias: dict[int, float] | None = None
    """token id -> value added to its logit (OpenAI), e.g. {50256: -100} to ban a token"""
    seed: int | None = None
    """seed for sampling; the same seed repeats the same text"""
    num_samples: int = 1
    """independent samples per prompt (they share one prefill)"""
    num_beams: int = 1
    """beam search width; 1 is off. Beam search is deterministic: it does not combine with temperature > 0"""
    length_penalty: float = 1.0
    """beam score = sum of log-probabilities / generated length ** length_penalty"""
    early_stopping: bool = False
    """beam search stops as soon as num_beams hypotheses are finished"""
    logprobs: bool = False
    """return the log-probability of each generated token"""
    top_logprobs: int = 0
    """also return the this many most likely alternatives at each step (0..20)"""
    stop: tuple[str, ...] = ()
    """stop when the text contains one of these strings (never included in the output)"""
    speculative: Literal["off", "ngram", "draft"] = "off"
    """speculative decoding, same output in fewer model passes: ngram (prompt lookup) or draft (a smaller model)"""
    draft_tokens: int = 4
    """tokens drafted per model pass when speculative (1..16)"""

    def __post_init__(self) -> None:
        t = self.temperature
        _check(
            t is None or (isinstance(t, (int, float)) and not math.isnan(t) and t >= 0),
            f"temperature must be >= 0, got {t}",
        )
        _check(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}")
        _check(self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}")
        _check(0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}")
        _check(self.max_new_tokens >= 0, f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        r = self.repetition_penalty
        _check(r > 0 and math.isfinite(r), f"repetition_penalty must be > 0, got {r}")
        for name in ("frequency_penalty", "presence_penalty"):
            v = getattr(self, name)
            _check(math.isfinite(v) and -2.0 <= v <= 2.0, f"{name} must be in [-2, 2], got {v}")
        _check(self.num_samples >= 1, f"num_samples must be >= 1, got {self.num_samples}")
        _check(self.num_beams >= 1, f"num_beams must be >= 1, got {self.num_beams}")
        _check(0 <= self.top_logprobs <= 20, f"top_logprobs must be in [0, 20], got {self.top_logprobs}")
        _check(
            self.speculative in ("off", "ngram", "draft"),
            f"speculative must be off, ngram or draft, got {self.speculative!r}",
        )
        _check(1 <= self.draft_tokens <= 16, f"draft_tokens must be in [1, 16], got {self.draft_tokens}")
        _check(
            self.speculative == "off" or self.num_beams == 1,
            "speculative decoding does not combine with beam search: use num_beams=1 or speculative='off'",
        )
        if self.num_beams > 1:
            _check(not t, f"beam search is deterministic and cannot sample: drop temperature={t} or use num_beams=1")
            _check(
                self.top_k == 0 and self.top_p == 1.0 and self.min_p == 0.0,
                "beam search does not combine with top_k / top_p / min_p sampling filters",
            )
            _check(
                self.num_samples <= self.num_beams,
                f"num_samples ({self.num_samples}) cannot exceed num_beams ({self.num_beams}): "
                "beam search returns the best num_samples beams",
            )
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        _check(all(isinstance(x, str) and x for x in self.stop), f"stop strings must be non-empty, got {self.stop!r}")

    @property
    def effective_temperature(self) -> float:
        if self.temperature is not None:
            return float(self.temperature)
        return 0.0 if self.num_beams > 1 else 0.8


@dataclass
class TrainRun:
    """Everything `pocketgpt train` needs; written next to its outputs as config.yaml."""

    data: str | None = None
    """training text: a file, folder, glob or .jsonl (field "text"); omit for the built-in corpus (Python's own docs)"""
    out: str = "runs/default"
    """run folder: checkpoints, metrics.jsonl, config.yaml, loss.png"""
    cache_dir: str | None = None
    """where prepared tokenizers and token shards are cached; default: <out>/../.cache"""
    model: ModelConfig = field(default_factory=ModelConfig)
    """the network"""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """the tokenizer"""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """corpus reading and splitting"""
    train: TrainConfig = field(default_factory=TrainConfig)
    """the optimisation loop"""


@dataclass
class LoRAConfig:
    """Low-rank adapters (Hu et al. 2021): W x + (alpha / rank) * B A x, with only A and B trained."""

    rank: int = 0
    """adapter rank; 0 turns LoRA off (full fine-tuning)"""
    alpha: float = 16.0
    """scale of the adapter's output is alpha / rank"""
    dropout: float = 0.05
    """dropout on the adapter's input"""
    targets: str = "attn,mlp"
    """comma-separated layers to adapt: attn (c_attn, c_proj), mlp (c_fc, c_proj)"""

    def __post_init__(self) -> None:
        _check(isinstance(self.rank, int) and self.rank >= 0, f"lora.rank must be an integer >= 0, got {self.rank!r}")
        _check(self.alpha > 0, f"lora.alpha must be > 0, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, f"lora.dropout must be in [0, 1), got {self.dropout}")
        parts = [t.strip() for t in self.targets.split(",") if t.strip()]
        bad = [t for t in parts if t not in ("attn", "mlp")]
        _check(parts and not bad, f"lora.targets must name attn and/or mlp, got {self.targets!r}")


def _finetune_train() -> TrainConfig:
    return TrainConfig(
        max_steps=300,
        batch_size=16,
        lr=3e-4,
        warmup_steps=20,
        eval_every=100,
        save_every=100,
        weight_decay=0.0,
        samples=0,
    )


@dataclass
class FinetuneRun:
    """Everything `pocketgpt finetune` needs besides the base checkpoint."""

    data: str = ""
    """training data: text (task lm); JSONL chat / instruction / prompt-completion records (task chat);
    CSV, TSV or JSONL with a text and a label column (task classify)"""
    out: str = "runs/finetune"
    """run folder: checkpoints (or adapters), metrics.jsonl, config.yaml, loss.png"""
    task: Literal["lm", "chat", "classify"] = "lm"
    """lm: continued pre-training; chat: loss on assistant answers only; classify: a classification head"""
    text_column: str = "text"
    """classify: the column (CSV/TSV header or JSON key) holding the text"""
    label_column: str = "label"
    """classify: the column holding the label"""
    val_fraction: float = 0.1
    """share of the examples held out for validation"""
    overlong: Literal["crop", "drop"] = "crop"
    """chat / classify: sequences longer than the context are cropped (keeping the start) or dropped"""
    cache_dir: str | None = None
    """lm: where prepared token shards are cached; default: <out>/../.cache"""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """low-rank adapters (rank 0 = full fine-tuning)"""
    train: TrainConfig = field(default_factory=_finetune_train)
    """the optimisation loop (the same one pre-training uses)"""

    def __post_init__(self) -> None:
        _check(0.0 < self.val_fraction <= 0.5, f"val_fraction must be in (0, 0.5], got {self.val_fraction}")


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    """ModelConfig of a named preset, e.g. `model_preset("gpt2")`."""
    return ModelConfig(**{**get_preset(name).get("model", {}), **overrides})
