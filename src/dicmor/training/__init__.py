"""The training loop and the end-to-end run."""
