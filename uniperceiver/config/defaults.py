"""The default config tree: the single source of truth for every key uniperceiver reads.

Every key has a comment saying what it means.  Key names follow the published Uni-Perceiver configs
wherever a key means the same thing (README lists the few renames).

Task nodes.  ``TASKS`` is a list of task nodes, each with a unique ``NAME``.  A task node may set any key
of the sub-trees listed in ``TASK_SUBTREES`` (``DATASETS``, ``DATALOADER``, ``MODEL``, ``LOSSES``,
``INFERENCE``, ``DECODE_STRATEGY``); every key it does not set is inherited from the global tree.  After
``finalize`` each task node is fully expanded, so ``cfg.TASKS[i].DATALOADER.TRAIN_BATCH_SIZE`` always exists.
"""
from uniperceiver.utils.paths import default_cache_dir  # noqa: F401  (re-exported by uniperceiver.config)

from .config import TASK_SUBTREES  # noqa: F401  (re-exported)
from .config import CfgNode as CN

_C = CN()
# Format version of config files; a file with another VERSION is refused (CfgNode.merge_from_dict).
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
# Per-task: name of the learnable logit scale this task uses (one per task type, shared by name).
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
# Initial logit scale exp(s) = 1 / 0.07, and the cap of the temperature exp(s) (the published clamp: a
# temperature above it is replaced by it).
_C.MODEL.LOGIT_SCALE_INIT = 14.285714285714286
_C.MODEL.LOGIT_SCALE_MAX = 100.0
# --- Published-model conventions (docs/published_checkpoints.md; the published-size base_model_*.yaml set them).
# True (the published MODEL.OLD_CHECKPONT True): the leading <spe> is the token table's <|spe|> row (id 49410)
# with no type and no position embedding, and captioning query i is that row + text position i + the text
# type; no separate ``embed.spe_embedding`` exists.  False: a dedicated learned <spe> vector with its own
# type rows (ours; an image-only step then does not touch the 49411-row token table).
_C.MODEL.SPE_FROM_TOKEN_TABLE = False
# Add the visual type embedding to image / video tokens (the published MODEL.VIDEO_EMBED.ADD_TYPE_EMBED,
# False in every published config).  True = ours.
_C.MODEL.VISUAL_TYPE_EMBED = True
# The fixed set of logit-scale names the predictor creates, whatever tasks a config names (plus "default");
# every task's TEMP_NAME must then be one of them.  Empty: one scale per distinct task TEMP_NAME (ours).  The
# published model has 11 (uniperceiver/checkpoint/official.py PUBLISHED_LOGIT_SCALES).
_C.MODEL.LOGIT_SCALE_NAMES = []

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
# Every block drops paths at DROP_PATH_PROB (the published DROP_PATH_PROB_FIXED) instead of the linear rise.
_C.MODEL.BERT.DROP_PATH_PROB_FIXED = False
# Epsilon of every LayerNorm (embedding, blocks, predictor); the published model uses 1e-5.
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
# Gate of attribute routing.  "segment_row": the published Uni-Perceiver-MoE gate (published MOE.TAG_Transform):
# the fixed 8-dim attribute row of the token's input segment (modeling/moe/attributes.py SEGMENT_ROWS; <spe>
# with the first segment, caption words and queries with the caption-text row) -> Linear(8, D) -> LayerNorm ->
# Linear(D, E, no bias); the attention output projection follows the qkv routing and fc2 follows fc1 (published
# FFN_SHARE_GATE_DECISION True); native backend only; published checkpoints need it.  "embedding": ours, a
# learned modality + task type + side embedding per token (MOE.GATE_DIM wide); qkv, proj and the FFN each gated.
_C.MOE.ATTRIBUTE_GATE = "embedding"
_C.MOE.NUM_EXPERTS = 8
_C.MOE.TOP_K = 2
# Blocks with experts, as published: "odd" = blocks 0, 2, 4, ... (odd counting from 1), "four" = 0, 4, 8, ...,
# "all" = every block, "none" = no block.
_C.MOE.MOE_EXPERT_LOCATION = "odd"
# Gate noise in training: "" (none), "Jitter", "RSample" or "Normal" (the published "vmoe": logits +
# N(0, (NOISE_STD / NUM_EXPERTS)^2), expert weights from the noisy logits; native backend only).
_C.MOE.NOISY_GATE_POLICY = ""
_C.MOE.NOISE_STD = 1.0
# Token routing capacity factors.
_C.MOE.CAPACITY_FACTOR = 1.0
_C.MOE.EVAL_CAPACITY_FACTOR = 1.0
# Minimum slots per expert (token routing); the deepspeed backend asserts when tokens < this, keep it small.
_C.MOE.MIN_CAPACITY = 4
# Width of the learned attribute embedding the attribute gate reads (MOE.ATTRIBUTE_GATE embedding).
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
# Registered task type that reads this task: image_classification, image_retrieval, image_caption, text_mlm...
_C.DATASETS.TASK_TYPE = ""
# Dataset reader name (DATASET_REGISTRY), e.g. "imagenet", "coco_caption", "jsonl_pairs", "text_corpus".
_C.DATASETS.DATASET_NAME = ""
# Split names (or annotation files) read for training / validation / test; "" = none.  With FORMAT
# webdataset, TRAIN is a shard list: a brace pattern ("cc12m/{00000..01242}.tar"), patterns joined by "::",
# or a .txt file of URLs; "pipe:CMD" URLs stream from a command.
_C.DATASETS.TRAIN = ""
_C.DATASETS.VAL = ""
_C.DATASETS.TEST = ""
# How the TRAIN split is stored: "files" (the readers' annotation files + image files) or "webdataset" (tar
# shards in img2dataset's layout: {key}.jpg + .txt / .json / .cls; image classification and image-text pairs).
# VAL / TEST are always read as files.
_C.DATASETS.FORMAT = "files"
# Name of the SHARED_TARGETS label set this task scores against ("" = targets come from the batch).
_C.DATASETS.TARGET_SET = []

