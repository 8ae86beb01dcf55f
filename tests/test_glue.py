"""GLUE (text_classification): TSV readers of both kinds, the published prompts, the model API that reads the
output at the in-text <|spe|>, the metrics' exact values, and the instant GLUE config end to end."""
from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import run_main
from uniperceiver.config import ConfigError, setup_cfg
from uniperceiver.data.datasets.glue import GLUE_TASKS, glue_file, glue_prompt, read_glue_tsv
from uniperceiver.evaluation.glue import GLUEEvaluator, binary_f1, glue_metrics, matthews_corrcoef
from uniperceiver.modeling import build_model
from uniperceiver.tokenization import get_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTANT_GLUE = os.path.join(REPO, "configs", "quick_schedules", "instant_glue.yaml")


def _write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join("\t".join(row) for row in lines) + "\n")


MRPC_HEADER = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
MRPC_ROWS = [["1", "11", "12", "He said hello.", "He greeted them."], ["0", "13", "14", "A cat.", "A dog."]]
MNLI_DEV_HEADER = ["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1", "sentence2",
                   "label1", "label2", "label3", "label4", "label5", "gold_label"]
MNLI_DEV_ROWS = [
    ["0", "1", "1e", "g", "x", "x", "x", "x", "P one", "H one"] + ["neutral"] * 5 + ["neutral"],
    ["1", "2", "2e", "g", "x", "x", "x", "x", "P two", "H two"] + ["entailment"] * 5 + ["contradiction"],
]


@pytest.mark.parametrize("name,split,stem,header,rows,expected", [
    ("MRPC", "train", "train", MRPC_HEADER, MRPC_ROWS,
     [(["He said hello.", "He greeted them."], 1), (["A cat.", "A dog."], 0)]),
    ("MNLI_Match", "val", "dev_matched", MNLI_DEV_HEADER, MNLI_DEV_ROWS,
     [(["P one", "H one"], 1), (["P two", "H two"], 0)]),
    ("SST-2", "val", "dev", ["sentence", "label"], [["a fine film", "1"], ["a dull film", "0"]],
     [(["a fine film"], 1), (["a dull film"], 0)]),
    ("RTE", "train", "train", ["index", "sentence1", "sentence2", "label"],
     [["0", "A b.", "A.", "entailment"], ["1", "C d.", "E.", "not_entailment"]],
     [(["A b.", "A."], 1), (["C d.", "E."], 0)]),
])
def test_processed_and_benchmark_tsvs_read_the_same(tmp_path, name, split, stem, header, rows, expected):
    folder = GLUE_TASKS[name].folder
    _write(str(tmp_path / "bench" / folder / f"{stem}.tsv"), [header] + rows)  # GLUE's own: header line
    _write(str(tmp_path / "pub" / folder / "processed" / f"{stem}.tsv"), rows)  # published: header removed
    bench = glue_file(str(tmp_path / "bench"), name, split, "GLUEDataset")
    pub = glue_file(str(tmp_path / "pub"), name, split, "GLUEDataset")
    assert bench.endswith(f"{folder}/{stem}.tsv") and pub.endswith(f"{folder}/processed/{stem}.tsv")
    for path in (bench, pub):
        records = read_glue_tsv(path, name, split)
        assert [(r["sentences"], r["label"]) for r in records] == expected


def test_cola_headerless_and_test_files_and_bad_lines(tmp_path):
    # CoLA ships without a header: columns by position (source, label, original mark, sentence)
    _write(str(tmp_path / "CoLA" / "train.tsv"),
           [["gj04", "1", "", "The cat sat."], ["gj04", "0", "*", "Cat the sat."]])
    records = read_glue_tsv(glue_file(str(tmp_path), "CoLA", "train"), "CoLA", "train")
    assert [(r["sentences"], r["label"]) for r in records] == [(["The cat sat."], 1), (["Cat the sat."], 0)]
    # a test file (with its header) has no labels: -1
    _write(str(tmp_path / "SST-2" / "test.tsv"), [["index", "sentence"], ["0", "good"]])
    assert read_glue_tsv(str(tmp_path / "SST-2" / "test.tsv"), "SST-2", "test")[0]["label"] == -1
    # malformed lines: an error naming file:line, or skipped when a bad fraction is allowed
    _write(str(tmp_path / "QQP" / "dev.tsv"),
           [["1", "2", "3", "q1", "q2", "1"], ["broken"], ["4", "5", "6", "a", "b", "0"]])
    with pytest.raises(ValueError, match=r"QQP/dev.tsv:2"):
        read_glue_tsv(str(tmp_path / "QQP" / "dev.tsv"), "QQP", "val")
    assert len(read_glue_tsv(str(tmp_path / "QQP" / "dev.tsv"), "QQP", "val", max_bad_fraction=0.5)) == 2
    with pytest.raises(ConfigError, match="not a GLUE task"):
        read_glue_tsv(str(tmp_path / "QQP" / "dev.tsv"), "WNLI", "val")


