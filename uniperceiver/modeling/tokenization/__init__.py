"""Moved to :mod:`uniperceiver.tokenization` (below data and modeling); kept importable here."""
from uniperceiver.tokenization import (  # noqa: F401
    BPE_VOCAB_SIZE, EOT_ID, GEN_ID, MASK_ID, SOT_ID, SPE_ID, SPECIAL_TOKENS, VOCAB_SIZE, ClipTokenizer,
    default_bpe_path, get_tokenizer,
)
