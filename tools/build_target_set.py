#!/usr/bin/env python
"""Build label sets (SHARED_TARGETS): a vocabulary subset from a corpus, or the tokenised cache of a config's
label sets.

    # tokens occurring in a corpus (text lines, COCO-caption .json, {"image","caption"} .jsonl) -> .tokens file
    python tools/build_target_set.py --corpus bookswiki/train.txt mscoco/annotations/captions_train113k.json \\
        --out targets/vocab_subset.tokens
    # every token of the CLIP BPE vocabulary (+ <|endoftext|>)
    python tools/build_target_set.py --full-vocabulary --out targets/vocabulary.tokens
    # tokenise and cache (in CACHE_DIR/target_sets) every SHARED_TARGETS entry of a config
    python tools/build_target_set.py --config-file configs/quick_schedules/7tasks_demo.yaml

A ``.tokens`` file lists one token id per line (a tab and the token text follow for reading); point
``SHARED_TARGETS_CFG.FILE_PATH`` at it.  A class-name file needs no building: one name per line.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uniperceiver.config import ConfigError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", nargs="*", default=[], help="corpus files whose tokens form the subset")
    parser.add_argument("--full-vocabulary", action="store_true", help="write the whole vocabulary")
    parser.add_argument("--out", default="", help="output .tokens file")
    parser.add_argument("--config-file", default="", help="cache every SHARED_TARGETS entry of this config")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    args = parser.parse_args(argv)

    from uniperceiver.data.target_sets import (
        build_label_set, corpus_token_subset, full_vocabulary_ids, write_token_list,
    )
    from uniperceiver.tokenization import get_tokenizer

    try:
        if args.config_file:
            from uniperceiver.config import setup_cfg
            from uniperceiver.data.demo import prepare_data_root

            cfg = setup_cfg(args.config_file, args.opts)
            prepare_data_root(cfg)
            for node in cfg.SHARED_TARGETS:
                s = build_label_set(cfg, node.NAME)
                print(f"{node.NAME}: {len(s)} entries x {s.num_templates} templates, ids {tuple(s.ids.shape)}")
            return 0
        if not args.out or not (args.corpus or args.full_vocabulary):
            parser.error("give --out with --corpus FILES or --full-vocabulary (or --config-file)")
        if not args.out.endswith(".tokens"):
            parser.error("--out must end with .tokens (that suffix marks a token list in SHARED_TARGETS)")
        tok = get_tokenizer()
        missing = [p for p in args.corpus if not os.path.isfile(p)]
        if missing:
            raise ConfigError(f"corpus file not found: {', '.join(missing)}")
        ids = full_vocabulary_ids(tok) if args.full_vocabulary else corpus_token_subset(args.corpus, tok)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_token_list(args.out, ids, tok)
        print(f"wrote {len(ids)} tokens to {args.out}")
        return 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
