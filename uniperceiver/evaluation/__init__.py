"""Evaluation: evaluators (``reset / process / evaluate``) registered by name, and the inference loop.

Evaluator names (``INFERENCE.NAME`` or a task type's default): ClassificationEvaluator,
RetrievalEvaluator, CaptionEvaluator, MLMEvaluator, VQAEvaluator, GLUEEvaluator.
"""
from .evaluator import EVALUATOR_REGISTRY, DatasetEvaluator, build_evaluator  # noqa: F401
from .classification import ClassificationEvaluator  # noqa: F401
from .retrieval import RetrievalEvaluator  # noqa: F401
from .caption import CaptionEvaluator  # noqa: F401
from .mlm import MLMEvaluator  # noqa: F401
from .vqa import VQAEvaluator  # noqa: F401
from .glue import GLUEEvaluator  # noqa: F401
from .inference import inference_on_tasks  # noqa: F401
