"""Weights in and out of other formats; today Hugging Face GPT-2 (`hf_gpt2`, `hf_tokenizer`).

HF names live only here: `pocketgpt.model` never sees them. `transformers` is not imported by this
package; downloading a Hub id needs `huggingface_hub` (the `[hf]` extra).
"""

from pocketgpt.interop.hf_gpt2 import (
    IGNORED,
    RENAME,
    TRANSPOSED,
    config_from_hf,
    config_to_hf,
    convert_from_hf,
    convert_to_hf,
    from_hf_state_dict,
    to_hf_state_dict,
)

__all__ = [
    "RENAME",
    "TRANSPOSED",
    "IGNORED",
    "convert_from_hf",
    "convert_to_hf",
    "to_hf_state_dict",
    "from_hf_state_dict",
    "config_to_hf",
    "config_from_hf",
]