# ---------------------------------------------------------------------------------------------------------
# Data loading (per task)
# ---------------------------------------------------------------------------------------------------------
_C.DATALOADER = CN()
_C.DATALOADER.TRAIN_BATCH_SIZE = 4
_C.DATALOADER.TEST_BATCH_SIZE = 32
_C.DATALOADER.NUM_WORKERS = 0
# Training images kept decoded in memory, in MiB per task (0: decode every time): decoded at start, in record
# order, until the budget is used (the demo digits: 4,400 tiles, ~10 MiB, in ~1 s), before the loader forks its
# workers, which share them; images beyond the budget are decoded when read.  Start-up grows with the budget
# (one thread decodes: 0.8 ms a 224 px JPEG here, so 1 GiB of them, ~7,000 images, takes ~6 s per rank).
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
# FORMAT webdataset: samples shuffled together (read in chunks of this many, emitted in a seeded order;
# a resumed run re-reads at most one chunk); 1 = shard order.
_C.DATALOADER.SHUFFLE_BUFFER = 1000
# FORMAT webdataset: draw shards with replacement (open_clip's --dataset-resampled) instead of passes over a
# permutation; allows fewer shards than ranks x workers.
_C.DATALOADER.SHARD_RESAMPLED = False
# Mixup / CutMix alpha (0 = off) for classification.
_C.DATALOADER.MIXUP = 0.0
_C.DATALOADER.CUTMIX = 0.0
# timm RandAugment policy string ("" = off), e.g. "rand-m9-mstd0.5-inc1".
_C.DATALOADER.RAND_AUGMENT = ""
# Training random-resized-crop area range [min, max]; [] = the task type's default (its Task.crop_scale:
# classification [0.08, 1], image-text and VQA [0.5, 1], video classification [0.25, 1]); [1.0, 1.0] = no crop,
# only the resize.
_C.DATALOADER.CROP_SCALE = []
# Evaluation: resize to IMG_INPUT_SIZE / CROP_PCT, then centre crop IMG_INPUT_SIZE (1.0 = the whole image).
_C.DATALOADER.CROP_PCT = 0.875
# Video clips: frames per clip and the stride between sampled frames.
_C.DATALOADER.FRAMES_PER_CLIP = 8
_C.DATALOADER.STRIDE = 4
# Stop training when more than this fraction of samples read so far were unreadable.
_C.DATALOADER.MAX_BAD_FRACTION = 0.01
# An image with more pixels than this (width x height, read from its header) is a bad sample, skipped and
# counted as an unreadable one (a decompression-bomb guard; PIL's default; 0 = no limit of ours).
_C.DATALOADER.MAX_IMAGE_PIXELS = 89478485
# MLM masking probability (whole words).
_C.DATALOADER.MLM_PROBABILITY = 0.15

# ---------------------------------------------------------------------------------------------------------
# Losses (per task)
# ---------------------------------------------------------------------------------------------------------
_C.LOSSES = CN()
# Multiplies this task's loss.
_C.LOSSES.LOSS_WEIGHT = 1.0
_C.LOSSES.LABELSMOOTHING = 0.0

