"""Published Uni-Perceiver configs (github fundamentalvision/Uni-Perceiver @ a8c9e37) converted onto our tree.

``convert_published(path)`` reads a published YAML file with its ``_BASE_`` chain (published semantics: a child
replaces the parent's lists, ``TASKS`` included), fills every key the published code reads from the published
defaults (``uniperceiver/config/defaults.py`` there; a task node there is its raw dict), and translates each key
by :data:`PUBLISHED_KEY_MAP`:

* ``Map(our_key, fn)``: the published effective value (``fn`` translates it) is written where it differs from
  our default, so every mapped key's effective value is the published one;
* ``Drop(reason)``: no effect in this code base (storage backends, caches, logging, precision plumbing ...);
* ``Need(values, what_to_do)``: our code behaves as the published one with these values; any other value
  changes the model, objective or schedule and is a ConfigError naming file, key and what to do;
* ``Pending(our_key, owner)``: a key another part of the code adds; mapped when our tree has ``our_key``,
  else dropped with a warning (the integrator extends this table);
* a function: keys whose meaning depends on others (losses, precision, prompts, splits, evaluators).

Every key a published file sets must have a rule (an unknown key is an error naming file, key and what to
do).  :class:`ConversionReport` lists each key as mapped or dropped with its reason (``tools/convert_config.py``).
"""
from __future__ import annotations

import copy
import logging
import os
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .config import BASE_KEY, ConfigError, _FLOAT_TEXT, read_config_mapping

logger = logging.getLogger(__name__)

TASK_KEYS = ("DATASETS", "DATALOADER", "MODEL", "LOSSES", "INFERENCE", "DECODE_STRATEGY")


# ------------------------------------------------------------------------------------------------ rule kinds
@dataclass(frozen=True)
class Map:
    key: str
    fn: Optional[Callable[[Any], Any]] = None


@dataclass(frozen=True)
class Drop:
    reason: str


@dataclass(frozen=True)
class Need:
    values: Tuple[Any, ...]
    what_to_do: str


@dataclass(frozen=True)
class Pending:
    key: str
    owner: str
    ours: Any = None  # the value our code behaves as today (None: unknown; any value set warns)


# Published defaults of the keys the rules below map or check (published uniperceiver/config/defaults.py).
PUBLISHED_DEFAULTS: Dict[str, Any] = {
    "SEED": -1, "OUTPUT_DIR": "./output", "CUDNN_BENCHMARK": False,
    "MODEL.META_ARCHITECTURE": "", "MODEL.ENCODER": "", "MODEL.WEIGHTS": "", "MODEL.IMG_INPUT_SIZE": 224,
    "MODEL.PATCH_SIZE": 16, "MODEL.VOCAB_SIZE": 1000, "MODEL.MAX_SEQ_LEN": 17, "MODEL.EVAL_MAX_SEQ_LEN": 17, "MODEL.LABELS_NUM": 1000,
    "MODEL.TEMP_NAME": "", "MODEL.POSEMBEDFIX": False, "MODEL.POSEMBED_SCALE": 1.0, "MODEL.LAYER_SCALE": False,
    "MODEL.LAYER_SCALE_INIT": 1e-5, "MODEL.MODEL_EMA": False, "MODEL.MODEL_EMA_DECAY": 0.9999,
    "MODEL.PRED_TEMPERATURE": 1.0, "MODEL.LEARN_TEMP": False,
    "MODEL.OLD_CHECKPONT": True, "MODEL.VIDEO_EMBED.ADD_TYPE_EMBED": False, "MODEL.PROMPT": False, "MODEL.PROMPT_PARAM": [],
    "MODEL.TOKEN_EMBED.POSITION_MAX_LEN": 5000, "MODEL.VIDEO_EMBED.MAX_FRAMES": 8,
    "MODEL.PROMPT_EMBED.INPUT_DEEP_PROMPT_LENGTH": 10, "MODEL.PROMPT_EMBED.DEEP_PROMPT": False,
    "MODEL.BERT.HIDDEN_SIZE": 512, "MODEL.BERT.NUM_HIDDEN_LAYERS": 12, "MODEL.BERT.NUM_ATTENTION_HEADS": 8,
    "MODEL.BERT.INTERMEDIATE_SIZE": 2048, "MODEL.BERT.HIDDEN_ACT": "gelu", "MODEL.BERT.HIDDEN_DROPOUT_PROB": 0.1,
    "MODEL.BERT.ATTENTION_PROBS_DROPOUT_PROB": 0.1, "MODEL.BERT.DROP_PATH_PROB": 0.0,
    "MODEL.BERT.DROP_PATH_PROB_FIXED": False,
    "MOE.MOE": False, "MOE.NUM_EXPERTS": 1, "MOE.TOP_K": 1, "MOE.CAPACITY_FACTOR": 1.0,
    "MOE.EVAL_MIN_CAPACITY": 1.0, "MOE.MIN_CAPACITY": 4, "MOE.NOISY_GATE_POLICY": "RSample",
    "MOE.MOE_EXPERT_LOCATION": "odd", "MOE.MOE_TYPE": "attribute", "MOE.EP_WORLD_SIZE": 1,
    "DATASETS.TRAIN": "", "DATASETS.VAL": "", "DATASETS.TEST": "", "DATASETS.TASK_TYPE": "",
    "DATASETS.DATASET_NAME": "", "DATASETS.TARGET_SET": [""],
    "DATALOADER.TRAIN_BATCH_SIZE": 64, "DATALOADER.TEST_BATCH_SIZE": 64, "DATALOADER.NUM_WORKERS": 4,
    "DATALOADER.FEATS_FOLDER": "", "DATALOADER.ANNO_FOLDER": "", "DATALOADER.SAMPLING_WEIGHT": 1.0,
    "DATALOADER.DATA_PERCENTAGE": 1.0, "DATALOADER.MIXUP": 0.0, "DATALOADER.CUTMIX": 0.0,
    "DATALOADER.MIXUP_LABEL_SMOOTHING": 0.0, "DATALOADER.FRAMES_PER_CLIP": 4, "DATALOADER.STRIDE": 5,
    "LOSSES.NAMES": [""], "LOSSES.LOSS_WEIGHT": 1.0, "LOSSES.LABELSMOOTHING": 0.1,
    "INFERENCE.NAME": "", "INFERENCE.VAL_ANNFILE": "captions_val5k.json",
    "INFERENCE.TEST_ANNFILE": "captions_test5k.json", "INFERENCE.NUM_VIEWS": 1,
    "DECODE_STRATEGY.NAME": "none", "DECODE_STRATEGY.BEAM_SIZE": 1, "DECODE_STRATEGY.LEN_PENALTY": 0.0,
    "SOLVER.NAME": "Adam", "SOLVER.MAX_ITER": 10000, "SOLVER.CHECKPOINT_PERIOD": 1,
    "SOLVER.CHECKPOINT_MAX_SAVE": 1000, "SOLVER.EVAL_PERIOD": 1, "SOLVER.BASE_LR": 0.0005, "SOLVER.ACCUM_ITER": 0,
    "SOLVER.WEIGHT_DECAY": 0.0, "SOLVER.WEIGHT_DECAY_NORM": 0.0, "SOLVER.WEIGHT_DECAY_BIAS": 0.0,
    "SOLVER.WEIGHT_DECAY_EMBEDDING": 0.05, "SOLVER.BETAS": [0.9, 0.999], "SOLVER.EPS": 1e-8,
    "SOLVER.GRAD_CLIP": 0.1, "SOLVER.WRITE_PERIOD": 20, "SOLVER.AMP_FP16": False, "SOLVER.APEX_FP16": False,
    "SOLVER.APEX_OPT_LEVEL": "O1", "SOLVER.BF16": False, "SOLVER.LAYER_LR_DECAY": 1.0,
    "LR_SCHEDULER.NAME": "StepLR", "LR_SCHEDULER.WARMUP": 1000, "LR_SCHEDULER.MIN_LR": 0.000001,
    "LR_SCHEDULER.STEPS": [3], "LR_SCHEDULER.GAMMA": 0.1,
}

# The 11 logit scales of the published model (its loss_prepare.logit_scale_<name>; checkpoint/official.py).
PUBLISHED_LOGIT_SCALE_NAMES = (
    "logit_scale_img_cls", "logit_scale_video_cls", "logit_scale_text_mlm", "logit_scale_text_caption",
    "logit_scale_caption", "logit_scale_mlm", "logit_scale_retrieve", "logit_scale_tqa_mlm",
    "logit_scale_tqa_caption", "logit_scale_tqa_retrieve", "logit_scale_downstream",
)

