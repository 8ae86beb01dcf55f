"""The default config tree: the single source of truth for every key uniperceiver reads.

Every key has a comment saying what it means.  Key names follow the published Uni-Perceiver configs
wherever a key means the same thing (README lists the few renames).

Task nodes.  ``TASKS`` is a list of task nodes, each with a unique ``NAME``.  A task node may set any key
of the sub-trees listed in ``TASK_SUBTREES`` (``DATASETS``, ``DATALOADER``, ``MODEL``, ``LOSSES``,
``INFERENCE``, ``DECODE_STRATEGY``); every key it does not set is inherited from the global tree.  After
``finalize`` each task node is fully expanded, so ``cfg.TASKS[i].DATALOADER.TRAIN_BATCH_SIZE`` always exists.
"""
import os

from .config import CfgNode as CN

# Sub-trees a task node may override (and inherits when it does not).
TASK_SUBTREES = ("DATASETS", "DATALOADER", "MODEL", "LOSSES", "INFERENCE", "DECODE_STRATEGY")

_C = CN()
_C.VERSION = 1

# Directory where checkpoints, logs, metrics.json, TensorBoard events and config.yaml are written.
_C.OUTPUT_DIR = "./output"
# Global random seed. < 0 draws a seed from the OS (logged so a run can be repeated).
_C.SEED = 42
# Root that relative data paths are resolved against.  Empty: the DATA_PATH environment variable, else the
# built-in demo data root (CACHE_DIR/demo), which is generated on first use.
_C.DATA_PATH = ""
# Where derived caches (encoded label sets, demo data, compiled extensions) go; never into the data folders.
# Empty: the UNIPERCEIVER_CACHE environment variable, else ~/.cache/uniperceiver.
_C.CACHE_DIR = ""
# Set CUDNN benchmark mode.
_C.CUDNN_BENCHMARK = False

