"""Moved to :mod:`uniperceiver.modeling.decoding` (the caption tasks, below evaluation, decode with it); kept
importable here."""
from uniperceiver.modeling.decoding import (  # noqa: F401
    DECODE_VOCABS, ENDED_FILLER, GENERATION_MODES, CaptionGenerator, DecodeStrategy, beam_search,
    decode_strategy_from_config, search_beams, stable_topk,
)
