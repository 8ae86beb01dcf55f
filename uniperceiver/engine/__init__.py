"""Training engine: launching, the hook-based loop, the step backends, and the standard hooks."""
from .defaults import default_argument_parser, default_setup, train  # noqa: F401
from .hooks import build_hooks  # noqa: F401
from .launch import detect_world, launch  # noqa: F401
from .step import AMPStepEngine, StepEngine  # noqa: F401
from .train_loop import HookBase, NonFiniteLossError, Trainer, TrainerBase  # noqa: F401