# Per-task keys whose published default applies to a task node that does not set them.
TASK_DEFAULT_KEYS = ("DATALOADER.TRAIN_BATCH_SIZE", "DATALOADER.TEST_BATCH_SIZE", "DATALOADER.NUM_WORKERS",
                     "DATALOADER.SAMPLING_WEIGHT", "DATALOADER.DATA_PERCENTAGE", "DATALOADER.MIXUP",
                     "DATALOADER.CUTMIX", "DATALOADER.FRAMES_PER_CLIP", "DATALOADER.STRIDE", "MODEL.MAX_SEQ_LEN",
                     "MODEL.EVAL_MAX_SEQ_LEN",
                     "LOSSES.LOSS_WEIGHT", "DECODE_STRATEGY.BEAM_SIZE",
                     "DECODE_STRATEGY.LEN_PENALTY")

_STORAGE = "storage backend (S3 / ceph / zip / cache modes) not used: files are read from DATA_PATH"
_CACHE = "dataset caching / loading mechanics; no effect on the samples"
_LOG = "logging / debugging only"
_PREC = "fp16 plumbing of APEX / DeepSpeed kernels; native autocast keeps norms, softmax and gates in fp32"
_INIT = "parameter initialisation: ours is the published MAE / BERT init (truncated normal 0.02)"
_UNUSED = "read by no published code path for these models"
_PRETRAIN_ONLY = "read from the published checkpoint loader; tools/convert_checkpoint.py converts checkpoints"


def _is(*values):
    return tuple(values)


def _inverse(t: float) -> float:
    return 1.0 / float(t)