# ---------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------
_C.MODEL = CN()
# Device for the model: "" picks cuda:<local rank> when CUDA is available, else cpu.
_C.MODEL.DEVICE = ""
# Registered meta architecture (MODEL_REGISTRY); "PlaceholderModel" is a tiny MLP used only by engine tests.
_C.MODEL.META_ARCHITECTURE = "UniPerceiver"
# Registered shared encoder (ENCODER_REGISTRY).
_C.MODEL.ENCODER = "UnifiedBertEncoder"
# Weights loaded (weights only) when not resuming.  Relative paths are taken as given (from the cwd).
_C.MODEL.WEIGHTS = ""
# Regexes over parameter names that may be missing from / unexpected in MODEL.WEIGHTS (new heads, prompts...).
_C.MODEL.WEIGHTS_IGNORE = []
# Regexes (re.search) over parameter names that train; empty = everything trains.  All other parameters are
# frozen (requires_grad False, left out of the optimizer); patterns matching nothing are a ConfigError.
# Prompt tuning: ["prompt"]; LoRA: ["lora_"].
_C.MODEL.TRAINABLE = []
# Shared token-embedding width is MODEL.BERT.HIDDEN_SIZE; input image side in pixels.
_C.MODEL.IMG_INPUT_SIZE = 224
# Patch size of the shared image/video patch embedding.
_C.MODEL.PATCH_SIZE = 16
# Widths of 3x3 stride-1 conv + GELU layers before the patch conv (a conv stem for small data and inputs,
# e.g. [32] for the 28 px digits benchmark); empty = the published single conv patch embedding.
_C.MODEL.PATCH_STEM_CHANNELS = []
# Most frames a video clip may have (size of the learned temporal embedding).
_C.MODEL.MAX_FRAMES = 8
# Most text tokens (size of the learned text position table).
_C.MODEL.MAX_POSITION_EMBEDDINGS = 512
# Per-task: longest text sequence the task packs (captions, MLM sentences), incl. special tokens.
_C.MODEL.MAX_SEQ_LEN = 30
# Per-task: number of candidate labels (classification); 0 = size of the target set.
_C.MODEL.LABELS_NUM = 0
# Per-task: name of the learnable logit scale this task uses (one per task family, shared by name).
_C.MODEL.TEMP_NAME = ""
# Vocabulary size of the text tokenizer (CLIP BPE 49406 + 5 special tokens).
_C.MODEL.VOCAB_SIZE = 49411
# Number of token-type ids (>= 4: 0 text, 1 image/video, 2 leading <|spe|>, 3 captioning query).
_C.MODEL.TYPE_VOCAB_SIZE = 4
# Use a frozen 2D sin-cos spatial table (published); False = learned.
_C.MODEL.POSEMBEDFIX = True
# Scale of the sin-cos grid coordinates: "160/224" makes a 14x14 grid span the coordinates of 10x10.
# A number or a fraction string "a/b" (parsed safely, never eval'ed).
_C.MODEL.POSEMBED_SCALE = 1.0
# LayerScale on the residual branches, and its initial gamma.
_C.MODEL.LAYER_SCALE = True
_C.MODEL.LAYER_SCALE_INIT = 1e-3
# Recompute block activations in backward to save memory.
_C.MODEL.ACTIVATION_CHECKPOINTING = False
# The sequence representation scored by the predictor: "spe" (the <spe> output, published) or "mean" (the mean
# output over <spe>, visual and non-padding text tokens; timm's global_pool "avg").
_C.MODEL.POOLING = "spe"
# Init std of the token table and of the <spe> vector (its table and type row); 0 = MODEL.BERT.INITIALIZER_RANGE
# (the published init).  A token std of 1.0 and a <spe> std of 1e-6 start every sequence feature from its
# content rather than from shared position / type vectors (README, "Evaluation": the zero-shot benchmark).
_C.MODEL.TOKEN_EMBED_INIT_STD = 0.0
_C.MODEL.SPE_INIT_STD = 0.0
# torch.compile (engine.defaults.maybe_compile; the first steps compile): "off"; "blocks": each encoder block
# compiled with dynamic shapes (one graph for every task's sequence length); "model": the whole model (one
# graph per task input signature: recompiles per task).  docs/performance.md has the measurements.
_C.MODEL.COMPILE = "off"
# Training samples this many vocabulary negatives per step for vocabulary targets (0 = all words).
_C.MODEL.VOCAB_NEGATIVES = 0
# Initial logit scale exp(s) = 1 / 0.07, and its clamp.
_C.MODEL.LOGIT_SCALE_INIT = 14.285714285714286
_C.MODEL.LOGIT_SCALE_MAX = 100.0
# Keep an exponential moving average of the weights (engine/ema.py), saved as "model_ema" in checkpoints and
# evaluated with main.py --eval-only --eval-ema.
_C.MODEL.MODEL_EMA = False
# EMA decay per optimizer step: ema = decay * ema + (1 - decay) * weights.
_C.MODEL.MODEL_EMA_DECAY = 0.9999

_C.MODEL.BERT = CN()
_C.MODEL.BERT.HIDDEN_SIZE = 192
_C.MODEL.BERT.NUM_HIDDEN_LAYERS = 12
_C.MODEL.BERT.NUM_ATTENTION_HEADS = 3
_C.MODEL.BERT.INTERMEDIATE_SIZE = 768
_C.MODEL.BERT.HIDDEN_ACT = "gelu"
_C.MODEL.BERT.HIDDEN_DROPOUT_PROB = 0.0
_C.MODEL.BERT.ATTENTION_PROBS_DROPOUT_PROB = 0.0
# Stochastic depth rate of the last block (linearly increasing from 0).
_C.MODEL.BERT.DROP_PATH_PROB = 0.0
_C.MODEL.BERT.LAYER_NORM_EPS = 1e-6
# Std of the truncated-normal weight init.
_C.MODEL.BERT.INITIALIZER_RANGE = 0.02

# Prompt tuning (Uni-Perceiver's cheap adaptation).
_C.MODEL.PROMPT = CN()
_C.MODEL.PROMPT.ENABLED = False
# Learnable deep prompt tokens per layer.
_C.MODEL.PROMPT.NUM_TOKENS = 10
# Weight w of the linear head blended with the similarity score: logits = scale * ((1 - w) * cos + w * head);
# 0 = no head.  The head scores (W q + b) . target with W initialised to the identity.
_C.MODEL.PROMPT.FC_WEIGHT = 0.0

