"""Publishing to the Hugging Face Hub: ``push.push`` sends a generated dataset folder to a dataset repo."""
