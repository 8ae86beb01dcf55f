"""ClipTokenizer: the 49411-id vocabulary, fixed ids for known strings, round trips, batch packing."""
import importlib.util
import subprocess
import sys

import pytest
import torch

from uniperceiver.tokenization import (
    EOT_ID,
    MASK_ID,
    SPE_ID,
    VOCAB_SIZE,
    ClipTokenizer,
    default_bpe_path,
    get_tokenizer,
)

# Ids verified against open_clip's SimpleTokenizer (open-clip-torch 2.x) on this machine.
KNOWN = {
    "a photo of a cat.": [320, 1125, 539, 320, 2368, 269],
    "A   man riding a horse on the beach": [320, 786, 6765, 320, 4558, 525, 518, 2117],
    "supercalifragilisticexpialidocious": [1642, 2857, 13093, 2076, 5868, 26850, 835, 639, 38466],
    "&amp; x": [261, 343],
}
TEXTS = list(KNOWN) + ["Hello, World! It's 2024 — naïve café 😀", "日本語のテキスト", "don't stop"]


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()


def test_vocabulary_and_special_ids(tok):
    assert tok.vocab_size == len(tok) == VOCAB_SIZE == 49411
    assert (tok.sot_id, tok.eot_id, tok.mask_id, tok.gen_id, tok.spe_id) == (49406, 49407, 49408, 49409, 49410)
    assert tok.spe_id == SPE_ID and tok.mask_id == MASK_ID and tok.eot_id == EOT_ID
    assert get_tokenizer() is tok  # cached per process


def test_merges_file_found_without_importing_open_clip():
    path = default_bpe_path()
    assert path.endswith("bpe_simple_vocab_16e6.txt.gz")
    spec = importlib.util.find_spec("open_clip")
    assert path.startswith(spec.submodule_search_locations[0])
    # Building the tokenizer (and the model package) never imports open_clip itself.
    code = (
        "import sys; from uniperceiver.tokenization import get_tokenizer; get_tokenizer(); "
        "import uniperceiver.modeling; assert 'open_clip' not in sys.modules, 'open_clip was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("text", list(KNOWN))
def test_fixed_ids(tok, text):
    assert tok.encode(text) == KNOWN[text]


def test_matches_open_clip_when_importable(tok):
    tokenizer_mod = pytest.importorskip("open_clip.tokenizer")
    ref = tokenizer_mod.SimpleTokenizer()
    for text in TEXTS:
        assert tok.encode(text) == ref.encode(text), text


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    decoded = tok.decode(ids)
    assert tok.encode(decoded) == ids
    assert decoded.replace(" ", "") == " ".join(text.lower().split()).replace("&amp;", "&").replace(" ", "")


def test_special_tokens_in_text(tok):
    ids = tok.encode("a <|mask|> on the <|spe|>")
    assert ids[1] == tok.mask_id and ids[-1] == tok.spe_id
    assert tok.decode(ids) == "a <|mask|> on the <|spe|>"
    assert tok.decode(ids, skip_special=True) == "a on the"


def test_tokenize_pads_truncates_and_masks(tok):
    ids, mask = tok.tokenize(["a photo of a cat.", "a"], context_length=5, add_eot=True)
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == (2, 5)
    assert ids[0].tolist() == [320, 1125, 539, 320, EOT_ID]
    assert ids[1].tolist() == [320, EOT_ID, 0, 0, 0]
    assert mask.tolist() == [[True] * 5, [True, True, False, False, False]]
    ids, mask = tok.tokenize("a cat", context_length=4, add_sot=True)
    assert ids[0].tolist() == [tok.sot_id, 320, 2368, 0]


def test_explicit_bpe_path():
    assert ClipTokenizer(default_bpe_path()).encode("a photo") == [320, 1125]