# LoRA low-rank adapters on the encoder's linear layers (uniperceiver/modeling/lora.py).  Train only them with
# MODEL.TRAINABLE ["lora_"]; tools/merge_lora.py folds them into a plain checkpoint.
_C.MODEL.LORA = CN()
_C.MODEL.LORA.ENABLED = False
# Rank r of the update B A (A: [r, in], B: [out, r]).
_C.MODEL.LORA.RANK = 8
# The update is scaled by ALPHA / RANK.
_C.MODEL.LORA.ALPHA = 16.0
# Regex (re.search) over module names of the nn.Linear layers that get adapters.
_C.MODEL.LORA.TARGET = r"encoder\.blocks\.\d+\.attn\.(qkv|proj)$"

# ---------------------------------------------------------------------------------------------------------
# Mixture of experts (Uni-Perceiver-MoE)
# ---------------------------------------------------------------------------------------------------------
_C.MOE = CN()
# Turn the shared encoder into Uni-Perceiver-MoE.
_C.MOE.MOE = False
# Routing: "attribute" (gate reads token attributes, the paper) or "token" (gate reads token content).
_C.MOE.MOE_TYPE = "attribute"
_C.MOE.NUM_EXPERTS = 8
_C.MOE.TOP_K = 2
# Layers with experts: "odd", "even" or "all".
_C.MOE.MOE_EXPERT_LOCATION = "odd"
# Gate noise in training: "" (none), "Jitter" or "RSample".
_C.MOE.NOISY_GATE_POLICY = ""
_C.MOE.NOISE_STD = 1.0
# Token routing capacity factors.
_C.MOE.CAPACITY_FACTOR = 1.0
_C.MOE.EVAL_CAPACITY_FACTOR = 1.0
# Minimum slots per expert (token routing); the deepspeed backend asserts when tokens < this, keep it small.
_C.MOE.MIN_CAPACITY = 4
# Width of the learned attribute embedding the attribute gate reads.
_C.MOE.GATE_DIM = 64
# Weight of the load-balancing loss (token routing), added to the step's losses as ``loss_moe_aux``.
_C.MOE.AUX_LOSS_WEIGHT = 0.01
# "native" (pure PyTorch) or "deepspeed" (deepspeed.moe.layer.MoE).
_C.MOE.BACKEND = "native"
# Expert-parallel world size (deepspeed backend).
_C.MOE.EP_SIZE = 1

# ---------------------------------------------------------------------------------------------------------
# Datasets (per task)
# ---------------------------------------------------------------------------------------------------------
_C.DATASETS = CN()
# Registered task family that reads this task: image_classification, image_retrieval, image_caption, text_mlm...
_C.DATASETS.TASK_TYPE = ""
# Dataset reader name (DATASET_REGISTRY), e.g. "imagenet", "coco_caption", "jsonl_pairs", "text_corpus".
_C.DATASETS.DATASET_NAME = ""
# Split names (or annotation files) read for training / validation / test; "" = none.
_C.DATASETS.TRAIN = ""
_C.DATASETS.VAL = ""
_C.DATASETS.TEST = ""
# Name of the SHARED_TARGETS label set this task scores against ("" = targets come from the batch).
_C.DATASETS.TARGET_SET = []