# One table for every published key (dotted; task-node keys under their sub-tree).  The integrator extends it.
PUBLISHED_KEY_MAP: Dict[str, Any] = {
    # ---- top level
    "VERSION": Drop("config version marker"),
    "SEED": Map("SEED"),
    "OUTPUT_DIR": Map("OUTPUT_DIR"),
    "CUDNN_BENCHMARK": Map("CUDNN_BENCHMARK"),
    "find_unused_parameters": Drop("DDP detail: our model uses every parameter it builds"),
    "ENGINE.NAME": Need(_is("UnifiedTrainer", ""), "only the multi-task trainer exists here"),
    "SCHEDULED_SAMPLING.START_EPOCH": Drop(_UNUSED), "SCHEDULED_SAMPLING.INC_EVERY_EPOCH": Drop(_UNUSED),
    "SCHEDULED_SAMPLING.INC_PROB": Drop(_UNUSED), "SCHEDULED_SAMPLING.MAX_PROB": Drop(_UNUSED),
    # ---- model
    "MODEL.META_ARCHITECTURE": Map("MODEL.META_ARCHITECTURE", lambda v: "UniPerceiver"),
    "MODEL.ENCODER": Map("MODEL.ENCODER", lambda v: "UnifiedBertEncoder"),
    "MODEL.ENCODER_DIM": Drop("equals MODEL.BERT.HIDDEN_SIZE (checked)"),
    "MODEL.DECODER": Need(_is(""), "no separate decoder exists here"),
    "MODEL.DECODER_DIM": Drop("no decoder (MODEL.DECODER '')"),
    "MODEL.PREDICTOR": "predictor",
    "MODEL.FEATURE_GATHER": Drop("retrieval features of all ranks: DATALOADER.STRATEGY synced does the same"),
    "MODEL.LEARN_TEMP": Pending("MODEL.LEARN_TEMP", "p17 (logit scales); here every logit scale learns", True),
    "MODEL.PRED_TEMPERATURE": Map("MODEL.LOGIT_SCALE_INIT", _inverse),
    "MODEL.PRED_USE_NORM": Need(_is(True), "features are always L2-normalised before scoring here"),
    "MODEL.BertParamsInit": Drop(_INIT), "MODEL.MAEParamsInit": Drop(_INIT),
    "MODEL.CLS_TOKEN": Drop(_UNUSED), "MODEL.QUEUE_LEN": Drop(_UNUSED),
    "MODEL.MAX_LABEL_LEN": Drop("label-set token length: label sets here are encoded at their own length"),
    "MODEL.OUTPUT_PROJ": Need(_is(True), "the output projection is always built here"),
    "MODEL.IN_TUNING": Drop("ImageNet-1k label rows of a 22k checkpoint: label sets come from DATASETS.TARGET_SET"),
    "MODEL.SHARE_LAYERNORM": Need(_is(True), "one LayerNorm is shared by the modality embeddings here"),
    "MODEL.OLD_CHECKPONT": Map("MODEL.SPE_FROM_TOKEN_TABLE"),
    "MODEL.CHECKPOINT_FILETER": Drop(_PRETRAIN_ONLY),
    "MODEL.GATE_FP32": Drop(_PREC), "MODEL.LAYER_SCALE_FP32": Drop(_PREC), "MODEL.TAG_TRANSFORM_FP32": Drop(_PREC),
    "MODEL.IMG_INPUT_SIZE": Map("MODEL.IMG_INPUT_SIZE"),
    "MODEL.PATCH_SIZE": Map("MODEL.PATCH_SIZE"),
    "MODEL.VOCAB_SIZE": Map("MODEL.VOCAB_SIZE"),
    "MODEL.POSEMBEDFIX": Map("MODEL.POSEMBEDFIX"),
    "MODEL.POSEMBED_SCALE": Map("MODEL.POSEMBED_SCALE", float),
    "MODEL.LAYER_SCALE": Map("MODEL.LAYER_SCALE"),
    "MODEL.LAYER_SCALE_INIT": Map("MODEL.LAYER_SCALE_INIT", float),
    "MODEL.MODEL_EMA": Map("MODEL.MODEL_EMA"),
    "MODEL.MODEL_EMA_DECAY": Map("MODEL.MODEL_EMA_DECAY"),
    "MODEL.WEIGHTS": Map("MODEL.WEIGHTS"),
    "MODEL.MAX_SEQ_LEN": Map("MODEL.MAX_SEQ_LEN"),
    "MODEL.EVAL_MAX_SEQ_LEN": Map("MODEL.EVAL_MAX_SEQ_LEN"),
    "MODEL.LABELS_NUM": Map("MODEL.LABELS_NUM"),
    "MODEL.TEMP_NAME": Map("MODEL.TEMP_NAME"),
    "MODEL.TOKEN_EMBED.NAME": Need(_is("TokenBaseEmbedding"), "the BPE token embedding is the only one here"),
    "MODEL.TOKEN_EMBED.DIM": Drop("equals MODEL.BERT.HIDDEN_SIZE (checked)"),
    "MODEL.TOKEN_EMBED.ACTIVATION": Need(_is("none"), "no activation after the embedding here"),
    "MODEL.TOKEN_EMBED.USE_NORM": Need(_is(True), "the embedding LayerNorm is always built here"),
    "MODEL.TOKEN_EMBED.DROPOUT": Need(_is(0.0), "no embedding dropout here"),
    "MODEL.TOKEN_EMBED.POSITION": Need(_is("NNEmbeddingEncoding"), "text positions are a learned table here"),
    "MODEL.TOKEN_EMBED.POSITION_MAX_LEN": Map("MODEL.MAX_POSITION_EMBEDDINGS"),
    "MODEL.TOKEN_EMBED.TYPE_VOCAB_SIZE": Drop("token types: ours has rows 0 text, 1 visual, 2 <|spe|>, 3 caption "
                                              "query (MODEL.TYPE_VOCAB_SIZE 4); published checkpoints convert"),
    "MODEL.VISUAL_EMBED.NAME": Need(_is("none", "VisualPatchEmbedding", ""), "images use the shared patch embedding"),
    "MODEL.VISUAL_EMBED.IN_DIM": Need(_is(3), "RGB images"),
    "MODEL.VISUAL_EMBED.OUT_DIM": Drop("equals MODEL.BERT.HIDDEN_SIZE"),
    "MODEL.VISUAL_EMBED.ACTIVATION": Need(_is("none"), "no activation after the embedding here"),
    "MODEL.VISUAL_EMBED.USE_NORM": Need(_is(True), "the embedding LayerNorm is always built here"),
    "MODEL.VISUAL_EMBED.DROPOUT": Need(_is(0.0), "no embedding dropout here"),
    "MODEL.VISUAL_EMBED.PATCH_SIZE": Drop("equals MODEL.PATCH_SIZE (checked)"),
    "MODEL.VISUAL_EMBED.TYPE_SIZE": Drop("visual token type: row 1 of our type table"),
    "MODEL.VIDEO_EMBED.NAME": Need(_is("VideoBaseEmbedding"), "images and video share one patch embedding here"),
    "MODEL.VIDEO_EMBED.IN_DIM": Drop("RGB patches (3 x 16 x 16 = 768)"),
    "MODEL.VIDEO_EMBED.OUT_DIM": Drop("equals MODEL.BERT.HIDDEN_SIZE"),
    "MODEL.VIDEO_EMBED.ACTIVATION": Need(_is("none"), "no activation after the embedding here"),
    "MODEL.VIDEO_EMBED.USE_NORM": Need(_is(True), "the embedding LayerNorm is always built here"),
    "MODEL.VIDEO_EMBED.DROPOUT": Need(_is(0.0), "no embedding dropout here"),
    "MODEL.VIDEO_EMBED.TYPE_SIZE": Drop("visual token type: row 1 of our type table"),
    "MODEL.VIDEO_EMBED.POSITION": Need(_is("NNEmbeddingEncoding"), "learned temporal positions here"),
    "MODEL.VIDEO_EMBED.MAX_LENGTH": Drop("spatial positions: the sin-cos table (MODEL.POSEMBEDFIX)"),
    "MODEL.VIDEO_EMBED.PATCH_SIZE_S": Drop("equals MODEL.PATCH_SIZE (checked)"),
    "MODEL.VIDEO_EMBED.PATCH_SIZE_T": Need(_is(1), "one frame per patch here"),
    "MODEL.VIDEO_EMBED.DIVIDE_ST_POS": Need(_is(True), "spatial and temporal positions are separate here"),
    "MODEL.VIDEO_EMBED.USE_VISUAL_TOKENIZER": Need(_is(True), "images and video share one patch embedding"),
    "MODEL.VIDEO_EMBED.USE_VISUAL_POS": Need(_is(True), "the visual position table is always used"),
    "MODEL.VIDEO_EMBED.MAX_FRAMES": Map("MODEL.MAX_FRAMES"),
    "MODEL.VIDEO_EMBED.ADD_TYPE_EMBED": Map("MODEL.VISUAL_TYPE_EMBED"),
    "MODEL.BERT.HIDDEN_SIZE": Map("MODEL.BERT.HIDDEN_SIZE"),
    "MODEL.BERT.NUM_HIDDEN_LAYERS": Map("MODEL.BERT.NUM_HIDDEN_LAYERS"),
    "MODEL.BERT.NUM_ATTENTION_HEADS": Map("MODEL.BERT.NUM_ATTENTION_HEADS"),
    "MODEL.BERT.INTERMEDIATE_SIZE": Map("MODEL.BERT.INTERMEDIATE_SIZE"),
    "MODEL.BERT.HIDDEN_ACT": Map("MODEL.BERT.HIDDEN_ACT"),
    "MODEL.BERT.HIDDEN_DROPOUT_PROB": Map("MODEL.BERT.HIDDEN_DROPOUT_PROB", float),
    "MODEL.BERT.ATTENTION_PROBS_DROPOUT_PROB": Map("MODEL.BERT.ATTENTION_PROBS_DROPOUT_PROB", float),
    "MODEL.BERT.DROP_PATH_PROB": Map("MODEL.BERT.DROP_PATH_PROB", float),
    "MODEL.BERT.DROP_PATH_PROB_FIXED": Map("MODEL.BERT.DROP_PATH_PROB_FIXED"),
    "MODEL.BERT.INTERMEDIATE_DROP": Need(_is(0.0), "no dropout inside the FFN here"),
    "MODEL.BERT.FFN_DROPOUT_PROB": Need(_is(0.0), "no dropout after the FFN here"),
    "MODEL.BERT.NUM_GENERATION_LAYERS": Drop(_UNUSED),
    "MODEL.BERT.NORMALIZE_DECISION": Need(_is("BERTPre"), "blocks are pre-LayerNorm here"),
    "MODEL.BERT.UNIFY_QKV": Need(_is(True), "one fused qkv projection here"),
    "MODEL.BERT.SCALE_MULTI_BEFORE": Pending("MODEL.BERT.SCALE_MULTI_BEFORE", "moe17 / p17 (q scaled before qk^T)"),
    # prompt tuning: MODEL.PROMPT and MODEL.PROMPT_EMBED.* are converted together (_convert_prompt)
    "MODEL.PROMPT": "prompt", "MODEL.PROMPT_PARAM": "prompt",
    "MODEL.FC_PROMPT": "prompt", "MODEL.FC_PROMPT_OUT": "prompt",
    # ---- MoE: the published gate (TAG_Transform) is our MOE.ATTRIBUTE_GATE segment_row (modeling/moe/)
    "MOE.MOE": Map("MOE.MOE"),
    "MOE.NUM_EXPERTS": Map("MOE.NUM_EXPERTS"),
    "MOE.TOP_K": Map("MOE.TOP_K"),
    "MOE.CAPACITY_FACTOR": Map("MOE.CAPACITY_FACTOR", float),
    "MOE.EVAL_MIN_CAPACITY": Map("MOE.EVAL_CAPACITY_FACTOR", float),
    "MOE.MIN_CAPACITY": Map("MOE.MIN_CAPACITY"),
    "MOE.MOE_TYPE": Map("MOE.MOE_TYPE"),
    "MOE.MOE_EXPERT_LOCATION": "moe_location",
    "MOE.EP_WORLD_SIZE": Map("MOE.EP_SIZE"),
    "MOE.NOISY_GATE_POLICY": Map("MOE.NOISY_GATE_POLICY", lambda v: {"vmoe": "Normal"}.get(v, v)),
    "MOE.TAG_Transform": "moe_gate",
    "MOE.ATTRIBUTE_LENGTH": Need(_is(8), "the published attribute rows have 8 entries"),
    "MOE.BATCH_PRIO": Need(_is(True, False), "batch-priority routing orders tokens when an expert overflows its "
                                            "capacity; the native attribute gate has no capacity limit"),
    "MOE.FFN_SHARE_GATE_DECISION": Need(_is(True), "the FFN's second layer follows the first layer's routing here"),
    "MOE.MOE_EXPERT_TYPE": Need(_is("FFN,SA"), "experts sit in the attention and the FFN here"),
    "MOE.SA_LINEAR_OUT_MOE": Need(_is(True), "the attention output projection has experts here"),
    "MOE.MOE_PARAM_GROUP": Drop("expert parameters always get their own optimizer groups here"),
    "MOE.USE_TUTEL": Drop("kernel backend (tutel); MOE.BACKEND picks ours"),
    # ---- datasets (per task)
    "DATASETS.TASK_TYPE": Map("DATASETS.TASK_TYPE"),
    "DATASETS.DATASET_NAME": Map("DATASETS.DATASET_NAME"),
    "DATASETS.TARGET_SET": Map("DATASETS.TARGET_SET", lambda v: [t for t in v if t]),
    "DATASETS.TRAIN": "split", "DATASETS.VAL": "split", "DATASETS.TEST": "split",
    "DATASETS.VERSION": Drop("dataset-class revision: the reader follows the file format"),
    # ---- data loading (per task, and the global defaults)
    "DATALOADER.TRAIN_BATCH_SIZE": Map("DATALOADER.TRAIN_BATCH_SIZE"),
    "DATALOADER.TEST_BATCH_SIZE": Map("DATALOADER.TEST_BATCH_SIZE"),
    "DATALOADER.NUM_WORKERS": Map("DATALOADER.NUM_WORKERS"),
    "DATALOADER.FEATS_FOLDER": Map("DATALOADER.FEATS_FOLDER"),
    "DATALOADER.ANNO_FOLDER": Map("DATALOADER.ANNO_FOLDER"),
    "DATALOADER.ANNO_FILENAME": Drop("the training annotation file: written into DATASETS.TRAIN"),
    "DATALOADER.ANNO_FILE": Drop("video annotation file name: read by the published-layout video reader"),
    "DATALOADER.CLASS_NAME_FILE": Drop("class names come from the task's SHARED_TARGETS label set"),
    "DATALOADER.SAMPLING_WEIGHT": Map("DATALOADER.SAMPLING_WEIGHT", float),
    "DATALOADER.DATA_PERCENTAGE": Map("DATALOADER.DATA_PERCENTAGE", float),
    "DATALOADER.FRAMES_PER_CLIP": Map("DATALOADER.FRAMES_PER_CLIP"),
    "DATALOADER.STRIDE": Map("DATALOADER.STRIDE"),
    "DATALOADER.MIXUP": Map("DATALOADER.MIXUP", float),
    "DATALOADER.CUTMIX": Map("DATALOADER.CUTMIX", float),
    "DATALOADER.MIXUP_PROB": Need(_is(1.0), "mixup / CutMix apply to every batch here"),
    "DATALOADER.MIXUP_SWITCH_PROB": Need(_is(0.5), "mixup and CutMix alternate with probability 0.5 here"),
    "DATALOADER.MIXUP_MODE": Need(_is("batch"), "mixup mixes whole batches here"),
    "DATALOADER.MIXUP_LABEL_SMOOTHING": "losses",
    "DATALOADER.S3_PATH": Drop(_STORAGE), "DATALOADER.S3_ANNO_FOLDER": Drop(_STORAGE),
    "DATALOADER.ZIP_MODE": Drop(_STORAGE), "DATALOADER.CACHE_MODE": Drop(_CACHE),
    "DATALOADER.CIRCULAR_CACHE_MODE": Drop(_CACHE), "DATALOADER.CACHE_ORIGIN_IMAGE": Drop(_CACHE),
    "DATALOADER.AS_NUMPY_AS_POSSIBLE": Drop(_CACHE), "DATALOADER.SAMPLER": Drop(_CACHE),
    "DATALOADER.FILE_EXTENSION": Drop(_CACHE),
    "DATALOADER.PADDING_TO_MAX": Need(_is(False), "batches are padded to their longest sequence here"),
    "DATALOADER.UNIFIED_DATASET": Need(_is(True), "tasks are always mixed by weighted sampling here"),
    "DATALOADER.USE_WEIGHTED_SAMPLER": Need(_is(True), "tasks are drawn by DATALOADER.SAMPLING_WEIGHT here"),
    "DATALOADER.STRATEGY": Drop(_UNUSED),
    "DATALOADER.TASK_TYPE": Drop(_UNUSED),
    "DATALOADER.TRANSFORM": Drop("each task type has its published augmentation"),
    "DATALOADER.TIMESFORMER_AUG": Need(_is(True), "video clips use the published TimeSformer augmentation here"),
    "DATALOADER.SEQ_PER_SAMPLE": Drop("one caption per image per sample here"),
    "DATALOADER.MIN_SEQ_PER_SAMPLE": Drop("corpus chunking: MODEL.MAX_SEQ_LEN words per MLM sample"),
    "DATALOADER.APPEND_EOS": Need(_is(True), "MLM sentences end with <|endoftext|> here"),
    "DATALOADER.ONE_STREAM": Drop(_UNUSED),
    "DATALOADER.RANDOM_MASK": Need(_is(True), "MLM masks are drawn per sample here"),
    "DATALOADER.RANDOM_CAPTION": Drop("captions per image are drawn at random here"),
    "DATALOADER.DO_AS_GEN": Need(_is(True), "VQA is answered by scoring the answer set here"),
    "DATALOADER.SINGLE_CLASS": Drop("VQA training target: the reader's answer set"),
    "DATALOADER.MAX_FEAT_NUM": Drop("VQA question length: MODEL.MAX_SEQ_LEN"),
    "DATALOADER.MULTI_VEIW_NUM": "views", "DATALOADER.MULTI_VEIW": "views", "INFERENCE.NUM_VIEWS": "views",
    # ---- losses
    "LOSSES.NAMES": "losses", "LOSSES.LABELSMOOTHING": "losses",
    "LOSSES.LOSS_WEIGHT": Map("LOSSES.LOSS_WEIGHT", float),
    "LOSSES.REDUCTION": Need(_is("mean"), "losses are averaged over the batch here"),
    "LOSSES.LOSS_FP32": Drop(_PREC),
    # ---- inference / decoding
    "INFERENCE.NAME": "evaluator",
    "INFERENCE.VAL_ANNFILE": Map("INFERENCE.VAL_ANNFILE"),
    "INFERENCE.TEST_ANNFILE": Map("INFERENCE.TEST_ANNFILE"),
    "INFERENCE.GENERATION_MODE": Drop("published: whether the task's evaluation generates; here the task type "
                                      "decides, and DECODE_STRATEGY how"),
    "INFERENCE.ID_KEY": Drop("the reader names the id field"), "INFERENCE.VALUE": Drop("the task names its output"),
    "INFERENCE.VOCAB": Map("INFERENCE.VOCAB"),
    "INFERENCE.ITER_BASED": Need(_is(True), "schedules are counted in iterations here"),
    "DECODE_STRATEGY.NAME": "decode",
    "DECODE_STRATEGY.BEAM_SIZE": Map("DECODE_STRATEGY.BEAM_SIZE"),
    "DECODE_STRATEGY.LEN_PENALTY": Map("DECODE_STRATEGY.LEN_PENALTY", float),
    # ---- solver
    "SOLVER.NAME": Map("SOLVER.OPTIMIZER", lambda v: "Lamb" if str(v).upper() == "LAMB" else "AdamW"),
    "SOLVER.MAX_ITER": Map("SOLVER.MAX_ITER"),
    "SOLVER.CHECKPOINT_PERIOD": Map("SOLVER.CHECKPOINT_PERIOD"),
    "SOLVER.CHECKPOINT_MAX_SAVE": Map("SOLVER.CHECKPOINT_MAX_SAVE"),
    "SOLVER.EVAL_PERIOD": Map("SOLVER.EVAL_PERIOD"),
    "SOLVER.WRITE_PERIOD": Map("SOLVER.WRITE_PERIOD"),
    "SOLVER.BASE_LR": Map("SOLVER.BASE_LR", float),
    "SOLVER.ACCUM_ITER": Map("SOLVER.ACCUM_ITER"),
    "SOLVER.WEIGHT_DECAY": Map("SOLVER.WEIGHT_DECAY", float),
    "SOLVER.WEIGHT_DECAY_NORM": Map("SOLVER.WEIGHT_DECAY_NORM", float),
    "SOLVER.WEIGHT_DECAY_BIAS": "no_decay", "SOLVER.WEIGHT_DECAY_EMBEDDING": "no_decay",
    "SOLVER.BETAS": Map("SOLVER.BETAS", lambda v: [float(b) for b in v]),
    "SOLVER.EPS": Map("SOLVER.EPS", float),
    "SOLVER.GRAD_CLIP": Map("SOLVER.GRAD_CLIP", float),
    "SOLVER.GRAD_CLIP_TYPE": Need(_is("norm"), "gradients are clipped by their global norm here"),
    "SOLVER.LAYER_LR_DECAY": Map("SOLVER.LAYER_LR_DECAY", float),
    "SOLVER.BIAS_LR_FACTOR": Need(_is(1.0), "biases train at the base LR here"),
    "SOLVER.MOMENTUM": Drop("SGD only"), "SOLVER.DAMPENING": Drop("SGD only"), "SOLVER.NESTEROV": Drop("SGD only"),
    "SOLVER.TORCH_OPTIMIZER": Drop("optimizer implementation switch: torch / timm optimizers here"),
    "SOLVER.PARAMS_SEPERATE": Drop("parameter groups are always split by decay here"),
    "SOLVER.AMP_FP16": "precision", "SOLVER.APEX_FP16": "precision", "SOLVER.APEX_OPT_LEVEL": "precision",
    "SOLVER.BF16": "precision",
    "SOLVER.MIN_LOSS_SCLE": Drop("fp16 loss-scaler floor: torch.amp.GradScaler's dynamic scaling here"),
    "SOLVER.LOSS_SCALE_WINDOW": Drop("fp16 loss-scaler growth interval: torch.amp.GradScaler's default (2000)"),
    "SOLVER.FORCE_SOFTMAX_FP16": Drop(_PREC), "SOLVER.FORCE_LN_FP16": Drop(_PREC),
    "SOLVER.FORCE_NORM_FP16": Drop(_PREC), "SOLVER.FORCE_EMBED_FP16": Drop(_PREC),
    "SOLVER.FORCE_EXPERT_ADDING_FP16": Drop(_PREC), "SOLVER.FORCE_WG_RECAST": Drop(_PREC),
    "SOLVER.CHECKPOINT_MAP": Drop(_PRETRAIN_ONLY), "SOLVER.CHECKPOINT_MAPPING": Drop(_PRETRAIN_ONLY),
    "LR_SCHEDULER.NAME": Map("LR_SCHEDULER.NAME"),
    "LR_SCHEDULER.WARMUP": Map("LR_SCHEDULER.WARMUP"),
    "LR_SCHEDULER.MIN_LR": Map("LR_SCHEDULER.MIN_LR", float),
    "LR_SCHEDULER.STEPS": Map("LR_SCHEDULER.STEPS", list),
    "LR_SCHEDULER.GAMMA": Map("LR_SCHEDULER.GAMMA", float),
    # ---- label sets
    "SHARED_TARGETS": "targets",
}

