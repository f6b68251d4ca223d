"""Fine-tuning pieces on top of a pre-trained GPT: a classification head (classify.py), low-rank adapters
(lora.py) and folding an adapter back into a plain checkpoint (merge.py).

The training itself is not here: fine-tuning runs the same `train.loop` as pre-training, with these
models and batch sources plugged in. Nothing here parses argv.
"""