# ---------------------------------------------------------------------------------------------------------
# Data loading (per task)
# ---------------------------------------------------------------------------------------------------------
_C.DATALOADER = CN()
_C.DATALOADER.TRAIN_BATCH_SIZE = 4
_C.DATALOADER.TEST_BATCH_SIZE = 32
_C.DATALOADER.NUM_WORKERS = 0
# Training images kept decoded in memory, in MiB per loader process (0: decode every time).  Small datasets
# (the demo digits: ~10 MiB) then decode each file once; larger ones fill the budget and decode the rest.
_C.DATALOADER.IMAGE_CACHE_MB = 0
# Image / feature root, relative to DATA_PATH.
_C.DATALOADER.FEATS_FOLDER = ""
# Annotation root, relative to DATA_PATH.
_C.DATALOADER.ANNO_FOLDER = ""
# Relative weight of this task when a task is drawn for a step.
_C.DATALOADER.SAMPLING_WEIGHT = 1.0
# "independent": each rank draws its own task (published); "synced": all ranks draw the same task.
_C.DATALOADER.STRATEGY = "independent"
# Deterministic fraction of the training set used (1.0 = all; 0.01 = 1%-data prompt tuning).
_C.DATALOADER.DATA_PERCENTAGE = 1.0
# Mixup / CutMix alpha (0 = off) for classification.
_C.DATALOADER.MIXUP = 0.0
_C.DATALOADER.CUTMIX = 0.0
# timm RandAugment policy string ("" = off), e.g. "rand-m9-mstd0.5-inc1".
_C.DATALOADER.RAND_AUGMENT = ""
# Training random-resized-crop area range [min, max]; [] = the task family's default (classification
# [0.08, 1], image-text [0.5, 1], video classification [0.25, 1]); [1.0, 1.0] = no crop, only the resize.
_C.DATALOADER.CROP_SCALE = []
# Evaluation: resize to IMG_INPUT_SIZE / CROP_PCT, then centre crop IMG_INPUT_SIZE (1.0 = the whole image).
_C.DATALOADER.CROP_PCT = 0.875
# Video clips: frames per clip and the stride between sampled frames.
_C.DATALOADER.FRAMES_PER_CLIP = 8
_C.DATALOADER.STRIDE = 4
# Stop training when more than this fraction of samples read so far were unreadable.
_C.DATALOADER.MAX_BAD_FRACTION = 0.01
# MLM masking probability (whole words).
_C.DATALOADER.MLM_PROBABILITY = 0.15

# ---------------------------------------------------------------------------------------------------------
# Losses (per task)
# ---------------------------------------------------------------------------------------------------------
_C.LOSSES = CN()
_C.LOSSES.NAMES = ["CrossEntropy"]
# Multiplies this task's loss.
_C.LOSSES.LOSS_WEIGHT = 1.0
_C.LOSSES.LABELSMOOTHING = 0.0

# ---------------------------------------------------------------------------------------------------------
# Inference / evaluation (per task)
# ---------------------------------------------------------------------------------------------------------
_C.INFERENCE = CN()
# Registered evaluator ("" = the task family's default).
_C.INFERENCE.NAME = ""
_C.INFERENCE.VAL_ANNFILE = ""
_C.INFERENCE.TEST_ANNFILE = ""
# Captioning at test time: "greedy" or "beam".
_C.INFERENCE.GENERATION_MODE = "greedy"
# Video: number of temporal views averaged at test time.
_C.INFERENCE.NUM_VIEWS = 1
# Classification prompt templates; "{}" is replaced by the class name.
_C.INFERENCE.PROMPT_TEMPLATES = ["a photo of a {}."]

_C.DECODE_STRATEGY = CN()
_C.DECODE_STRATEGY.NAME = "greedy"
_C.DECODE_STRATEGY.BEAM_SIZE = 1
_C.DECODE_STRATEGY.LEN_PENALTY = 0.0