PUBLISHED_KEY_MAP.update({
    "SOLVER.DEEPSPEED": Drop("a published flag no published code reads (ours: the SOLVER.DEEPSPEED sub-tree)"),
    "SOLVER.ZEROSTAGE": Drop(_UNUSED), "SOLVER.FP16": Drop("read only by the published DefaultTrainer"),
    "SOLVER.EPOCH": Drop("schedules are counted in iterations (INFERENCE.ITER_BASED)"),
    "MODEL.DEVICE": Drop("the device is picked per rank here (MODEL.DEVICE '' = cuda:<local rank> or cpu)"),
    "LR_SCHEDULER.WARMUP_FACTOR": Drop("read only by the published WarmupMultiStep; warm-up rises from 0"),
    "DATALOADER.PIN_MEM": Drop(_CACHE), "DATALOADER.PREFETCH_FACTOR": Drop(_CACHE),
    "DATALOADER.USE_CEPH": Drop(_STORAGE), "DATALOADER.TCS_CONF_PATH": Drop(_STORAGE),
    "DATALOADER.LOCAL_PREFIX": Drop(_STORAGE), "SOLVER.CHECKPOINT_CEPH_SAVE": Drop(_STORAGE),
    "SOLVER.RESUME_OPTIMIZER": Drop("main.py --resume restores the optimizer; MODEL.WEIGHTS loads weights only"),
    "SOLVER.FLOPS_PROFILER": Drop(_LOG), "SOLVER.LOG_GRAD": Drop(_LOG), "SOLVER.LOG_GRAD_ITER": Drop(_LOG),
    "SOLVER.GradHistogram": Drop(_LOG), "SOLVER.GradHistogramPeriod": Drop(_LOG), "SOLVER.GRAD_PRINT": Drop(_LOG),
    "DATALOADER.TURN_LOG": Drop(_LOG), "INFERENCE.EVAL_BS": Drop("evaluation batch: DATALOADER.TEST_BATCH_SIZE"),
    "MODEL.MODEL_EMA_FORCE_CPU": Drop("EMA placement; the EMA values are the same"),
})