# ---------------------------------------------------------------------------------------------------------
# Inference / evaluation (per task)
# ---------------------------------------------------------------------------------------------------------
_C.INFERENCE = CN()
# Registered evaluator ("" = the task type's default).
_C.INFERENCE.NAME = ""
_C.INFERENCE.VAL_ANNFILE = ""
_C.INFERENCE.TEST_ANNFILE = ""
# Captioning at test time: "beam" is the older spelling of DECODE_STRATEGY.NAME beam; "greedy" leaves the choice
# to DECODE_STRATEGY.NAME.
_C.INFERENCE.GENERATION_MODE = "greedy"
# Video: number of temporal views averaged at test time.
_C.INFERENCE.NUM_VIEWS = 1

# Caption decoding at evaluation (modeling/decoding.py, docs/decoding.md).
_C.DECODE_STRATEGY = CN()
# Registered decode strategy: "greedy" (one beam) or "beam" (beam search as the published CaptionBeamSearcherV3,
# a name also accepted; the published default "none" means greedy).  Any other name is a config error.
_C.DECODE_STRATEGY.NAME = "greedy"
# Beams kept per caption with NAME beam (1 = greedy); NAME greedy needs 1.
_C.DECODE_STRATEGY.BEAM_SIZE = 1
# > 0: beams are finally ranked by log-probability / (non-end tokens + 1) ** LEN_PENALTY; 0: by log-probability.
_C.DECODE_STRATEGY.LEN_PENALTY = 0.0
# Most tokens generated per caption at evaluation, the end token included; 0 = MODEL.MAX_SEQ_LEN.
_C.MODEL.EVAL_MAX_SEQ_LEN = 0
# Vocabulary captions are decoded in (published key): "CLIP" or "CLIP_CAPTION", both the CLIP BPE vocabulary
# ending a caption at <|endoftext|>; any other value is a config error.
_C.INFERENCE.VOCAB = "CLIP"

# ---------------------------------------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------------------------------------
_C.SOLVER = CN()
# Optimizer steps of the whole run (micro-batches are not counted).
_C.SOLVER.MAX_ITER = 1000
# "AdamW" (torch.optim.AdamW) or "Lamb" (timm.optim.Lamb, the published SOLVER.NAME LAMB).
_C.SOLVER.OPTIMIZER = "AdamW"
_C.SOLVER.BASE_LR = 1e-3
_C.SOLVER.BETAS = (0.9, 0.95)
_C.SOLVER.EPS = 1e-6
_C.SOLVER.WEIGHT_DECAY = 0.05
# Weight decay of the no-decay groups (norms, biases, 1-D params, embeddings, logit scales, gammas).
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
# Weight decay of nn.Embedding weights (the published SOLVER.WEIGHT_DECAY_EMBEDDING); < 0: the no-decay rule
# (WEIGHT_DECAY_NORM, via NO_DECAY_PATTERNS).
_C.SOLVER.WEIGHT_DECAY_EMBEDDING = -1.0
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
# Metric writers and the profiler (docs/observability.md)
# ---------------------------------------------------------------------------------------------------------
_C.LOGGER = CN()
# Metric writers besides the console (which always writes), all on rank 0: "json" (OUTPUT_DIR/metrics.json),
# "tensorboard" (event files in OUTPUT_DIR), "wandb" (Weights & Biases: pip install 'uniperceiver[wandb]').
_C.LOGGER.WRITERS = ["json", "tensorboard"]
_C.LOGGER.WANDB = CN()
# W&B project, run name ("" = W&B makes one up) and tags.  The full config is logged with the run; files go to
# $WANDB_DIR/wandb if WANDB_DIR is set, else OUTPUT_DIR/wandb; WANDB_MODE=offline runs without a network.
_C.LOGGER.WANDB.PROJECT = "uniperceiver"
_C.LOGGER.WANDB.NAME = ""
_C.LOGGER.WANDB.TAGS = []

_C.PROFILER = CN()
# Run torch.profiler on rank 0 over steps START_ITER .. START_ITER + NUM_ITERS - 1 (counted from 0) and write
# OUTPUT_DIR/profiler/trace_<first>-<last>.json (Chrome trace) and key_averages.txt.
_C.PROFILER.ENABLED = False
_C.PROFILER.START_ITER = 10
_C.PROFILER.NUM_ITERS = 5

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

# finalize() expands each SHARED_TARGETS entry from this template (config.py; kept on the tree, not imported)
_C.__dict__["_shared_target_template"] = _SHARED_TARGET