def test_published_prompts():
    tok = get_tokenizer()
    ids, index = glue_prompt("sst2", ["a gripping film"], tok, 64)
    assert ids == tok.encode("a gripping film  <|endoftext|> It is <|spe|>.   <|endoftext|>")
    assert ids[index] == tok.spe_id and index == len(ids) - 3
    # MRPC: the first sentence's final "." is dropped, " . " appended, then "<|spe|> , " + second + <|endoftext|>
    ids, index = glue_prompt("mrpc", ["He said hello.", "He greeted them."], tok, 64)
    first = tok.encode("He said hello")  # without its period
    assert ids[: len(first)] == first and ids[index] == tok.spe_id and index == len(first) + 1
    assert ids[index:] == tok.encode("  <|spe|> , ") + tok.encode("He greeted them. <|endoftext|> ")
    # MNLI keeps the premise as it is; QNLI appends "<|endoftext|> it is"
    ids, index = glue_prompt("mnli", ["A man sleeps.", "A person rests."], tok, 64)
    assert ids[:index] == tok.encode("A man sleeps.")
    ids, index = glue_prompt("qnli", ["Who?", "Him."], tok, 64)
    assert ids[:index] == tok.encode("Who?") + tok.encode("  <|endoftext|> it is ")
    # long inputs are cut to max_len and still point at the <|spe|>
    long = " ".join(["word"] * 100)
    for prompt, sentences in (("sst2", [long]), ("cola", [long]), ("rte", [long, long]), ("qnli", [long, long])):
        ids, index = glue_prompt(prompt, sentences, tok, 32)
        assert len(ids) <= 32 and ids[index] == tok.spe_id and ids[-1] == tok.eot_id, prompt


def test_metrics_exact_values():
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 1, 0])
    preds = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0])  # TP 3, FN 1, FP 1, TN 3
    m = glue_metrics(preds, labels, ("accuracy", "f1", "mcc"))
    assert m == pytest.approx({"accuracy": 75.0, "f1": 75.0, "mcc": 50.0})
    # unbalanced: TP 1, FP 0, FN 2, TN 3 -> F1 = 2/(2+0+2) = 0.5; MCC = (1*3 - 0*2) / sqrt(1*3*5*3)
    preds = torch.tensor([1, 0, 0, 0, 0, 0])
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    assert binary_f1(preds, labels) == pytest.approx(50.0)
    assert matthews_corrcoef(preds, labels) == pytest.approx(100.0 * 3 / 45 ** 0.5)
    # a constant prediction: MCC 0 (as scikit-learn), F1 0; rows without a label (-1) are left out
    assert matthews_corrcoef(torch.zeros(6, dtype=torch.long), labels) == 0.0
    assert binary_f1(torch.zeros(6, dtype=torch.long), labels) == 0.0
    assert glue_metrics(torch.tensor([1, 0]), torch.tensor([1, -1]), ("accuracy",)) == {"accuracy": 100.0}


def test_evaluator_picks_the_published_metrics_per_task():
    cfg = setup_cfg(INSTANT_GLUE, [])
    node = cfg.TASKS[0]
    assert GLUEEvaluator.from_config(node, cfg).metrics == ("accuracy",)
    for name, metrics in (("CoLA", ("accuracy", "mcc")), ("MRPC", ("accuracy", "f1")), ("QQP", ("accuracy", "f1")),
                          ("MNLI_Match", ("accuracy",))):
        node.defrost()
        node.DATASETS.DATASET_NAME = name
        assert GLUEEvaluator.from_config(node, cfg).metrics == metrics
    ev = GLUEEvaluator(("accuracy", "mcc"))
    ev.process({}, {"logits": torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), "labels": torch.tensor([1, 0, 0])})
    assert ev.evaluate() == pytest.approx({"accuracy": 100 * 2 / 3, "mcc": 50.0})


def test_model_reads_the_output_at_a_text_position():
    cfg = setup_cfg(INSTANT_GLUE, [])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    text = torch.randint(0, 1000, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[2, 5:] = False
    index = torch.tensor([6, 0, 4])
    out = model(text=text, text_mask=mask, text_index=index)
    torch.testing.assert_close(out["at_index"], out["text"][torch.arange(3), index])
    torch.testing.assert_close(model.features_at(text, mask, index), out["at_index"])
    with pytest.raises(ValueError, match="outside the 7 text positions"):
        model(text=text, text_mask=mask, text_index=torch.tensor([7, 0, 0]))
    model.train()
    model.features_at(text, mask, index).sum().backward()
    assert model.embed.token_embedding.weight.grad is not None


def test_task_batches_point_at_the_spe():
    from uniperceiver.tasks import build_tasks

    cfg = setup_cfg(INSTANT_GLUE, [])
    task = build_tasks(cfg)["SST-2"]
    dataset = task.build_dataset("train")
    batch = task.collate([dataset[i] for i in range(4)])
    spe = batch["text"][torch.arange(4), batch["spe_index"]]
    assert (spe == get_tokenizer().spe_id).all()
    assert batch["text_mask"][torch.arange(4), batch["spe_index"]].all()
    assert set(batch["labels"].tolist()) <= {0, 1}
    with pytest.raises(ConfigError, match="regression is not supported"):
        cfg2 = setup_cfg(INSTANT_GLUE, ["TASKS.SST-2.DATASETS.DATASET_NAME", "STS-B"])
        build_tasks(cfg2)


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="from scratch the output at the in-text <|spe|> stays at chance (50%) in "
                   "30-150 steps (measured; docs/glue.md): the published GLUE runs fine-tune an MLM-pre-trained model")
def test_instant_glue_trains_and_beats_chance(tmp_path):
    out = tmp_path / "out"
    run_main(["--config-file", INSTANT_GLUE, "OUTPUT_DIR", str(out)], timeout=900)
    with open(out / "inference" / "SST-2" / "results.json") as f:
        results = json.load(f)
    acc = results.get("accuracy", results.get("SST-2", {}).get("accuracy"))
    assert acc is not None and acc >= 75.0, results