# The other keys of the published defaults: a file that restates the published default changes nothing; any other
# value turns on behaviour this code does not implement, which is an error naming the key.
PUBLISHED_OTHER_DEFAULTS: Dict[str, Any] = {
    'DATASETS.TRAIN_BATCH_SIZE': 64, 'DATASETS.TEST_BATCH_SIZE': 64, 'DATALOADER.FAKE_DATA': False,
    'DATALOADER.VISUAL_FEAT': True, 'DATALOADER.RELATION_FILE': '', 'DATALOADER.GV_FEAT_FILE': '',
    'DATALOADER.ATTRIBUTE_FILE': '', 'DATALOADER.NEGATIVE_SIZE': -1, 'DATALOADER.INF_BATCH_SIZE': 200,
    'DATALOADER.USE_GLOBAL_V': True, 'DATALOADER.DO_AS_RETRIEVAL': False,
    'DATALOADER.VQA_INPUT': ['image', 'question'], 'DATALOADER.SMALL_VAL': True, 'DATALOADER.BLOCK_VQ': False,
    'DATALOADER.TWO_EOT': False, 'DATALOADER.DATA_K_SAMPLE': -1, 'DATALOADER.LOAD_INLABEL': True,
    'ENGINE.MIXUP': 0.0, 'ENGINE.CUTMIX': 0.0, 'ENGINE.MIXUP_PROB': 0.0, 'ENGINE.MIXUP_SWITCH_PROB': 0.0,
    'ENGINE.MIXUP_MODE': '', 'ENGINE.MIXUP_LABEL_SMOOTHING': 0.0, 'DATALOADER.MINI_BATCHES': 1,
    'DATALOADER.SYNC_TASK': False, 'DATALOADER.NUM_GTS': 1, 'DATALOADER.USE_SEG_ID': False,
    'MODEL.BLOCK_IMAGENET': False, 'MODEL.FAKE_PAD_TO_MAX': False, 'MODEL.PRED_DROPOUT': 0.0,
    'MODEL.V_PREDICTOR': '', 'MODEL.USE_PREDICTOR_BIAS': False, 'MODEL.SHARE_PREDICTOR_HIDDEN': False,
    'MODEL.SHARE_CLS_NAME_QUERY_EMBED': False, 'MODEL.ITM_NEG_PROB': 0.5, 'MODEL.BACKBONE': 'deit_base',
    'MODEL.CENTRAL_FRAME_INIT': False, 'MODEL.SHARE_MODULES': [], 'MODEL.TWO_LOSS': False, 'MODEL.FC_BIAS': 0.0,
    'MODEL.FC_PROMPT_WEIGHTS': 'learn', 'MODEL.FC_PROMPT_INDEX': -1, 'MODEL.GEN_MASK': True,
    'MODEL.SKIP_WORD_EMB': False, 'MODEL.TOKEN_EMBED.ELU_ALPHA': 0.5, 'MODEL.TOKEN_EMBED.TYPE_SEG_SIZE': 0,
    'MODEL.VISUAL_EMBED.ELU_ALPHA': 0.5, 'MODEL.VISUAL_EMBED.LOCATION_SIZE': 0, 'MODEL.VISUAL_EMBED.IMAGE_SIZE': 224,
    'MODEL.VIDEO_EMBED.ELU_ALPHA': 0.5, 'MODEL.VIDEO_EMBED.POS_RANDOM': True, 'MODEL.VIDEO_TOKENIZER.FPS': -1,
    'MODEL.VIDEO_TOKENIZER.NUM_FRAMES': 50, 'MODEL.VIDEO_TOKENIZER.SAMPLE_OFFSET': 0,
    'MODEL.VIDEO_TOKENIZER.MAX_FRAMES': 40, 'MODEL.NUM_CLASSES': 339, 'MODEL.PRETRAIN': False,
    'MODEL.FIX_PRETRAIN_PARAM': True, 'MODEL.USE_ORIGINAL_CODER': False,
    'MODEL.PRETRAINING.MODEL_NAME': 'bert-base-uncased', 'MODEL.PRETRAINING.FROM_PRETRAINED': 'bert-base-uncased',
    'MODEL.PRETRAINING.DO_LOWER_CASE': True, 'MODEL.BERT.V_TARGET_SIZE': 0, 'MODEL.BERT.LAYER_DROP': 0.0,
    'MODEL.BERT.V_NUM_HIDDEN_LAYERS': 6, 'MODEL.BERT.V_LAYER_DROP': 0.0, 'MODEL.BERT.NUM_UNDERSTANDING_LAYERS': 6,
    'MODEL.BERT.U_LAYER_DROP': 0.0, 'MODEL.BERT.G_LAYER_DROP': 0.0, 'MODEL.BERT.SKIP_TARGET_ENCODE': False,
    'MODEL.BERT.NORMALIZE_BEFORE': False, 'MODEL.BERT.QKV_BIAS': True, 'MODEL.FEATURE_GATHER_FORCE': False,
    'MODEL.TRANSFORM': True, 'MODEL.SwitchParamsInit': False, 'MODEL.TimmParamsInit': False,
    'MODEL.MOCOv3ParamsInit': False, 'MODEL.CHECKPOINT_FILETER_VIDEO': True, 'MODEL.TimmParamsInitSTD': 0.02,
    'MODEL.TimmParamsINIT_EMBEDDING_STD': 0.02, 'MODEL.BW_WORD_ALONE': False, 'MODEL.BW_EMBED_SPE': True,
    'MODEL.WORD_SEPERATE': True, 'MODEL.BW_OWD_EMBED': False, 'MODEL.TEXT_VISUAL_SEPARATE': False,
    'MODEL.POS_BEFORE': True, 'MODEL.LN_FP32': False, 'MODEL.MASK_RAND': False, 'MODEL.MASK_RATIO': 0.25,
    'MODEL.MIXUP_ALIGN': False, 'MODEL.LAYER_TOKEN_MASK': False, 'MODEL.LAYER_MASK_IDX': [4],
    'MODEL.LAYER_MASK_RATIO': [0.25], 'MODEL.TOKEN_EMBED_COPY': False, 'MODEL.TOKEN_EMBED_VALID_END': 128,
    'SOLVER.PARAMS_GROUP': False, 'SOLVER.WG_LR_FACTOR': 1.0, 'SOLVER.LR_DECAY': 0.0,
    'SOLVER.WEIGHT_DECAY_NORMBIAS_WEIGHT': True, 'SOLVER.WEIGHT_DECAY_WG': 0.0, 'SOLVER.OUTPUTPROJ_NOWD': False,
    'SOLVER.INITIAL_ACCUMULATOR_VALUE': 0.0, 'SOLVER.ALPHA': 0.99, 'SOLVER.AMSGRAD': False, 'SOLVER.CENTERED': False,
    'SOLVER.NORM_TYPE': 2.0, 'SOLVER.COMPUTE_MOE_DECISION': False, 'SOLVER.APEX_MASTER_WEIGHTS': True,
    'SOLVER.FUSED_LAYERNORM': False, 'SOLVER.RESUME_TAU': True, 'SOLVER.BALANCE_LOSSESS': False,
    'SOLVER.BALANCE_LOSSESS_WEIGHT': 0.01, 'SOLVER.CONSISTENCE_LOSSESS': 0.01, 'SOLVER.DIVEGENCE_LOSSESS': 0.01,
    'SOLVER.WORD_BALANCE_LOSSESS': False, 'SOLVER.IMPORTANCE_LOSS': False, 'SOLVER.AUGLOSS': False,
    'SOLVER.AUGLOSS_START': -1, 'SOLVER.AUGLOSS_INTERVAL': -1, 'SOLVER.AUGLOSS_ENDITER': -1,
    'SOLVER.CROSS_LOSS': False, 'SOLVER.FORCE_TEMP_FP16': False, 'LR_SCHEDULER.STEP_SIZE': 3,
    'LR_SCHEDULER.MODEL_SIZE': -1, 'LR_SCHEDULER.FACTOR': 1.0, 'LR_SCHEDULER.WARMUP_METHOD': 'linear',
    'LR_SCHEDULER.WARMUPTYPE': 'linear', 'LR_SCHEDULER.MILESTONES': [], 'LOSSES.MARGIN': 0.2,
    'LOSSES.MAX_VIOLATION': True, 'SCORER.NAME': '', 'SCORER.TYPES': [''], 'SCORER.WEIGHTS': [1.0],
    'SCORER.GT_PATH': 'coco_train_gts.pkl', 'SCORER.CIDER_CACHED': 'coco_train_cider.pkl', 'SCORER.EOS_ID': 0,
    'INFERENCE.VAL_EVAL_START': -1, 'INFERENCE.TEST_EVAL_START': -1, 'MOE.USE_RTS': True, 'MOE.KV_SHARED': False,
    'MOE.TASK_MOE': False, 'MOE.CUSTOM_MOE': False, 'MOE.GATE_SOURCE': 'spe', 'MOE.LAUX_CONFIG': '',
    'MOE.LAUX_ONEHOT': '', 'MOE.LAUX_TYPE': 'std', 'MOE.WORD_LAUX': 'even', 'MOE.ATTENTION_OUT': 'mean',
    'MOE.WORD_EXPERT_REGULARIZER': False, 'MOE.MOE_LAYER_START_IDX': -1, 'MOE.MOE_LAYER_END_IDX': 999,
    'MOE.GATE_TYPE': 'deepspeed', 'MOE.LN_MOE': False, 'MOE.FFN_SA_SHARE_GATE': False, 'MOE.FFN_MOE_SEPARATE': False,
    'MOE.MERGE_EXPERTS': False, 'MOE.TAG_Transform_ACT': False, 'MOE.TAG_Transform_ALONE': False,
    'MOE.NOISE_STD': 1.0,
}

