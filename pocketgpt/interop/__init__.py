"""Weights in and out of other formats: Hugging Face GPT-2 both ways (`hf_gpt2`, `hf_tokenizer`); out to GGUF
for llama.cpp / Ollama (`gguf_export`) and to ONNX for onnxruntime (`onnx_export`, run by `onnx_runtime`).

Foreign names live only here: `pocketgpt.model` never sees them. `transformers` is not imported by this
package; downloading a Hub id needs `huggingface_hub` (the `[hf]` extra); GGUF and ONNX need the `[export]` extra
(gguf, onnx, onnxscript, onnxruntime), imported only when used.
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
