"""Checkpointing: atomic saves, weights-only loads, strict key matching with ignore / resize rules."""
from .checkpointer import Checkpointer, CheckpointError, CheckpointWriteError, last_iteration, load_checkpoint_file, match_state_dict  # noqa: F401