# Published dataset classes (DATASETS.TRAIN / VAL / TEST) -> our split names (the reader's file patterns).
PUBLISHED_SPLITS: Dict[str, Dict[str, str]] = {
    "ImageNetDataset": {"TRAIN": "train", "VAL": "val", "TEST": "val"},
    "ImageNet22KDataset": {"TRAIN": "train", "VAL": "val", "TEST": "val"},
    "ImageTextPairDataset": {"TRAIN": "train", "VAL": "val", "TEST": "test"},
    "GeneralCorpusDataset": {"TRAIN": "train", "VAL": "val", "TEST": "test"},
    "VideoDataSet": {"TRAIN": "train", "VAL": "val", "TEST": "test"},
    "MSVDDataset": {"TRAIN": "train", "VAL": "val", "TEST": "test"},
    "MSRVTTDataset": {"TRAIN": "train", "VAL": "val", "TEST": "test"},
    "VQADataset": {"TRAIN": "train", "VAL": "val", "TEST": "test"},
    "GLUEDataset": {"TRAIN": "train", "VAL": "dev", "TEST": "test"},
}
# Published evaluators: ours is picked by the task type ("" = its default).
PUBLISHED_EVALUATORS = ("COCOEvaler", "ImageNetEvaler", "RetrievalEvaler", "VQAEvaler", "MiTEvaler", "GLUEEvaler",
                        "K400Evaler", "")
# Published task types whose name differs here (the rest are the same names).
PUBLISHED_TASK_TYPES = {"caption": "image_caption"}
PUBLISHED_DECODERS = {"CaptionBeamSearcherV3": "beam", "none": "", "": ""}
_PUBLISHED_MARKERS = ("ENGINE", "find_unused_parameters", "SCHEDULED_SAMPLING", "SCORER")
_PUBLISHED_SUBKEYS = (("SOLVER", "NAME"), ("SOLVER", "AMP_FP16"), ("MODEL", "ENCODER_DIM"), ("MODEL", "TOKEN_EMBED"),
                      ("MODEL", "VIDEO_EMBED"), ("MODEL", "PREDICTOR"))


# --------------------------------------------------------------------------------------------------- loading
def load_published_chain(filename: str, _stack: Sequence[str] = ()) -> Dict[str, Any]:
    """A published file merged onto its ``_BASE_`` chain as published yacs does (dicts merge, lists replace)."""
    filename = os.path.abspath(filename)
    data = read_config_mapping(filename, list(_stack))
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{filename}: {BASE_KEY} of a published config is one path, got {base!r}")
    if not os.path.isabs(base):
        base = os.path.join(os.path.dirname(filename), base)
    merged = load_published_chain(base, list(_stack) + [filename])
    _replace_merge(merged, data)
    return merged