# ---------------------------------------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------------------------------------
_C.SOLVER = CN()
# Optimizer steps of the whole run (micro-batches are not counted).
_C.SOLVER.MAX_ITER = 1000
_C.SOLVER.OPTIMIZER = "AdamW"
_C.SOLVER.BASE_LR = 1e-3
_C.SOLVER.BETAS = (0.9, 0.95)
_C.SOLVER.EPS = 1e-6
_C.SOLVER.WEIGHT_DECAY = 0.05
# Weight decay of the no-decay groups (norms, biases, 1-D params, embeddings, logit scales, gammas).
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
# Parameter-name regexes that get WEIGHT_DECAY_NORM besides every 1-D parameter.
_C.SOLVER.NO_DECAY_PATTERNS = [r"embedding", r"pos_embed", r"logit_scale", r"gamma", r"\.bias$", r"norm"]
# Layer-wise LR decay: the LR of layer l is BASE_LR * LAYER_LR_DECAY ** (num_layers + 1 - l); 1.0 = off.
_C.SOLVER.LAYER_LR_DECAY = 1.0
# Max gradient norm (<= 0: no clipping).
_C.SOLVER.GRAD_CLIP = 0.0
# Micro-batches per optimizer step (<= 1: no accumulation).
_C.SOLVER.ACCUM_ITER = 1
# With ACCUM_ITER k > 1: when the k micro-batches of a step draw the same contrastive task (image_retrieval),
# its loss is computed over their features together (every rank's too with DATALOADER.STRATEGY synced): the
# gradients of one batch of k x b (GradCache; open_clip --accum-freq).  False (published): each micro-batch
# scores against its own batch only.  Costs one extra forward per micro-batch (features without grad).
_C.SOLVER.ACCUM_NEGATIVES = False
# Optimizer steps between checkpoints, and how many periodic checkpoints to keep (0 = all).
_C.SOLVER.CHECKPOINT_PERIOD = 5000
_C.SOLVER.CHECKPOINT_MAX_SAVE = 5
# Optimizer steps between evaluations (0 = off).
_C.SOLVER.EVAL_PERIOD = 0
# "<task NAME>/<metric>" whose best value keeps model_best.pth ("" = off).
_C.SOLVER.BEST_METRIC = ""
# Iterations between metric writes (console, metrics.json, TensorBoard).
_C.SOLVER.WRITE_PERIOD = 20
# Consecutive non-finite steps tolerated (skipped); 0 = stop at the first.
_C.SOLVER.MAX_NONFINITE_STEPS = 0

_C.SOLVER.AMP = CN()
_C.SOLVER.AMP.ENABLED = False
# "bf16" or "fp16" (fp16 adds a GradScaler on CUDA).
_C.SOLVER.AMP.DTYPE = "bf16"

_C.SOLVER.DEEPSPEED = CN()
_C.SOLVER.DEEPSPEED.ENABLED = False
_C.SOLVER.DEEPSPEED.ZERO_STAGE = 1
# Optional DeepSpeed JSON config merged under the one built from this tree.
_C.SOLVER.DEEPSPEED.CONFIG = ""

_C.LR_SCHEDULER = CN()
# WarmupCosine, WarmupLinear, WarmupConstant or WarmupMultiStep.
_C.LR_SCHEDULER.NAME = "WarmupCosine"
# Warm-up length in optimizer steps (linear from WARMUP_FACTOR * BASE_LR).
_C.LR_SCHEDULER.WARMUP = 0
_C.LR_SCHEDULER.WARMUP_FACTOR = 0.001
# Final LR of WarmupCosine / WarmupLinear.
_C.LR_SCHEDULER.MIN_LR = 0.0
# WarmupMultiStep: steps and decay factor.
_C.LR_SCHEDULER.STEPS = []
_C.LR_SCHEDULER.GAMMA = 0.1

# ---------------------------------------------------------------------------------------------------------
# Tasks and label sets
# ---------------------------------------------------------------------------------------------------------
# List of task nodes; see the module docstring.
_C.TASKS = []
# List of label sets: {NAME, SHARED_TARGETS_CFG: {FILE_PATH, DISTRIBUTED}}; FILE_PATH relative to DATA_PATH.
_C.SHARED_TARGETS = []

# Template a SHARED_TARGETS entry is expanded from.
_SHARED_TARGET = CN()
_SHARED_TARGET.NAME = ""
_SHARED_TARGET.SHARED_TARGETS_CFG = CN()
# Label-set file: class names (one per line), a token list, or "vocabulary" for the full BPE vocabulary.
_SHARED_TARGET.SHARED_TARGETS_CFG.FILE_PATH = ""
# Shard the label set's encoding across ranks when training.
_SHARED_TARGET.SHARED_TARGETS_CFG.DISTRIBUTED = False
# Prompt templates wrapped around class names ("{}" = the name); empty = the raw name.
_SHARED_TARGET.SHARED_TARGETS_CFG.TEMPLATES = []


def default_cache_dir() -> str:
    return os.environ.get("UNIPERCEIVER_CACHE") or os.path.expanduser("~/.cache/uniperceiver")
