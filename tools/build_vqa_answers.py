#!/usr/bin/env python
"""Build the VQA answer vocabulary (a label-set file of normalised answers, one per line, most frequent
first) from VQAv2 annotation files.

    python tools/build_vqa_answers.py $DATA_PATH/vqa/annotations/v2_mscoco_train2014_annotations.json \
        $DATA_PATH/vqa/annotations/v2_mscoco_val2014_annotations.json --top-k 3129 --out $DATA_PATH/vqa/answers.txt

Every human answer counts (ten per question), normalised as the VQA evaluation does (lower case,
punctuation, number words, articles); answers seen fewer than ``--min-count`` times are dropped.  Use the
file as the task's ``SHARED_TARGETS`` entry (``FILE_PATH: vqa/answers.txt``).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uniperceiver.data.datasets.vqa import build_answer_vocab  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("annotations", nargs="+", help="VQAv2 annotation JSON files (v2_mscoco_*_annotations.json)")
    parser.add_argument("--out", required=True, help="answer file to write (one answer per line)")
    parser.add_argument("--min-count", type=int, default=9, help="drop answers given fewer times (default 9)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the K most frequent answers (0 = all)")
    args = parser.parse_args(argv)
    for path in args.annotations:
        if not os.path.isfile(path):
            print(f"not found: {path}", file=sys.stderr)
            return 2
    answers = build_answer_vocab(args.annotations, min_count=args.min_count, top_k=args.top_k)
    if not answers:
        print("no answer passes --min-count", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = f"{args.out}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(answers) + "\n")
    os.replace(tmp, args.out)
    print(f"{len(answers)} answers -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