def _replace_merge(dst: Dict[str, Any], src: Dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _replace_merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


def looks_published(data: Dict[str, Any]) -> bool:
    """Whether a loaded (``_BASE_``-resolved) config is in the published format."""
    if any(k in data for k in _PUBLISHED_MARKERS):
        return True
    if any(isinstance(data.get(a), dict) and b in data[a] for a, b in _PUBLISHED_SUBKEYS):
        return True
    tasks = data.get("TASKS") or []
    return any(isinstance(t, dict) and str((t.get("DATASETS") or {}).get("TRAIN", "")) in PUBLISHED_SPLITS
               for t in tasks)


def is_published_file(filename: str) -> bool:
    """Whether ``filename`` (with its ``_BASE_`` chain, read the published way) is a published config."""
    try:
        return looks_published(load_published_chain(filename))
    except ConfigError:
        return False


# ------------------------------------------------------------------------------------------------ conversion
@dataclass
class ConversionReport:
    source: str
    entries: List[Tuple[str, str, str]] = field(default_factory=list)  # (published key, status, detail)
    warnings: List[str] = field(default_factory=list)

    def add(self, key: str, status: str, detail: str) -> None:
        self.entries.append((key, status, detail))

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def lines(self) -> List[str]:
        return [f"{key}: {status} {detail}".rstrip() for key, status, detail in self.entries]

    def summary(self) -> str:
        """A one-screen summary: counts, the names of the dropped keys, then the warnings; every key with its
        reason: ``tools/convert_config.py IN OUT``."""
        mapped = [e for e in self.entries if e[1] == "mapped"]
        same = sorted({k.split(".")[-1] for k, st, d in self.entries if st != "mapped" and d.startswith("(= ")})
        dropped = sorted({k.split(".")[-1] for k, st, d in self.entries if st != "mapped" and not d.startswith("(= ")})
        out = [f"published config {self.source}: converted onto our tree ({len(mapped)} keys mapped, "
               f"{len(self.entries) - len(mapped)} dropped; every key with its reason: tools/convert_config.py)",
               f"  same behaviour here (checked): {len(same)} keys",
               "  no effect here: " + textwrap.shorten(", ".join(dropped), width=400, placeholder=" ...")]
        out += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(out)


class _Converter:
    def __init__(self, source: str, our_defaults):
        self.source = source
        self.ours = our_defaults
        self.report = ConversionReport(source)
        self.out: Dict[str, Any] = {}

    # -- helpers
    def fail(self, key: str, value: Any, what_to_do: str) -> None:
        raise ConfigError(f"{self.source}: published key {key} = {value!r} cannot be converted: {what_to_do}")

    def our_default(self, key: str) -> Any:
        node = self.ours
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return _MISSING
            node = node[part]
        return node

    @staticmethod
    def put(dst: Dict[str, Any], key: str, value: Any) -> None:
        parts = key.split(".")
        for part in parts[:-1]:
            dst = dst.setdefault(part, {})
        dst[parts[-1]] = value

    def write(self, dst: Dict[str, Any], key: str, value: Any, *, is_task: bool = False) -> None:
        """Write ``value`` for our ``key`` where it differs from the value it would otherwise have: our default,
        or in a task node the converted global value."""
        default = self.our_default(key)
        if default is _MISSING:
            raise KeyError(key)
        if is_task:
            node = self.out
            for part in key.split("."):
                node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
            default = default if node is _MISSING else node
        if isinstance(default, tuple):
            default = list(default)
        if not _same(value, default):
            self.put(dst, key, value)

    # -- one node (the global tree or one task)
    def convert_node(self, node: Dict[str, Any], dst: Dict[str, Any], prefix: str, is_task: bool) -> None:
        flat = _flatten(node)
        special = set()
        for key, value in flat.items():
            shown = prefix + key
            rule = _rule_for(key)
            if rule is None:
                self.fail(shown, value, "unknown published key; add a rule to PUBLISHED_KEY_MAP "
                                        "(uniperceiver/config/published.py) or remove it from the file")
            if isinstance(rule, str):
                special.add(rule)
                continue
            self.apply(rule, shown, key, value, dst, is_task)
        # keys a published task node does not set take the published defaults (a task node there is raw)
        if is_task:
            for key in TASK_DEFAULT_KEYS:
                if key not in flat:
                    rule, default = _rule_for(key), PUBLISHED_DEFAULTS[key]
                    self.write(dst, rule.key, rule.fn(default) if rule.fn else default, is_task=True)
        for name in sorted(special):
            getattr(self, f"_convert_{name}")(flat, dst, prefix, is_task)

    def apply(self, rule, shown: str, key: str, value: Any, dst: Dict[str, Any], is_task: bool) -> None:
        if isinstance(rule, Map):
            value = _number(value)
            new = rule.fn(value) if rule.fn else value
            self.write(dst, rule.key, new, is_task=is_task)
            self.report.add(shown, "mapped", f"-> {rule.key} = {new!r}")
        elif isinstance(rule, Drop):
            self.report.add(shown, "dropped", rule.reason)
        elif isinstance(rule, Need):
            if not any(_same(_number(value), v) for v in rule.values):
                self.fail(shown, value, f"{rule.what_to_do}; allowed: {', '.join(repr(v) for v in rule.values)}")
            self.report.add(shown, "dropped", f"(= {value!r}) {rule.what_to_do}")
        elif isinstance(rule, Pending):
            if self.our_default(rule.key) is not _MISSING:
                self.write(dst, rule.key, _number(value), is_task=is_task)
                self.report.add(shown, "mapped", f"-> {rule.key} = {value!r}")
            else:
                note = f"not in this tree yet ({rule.owner})"
                self.report.add(shown, "dropped", note)
                if rule.ours is None or not _same(_number(value), rule.ours):
                    self.report.warn(f"{shown} = {value!r} ignored: {note}")

    # -- keys converted together
    def _convert_prompt(self, flat, dst, prefix, is_task):
        enabled = bool(flat.get("MODEL.PROMPT", False))
        for key in [k for k in flat if k.startswith("MODEL.PROMPT_EMBED.") or k in
                    ("MODEL.PROMPT", "MODEL.PROMPT_PARAM", "MODEL.FC_PROMPT", "MODEL.FC_PROMPT_OUT")]:
            self.report.add(prefix + key, "mapped" if enabled else "dropped",
                            "-> MODEL.PROMPT.* / MODEL.TRAINABLE (prompt tuning)" if enabled else "prompt tuning off")
        if not enabled:
            return
        self.put(dst, "MODEL.PROMPT.ENABLED", True)
        self.put(dst, "MODEL.PROMPT.NUM_TOKENS", int(flat.get("MODEL.PROMPT_EMBED.INPUT_DEEP_PROMPT_LENGTH", 10)))
        # PROMPT_PARAM: name fragments of the parameters that train (<|spe|> bias, deep prompts, prompt head,
        # norms) -> our names: every prompt parameter has "prompt" in its name, the LayerNorms "norm"
        self.put(dst, "MODEL.TRAINABLE", ["prompt", "norm"])
        self.put(dst, "MODEL.WEIGHTS_IGNORE", ["prompt"])  # pre-trained weights have no prompt parameters
        if flat.get("MODEL.FC_PROMPT"):
            self.put(dst, "MODEL.PROMPT.FC_WEIGHT", 0.5)
            self.report.warn(f"{prefix}MODEL.FC_PROMPT: the published linear class head (zero-init, blended by a "
                             "learned weight) is approximated by our prompt head with MODEL.PROMPT.FC_WEIGHT 0.5")

    def _convert_predictor(self, flat, dst, prefix, is_task):
        name = flat["MODEL.PREDICTOR"]
        key = prefix + "MODEL.PREDICTOR"
        if name in ("EmbedClsAsRetrievalPredictor", ""):
            self.report.add(key, "dropped", f"(= {name!r}) the similarity predictor is the one here")
        elif name == "MLPClassifer":  # one published debug config (VQA with an MLP answer head)
            self.report.add(key, "dropped", "the published MLP classifier head is not implemented here")
            self.report.warn(f"{key} = 'MLPClassifer' ignored: this task scores by similarity to its targets")
        else:
            self.fail(key, name, "unknown published predictor; the similarity predictor is the only one here")

    def _convert_views(self, flat, dst, prefix, is_task):
        """Test-time views of a video: the published DATALOADER.MULTI_VEIW_NUM (layouts v1 / v2: that many clips
        of one span, interleaved) wins over INFERENCE.NUM_VIEWS; ours are evenly spaced clips (evaluation only)."""
        views = int(flat.get("INFERENCE.NUM_VIEWS", PUBLISHED_DEFAULTS["INFERENCE.NUM_VIEWS"]))
        multi = int(flat.get("DATALOADER.MULTI_VEIW_NUM", 1))
        if multi > 1 and flat.get("DATALOADER.MULTI_VEIW", "v0") in ("v1", "v2"):
            views = multi
            self.report.warn(f"{prefix}DATALOADER.MULTI_VEIW_NUM {multi} ({flat.get('DATALOADER.MULTI_VEIW')}): "
                             f"evaluated as {multi} evenly spaced clips (INFERENCE.NUM_VIEWS)")
        self.write(dst, "INFERENCE.NUM_VIEWS", views, is_task=is_task)
        for key in ("DATALOADER.MULTI_VEIW_NUM", "DATALOADER.MULTI_VEIW", "INFERENCE.NUM_VIEWS"):
            if key in flat:
                self.report.add(prefix + key, "mapped", f"-> INFERENCE.NUM_VIEWS = {views}")

    def _convert_moe_gate(self, flat, dst, prefix, is_task):
        key = prefix + "MOE.TAG_Transform"
        if not flat["MOE.TAG_Transform"]:
            self.fail(key, False, "the published gate without its attribute transform is not implemented here; "
                                  "MOE.TAG_Transform True (every published MoE config) maps to "
                                  "MOE.ATTRIBUTE_GATE segment_row")
        self.write(dst, "MOE.ATTRIBUTE_GATE", "segment_row", is_task=is_task)
        self.report.add(key, "mapped", "-> MOE.ATTRIBUTE_GATE = 'segment_row' (the published gate)")

    def _convert_moe_location(self, flat, dst, prefix, is_task):
        loc = flat["MOE.MOE_EXPERT_LOCATION"]
        if loc == "none":
            self.put(dst, "MOE.MOE", False)
            self.report.add(prefix + "MOE.MOE_EXPERT_LOCATION", "mapped", "-> MOE.MOE = False (no expert layers)")
        else:
            self.write(dst, "MOE.MOE_EXPERT_LOCATION", loc)
            self.report.add(prefix + "MOE.MOE_EXPERT_LOCATION", "mapped", f"-> MOE.MOE_EXPERT_LOCATION = {loc!r}")

    def _convert_split(self, flat, dst, prefix, is_task):
        for split in ("TRAIN", "VAL", "TEST"):
            key = f"DATASETS.{split}"
            if key not in flat:
                continue
            cls = flat[key]
            if cls in ("", None):
                self.report.add(prefix + key, "dropped", "no split")
                continue
            if cls not in PUBLISHED_SPLITS:
                self.fail(prefix + key, cls, f"unknown published dataset class; known: {', '.join(PUBLISHED_SPLITS)} "
                                             "(add it to PUBLISHED_SPLITS)")
            name = PUBLISHED_SPLITS[cls][split]
            if split == "TRAIN" and flat.get("DATALOADER.ANNO_FILENAME"):
                name = str(flat["DATALOADER.ANNO_FILENAME"])
            self.put(dst, key, name)
            self.report.add(prefix + key, "mapped", f"-> {key} = {name!r} (published dataset class {cls})")

    def _convert_losses(self, flat, dst, prefix, is_task):
        names = flat.get("LOSSES.NAMES", PUBLISHED_DEFAULTS["LOSSES.NAMES"])
        mixup = _number(flat.get("DATALOADER.MIXUP", 0.0)) > 0 or _number(flat.get("DATALOADER.CUTMIX", 0.0)) > 0
        known = {"CrossEntropy", "LabelSmoothingCrossEntropy", "SoftTargetCrossEntropy", "Accuracy", ""}
        bad = [n for n in names if n not in known]
        if bad:
            self.fail(prefix + "LOSSES.NAMES", names, f"loss {bad[0]!r} does not exist here; the task type owns "
                                                      "its loss (cross-entropy over its candidates)")
        if mixup:  # soft targets: the published MIXUP_LABEL_SMOOTHING is folded in (ours: LOSSES.LABELSMOOTHING)
            smoothing = _number(flat.get("DATALOADER.MIXUP_LABEL_SMOOTHING", 0.0))
        elif "LabelSmoothingCrossEntropy" in names:
            smoothing = _number(flat.get("LOSSES.LABELSMOOTHING", PUBLISHED_DEFAULTS["LOSSES.LABELSMOOTHING"]))
        else:
            smoothing = 0.0
        if is_task or smoothing:
            self.write(dst, "LOSSES.LABELSMOOTHING", float(smoothing), is_task=is_task)
        for key in ("LOSSES.NAMES", "LOSSES.LABELSMOOTHING", "DATALOADER.MIXUP_LABEL_SMOOTHING"):
            if key in flat:
                self.report.add(prefix + key, "mapped", f"-> LOSSES.LABELSMOOTHING = {float(smoothing)!r} "
                                                        f"(losses {names}; 'Accuracy' is a logged metric)")

    def _convert_evaluator(self, flat, dst, prefix, is_task):
        name = flat["INFERENCE.NAME"]
        if name not in PUBLISHED_EVALUATORS:
            self.fail(prefix + "INFERENCE.NAME", name, f"unknown published evaluator; known: "
                                                      f"{', '.join(e for e in PUBLISHED_EVALUATORS if e)}")
        self.report.add(prefix + "INFERENCE.NAME", "mapped", "-> INFERENCE.NAME '' (the task type's evaluator)")

    def _convert_decode(self, flat, dst, prefix, is_task):
        name = flat["DECODE_STRATEGY.NAME"]
        if name not in PUBLISHED_DECODERS:
            self.fail(prefix + "DECODE_STRATEGY.NAME", name, f"unknown published decoder; known: "
                                                            f"{', '.join(k for k in PUBLISHED_DECODERS if k)}")
        mode = PUBLISHED_DECODERS[name]
        if mode:
            self.put(dst, "DECODE_STRATEGY.NAME", mode)
        self.report.add(prefix + "DECODE_STRATEGY.NAME", "mapped",
                        f"-> DECODE_STRATEGY.NAME = {mode!r}" if mode else "greedy (our default)")

    def _convert_no_decay(self, flat, dst, prefix, is_task):
        norm = _number(self.effective.get("SOLVER.WEIGHT_DECAY_NORM", 0.0))
        bias = _number(self.effective["SOLVER.WEIGHT_DECAY_BIAS"])
        if not _same(bias, norm):
            self.fail("SOLVER.WEIGHT_DECAY_BIAS", bias, f"biases share SOLVER.WEIGHT_DECAY_NORM ({norm}) here; "
                                                       "set WEIGHT_DECAY_BIAS equal to it")
        if "SOLVER.WEIGHT_DECAY_BIAS" in flat:
            self.report.add(prefix + "SOLVER.WEIGHT_DECAY_BIAS", "mapped", f"-> SOLVER.WEIGHT_DECAY_NORM ({norm})")
        emb = float(_number(self.effective["SOLVER.WEIGHT_DECAY_EMBEDDING"]))
        self.write(dst, "SOLVER.WEIGHT_DECAY_EMBEDDING", emb)
        if "SOLVER.WEIGHT_DECAY_EMBEDDING" in flat:
            self.report.add(prefix + "SOLVER.WEIGHT_DECAY_EMBEDDING", "mapped",
                            f"-> SOLVER.WEIGHT_DECAY_EMBEDDING = {emb}")

    def _convert_precision(self, flat, dst, prefix, is_task):
        eff = self.effective
        amp, apex = bool(eff.get("SOLVER.AMP_FP16")), bool(eff.get("SOLVER.APEX_FP16"))
        bf16 = bool(eff.get("SOLVER.BF16"))
        if apex:
            self.report.warn(f"SOLVER.APEX_FP16 (APEX opt level {eff.get('SOLVER.APEX_OPT_LEVEL')}) runs as native "
                             "fp16 autocast with a GradScaler (APEX is not used)")
        if amp or apex:
            self.put(dst, "SOLVER.AMP.ENABLED", True)
            self.put(dst, "SOLVER.AMP.DTYPE", "fp16")
        elif bf16:
            self.put(dst, "SOLVER.AMP.ENABLED", True)
            self.put(dst, "SOLVER.AMP.DTYPE", "bf16")
        mode = "fp16" if (amp or apex) else "bf16" if bf16 else "fp32"
        for key in ("SOLVER.AMP_FP16", "SOLVER.APEX_FP16", "SOLVER.APEX_OPT_LEVEL", "SOLVER.BF16"):
            if key in flat:
                self.report.add(prefix + key, "mapped", f"-> SOLVER.AMP ({mode})")

    def _convert_targets(self, flat, dst, prefix, is_task):
        pass  # converted in convert() (a list of label sets)


_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) is type(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(a)), abs(float(b)))
    return a == b


