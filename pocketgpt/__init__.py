"""pocketgpt: understand, train, fine-tune and run GPT models."""