def _number(value: Any) -> Any:
    """Published ``1e-6`` strings (yacs reads them as floats) as floats; anything else unchanged."""
    if isinstance(value, str) and _FLOAT_TEXT.match(value):
        return float(value)
    if isinstance(value, list):
        return [_number(v) for v in value]
    return value


def _flatten(node: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in node.items():
        if isinstance(v, dict) and (prefix + k) not in PUBLISHED_KEY_MAP:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _rule_for(key: str):
    if key in PUBLISHED_KEY_MAP:
        return PUBLISHED_KEY_MAP[key]
    if key.startswith("MODEL.PROMPT_EMBED."):
        return "prompt"
    if key in PUBLISHED_OTHER_DEFAULTS:
        return Need((PUBLISHED_OTHER_DEFAULTS[key],), "the published default is the only value this code implements")
    return None


def convert_published(filename: str, our_defaults=None) -> Tuple[Dict[str, Any], ConversionReport]:
    """``(our config dict, report)`` of a published config file; ConfigError naming file and key on failure."""
    from .defaults import _C

    source = os.path.abspath(filename)
    raw = load_published_chain(source)
    ours = our_defaults if our_defaults is not None else _C.clone()
    conv = _Converter(source, ours)
    glob = {k: v for k, v in raw.items() if k not in ("TASKS", "SHARED_TARGETS")}
    conv.effective = dict(PUBLISHED_DEFAULTS)
    conv.effective.update({k: _number(v) for k, v in _flatten(glob).items()})
    out: Dict[str, Any] = conv.out
    # 1. the global tree: every published effective value of a mapped key (published defaults included)
    for key, default in PUBLISHED_DEFAULTS.items():
        rule = PUBLISHED_KEY_MAP.get(key)
        per_task = key.split(".")[0] in TASK_KEYS and (not key.startswith("MODEL.") or key in TASK_DEFAULT_KEYS
                                                           or key in ("MODEL.LABELS_NUM", "MODEL.TEMP_NAME"))
        if isinstance(rule, Map) and not per_task and key not in _flatten(glob):
            conv.write(out, rule.key, rule.fn(default) if rule.fn else default)
    conv.write(out, "LR_SCHEDULER.WARMUP_FACTOR", 0.0)  # published warm-up rises linearly from 0
    # conventions of the published model that are no config keys there (checkpoint/official.py)
    conv.write(out, "MODEL.BERT.LAYER_NORM_EPS", 1e-5)
    conv.write(out, "MODEL.LOGIT_SCALE_NAMES", list(PUBLISHED_LOGIT_SCALE_NAMES))
    for a, b in (("MODEL.ENCODER_DIM", "MODEL.BERT.HIDDEN_SIZE"), ("MODEL.TOKEN_EMBED.DIM", "MODEL.BERT.HIDDEN_SIZE"),
                 ("MODEL.VIDEO_EMBED.PATCH_SIZE_S", "MODEL.PATCH_SIZE"),
                 ("MODEL.VISUAL_EMBED.PATCH_SIZE", "MODEL.PATCH_SIZE")):
        if a in conv.effective and not _same(conv.effective[a], conv.effective[b]):
            conv.fail(a, conv.effective[a], f"must equal {b} ({conv.effective[b]}) here")
    conv.convert_node(glob, out, "", is_task=False)
    flat_glob = _flatten(glob)
    if not any(k in flat_glob for k in ("SOLVER.AMP_FP16", "SOLVER.APEX_FP16", "SOLVER.BF16")):
        conv._convert_precision({}, out, "", False)
    if not any(k in flat_glob for k in ("SOLVER.WEIGHT_DECAY_BIAS", "SOLVER.WEIGHT_DECAY_EMBEDDING")):
        conv._convert_no_decay({}, out, "", False)  # the published defaults still apply
    # 2. label sets
    targets = []
    for entry in raw.get("SHARED_TARGETS") or []:
        if not isinstance(entry, dict) or not entry.get("NAME"):
            conv.fail("SHARED_TARGETS", entry, "every label set needs a NAME")
        cfg = entry.get("SHARED_TARGETS_CFG") or {}
        targets.append({"NAME": entry["NAME"], "SHARED_TARGETS_CFG": {
            "FILE_PATH": cfg.get("FILE_PATH", ""), "DISTRIBUTED": bool(cfg.get("DISTRIBUTED", False))}})
        conv.report.add(f"SHARED_TARGETS.{entry['NAME']}", "mapped", "-> SHARED_TARGETS (FILE_PATH, DISTRIBUTED)")
    if targets:
        out["SHARED_TARGETS"] = targets
    # 3. tasks
    tasks = []
    for task in raw.get("TASKS") or []:
        if not isinstance(task, dict) or not task.get("NAME"):
            conv.fail("TASKS", task, "every task needs a NAME")
        name = str(task["NAME"])
        body = {k: v for k, v in task.items() if k != "NAME"}
        unknown = [k for k in body if k not in TASK_KEYS]
        if unknown:
            conv.fail(f"TASKS.{name}.{unknown[0]}", body[unknown[0]], f"a task node holds only {', '.join(TASK_KEYS)}")
        tt = (body.get("DATASETS") or {}).get("TASK_TYPE", "")
        if tt in PUBLISHED_TASK_TYPES:
            body.setdefault("DATASETS", {})["TASK_TYPE"] = PUBLISHED_TASK_TYPES[tt]
        node: Dict[str, Any] = {"NAME": name}
        conv.convert_node(body, node, f"TASKS.{name}.", is_task=True)
        tasks.append(node)
    if tasks:
        out["TASKS"] = tasks
    return out, conv.report
