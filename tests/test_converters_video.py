"""Video dataset converters (``tools/convert_kinetics.py``, ``tools/convert_video_captions.py``): tiny official-format
inputs -> exactly the lists / caption files our readers take, missing clips counted, malformed inputs named."""
import json
import os

from conftest import load_tool
from uniperceiver.data.datasets.imagenet import read_class_names
from uniperceiver.data.datasets.video import VideoClassificationDataset, read_video_captions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def _lines(path):
    return path.read_text().splitlines()


KINETICS_TRAIN = """label,youtube_id,time_start,time_end,split,is_cc
riding a bike,a_b-c,10,20,train,0
"abseiling",xyz,0,10,train,1
riding a bike,gone,5,15,train,0
"""
KINETICS_VAL = """label,youtube_id,time_start,time_end,split
zumba,-dash_1,120,130,val
abseiling,vv,3.0,13.0,val
"""


def _kinetics(tmp_path):
    videos = tmp_path / "k" / "videos"
    _touch(videos / "train" / "riding_a_bike" / "a_b-c_000010_000020.mp4")  # under <split>/<label>/
    _touch(videos / "xyz_000000_000010.webm")                                  # flat, another extension
    _touch(videos / "val" / "-dash_1_000120_000130.mkv")
    _touch(videos / "val" / "vv_000003_000013.avi")
    _touch(videos / "notes.txt")                                               # not a video: ignored
    (tmp_path / "train.csv").write_text(KINETICS_TRAIN)
    (tmp_path / "validate.csv").write_text(KINETICS_VAL)
    return videos


def test_convert_kinetics_lists_classnames_and_missing_clips(tmp_path, capsys):
    videos = _kinetics(tmp_path)
    out = tmp_path / "k"
    argv = ["--videos", str(videos), "--train", str(tmp_path / "train.csv"), "--val", str(tmp_path / "validate.csv"),
            "--out", str(out)]
    assert load_tool("convert_kinetics").main(argv) == 0
    assert _lines(out / "classnames.txt") == ["abseiling", "riding a bike", "zumba"]
    assert _lines(out / "train.txt") == ["videos/train/riding_a_bike/a_b-c_000010_000020.mp4 1",
                                         "videos/xyz_000000_000010.webm 0"]
    assert _lines(out / "val.txt") == ["videos/val/-dash_1_000120_000130.mkv 2", "videos/val/vv_000003_000013.avi 0"]
    assert not (out / "test.txt").exists()
    printed = capsys.readouterr().out
    assert "train.txt: 2 clips (1 not downloaded, left out)" in printed
    assert "val.txt: 2 clips (0 not downloaded, left out)" in printed
    # our readers take the output
    train = VideoClassificationDataset(str(out / "train.txt"), str(out), is_train=True)
    assert [r["label"] for r in train.records] == [1, 0] and train.num_classes == 2
    assert os.path.isfile(os.path.join(str(out), train.records[0]["image"]))
    assert read_class_names(str(out / "classnames.txt")) == ["abseiling", "riding a bike", "zumba"]
    assert not list(out.glob("*.tmp"))


def test_convert_kinetics_forced_class_order_and_test_split(tmp_path):
    videos = _kinetics(tmp_path)
    (tmp_path / "classes.txt").write_text("zumba\nriding a bike\nabseiling\nyoga\n\n")
    (tmp_path / "test.csv").write_text(KINETICS_VAL)
    argv = ["--videos", str(videos), "--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"),
            "--classnames", str(tmp_path / "classes.txt"), "--out", str(tmp_path / "out"), "--root", str(videos)]
    assert load_tool("convert_kinetics").main(argv) == 0
    out = tmp_path / "out"
    assert _lines(out / "classnames.txt") == ["zumba", "riding a bike", "abseiling", "yoga"]
    assert _lines(out / "train.txt") == ["train/riding_a_bike/a_b-c_000010_000020.mp4 1", "xyz_000000_000010.webm 2"]
    assert _lines(out / "test.txt") == ["val/-dash_1_000120_000130.mkv 0", "val/vv_000003_000013.avi 2"]
    assert not (out / "val.txt").exists()


def test_convert_kinetics_bad_inputs_name_the_file(tmp_path, capsys):
    videos = _kinetics(tmp_path)
    tool = load_tool("convert_kinetics")
    no_label = tmp_path / "test_unlabelled.csv"
    no_label.write_text("youtube_id,time_start,time_end,split\nxyz,0,10,test\n")
    assert tool.main(["--videos", str(videos), "--test", str(no_label), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(no_label) in err and "no 'label' column" in err and "without labels" in err
    bad_time = tmp_path / "bad.csv"
    bad_time.write_text("label,youtube_id,time_start,time_end\nyoga,abc,0,10\nyoga,abc,x,10\n")
    assert tool.main(["--videos", str(videos), "--train", str(bad_time), "--out", str(tmp_path / "o")]) == 2
    assert f"{bad_time}:3: time_start must be a number" in capsys.readouterr().err
    (tmp_path / "classes.txt").write_text("zumba\n")
    assert tool.main(["--videos", str(videos), "--train", str(tmp_path / "train.csv"), "--classnames",
                      str(tmp_path / "classes.txt"), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'train.csv'}:2: class 'riding a bike' is not in the class names" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_convert_moments_in_time(tmp_path, capsys):
    videos = tmp_path / "mit" / "videos"
    _touch(videos / "training" / "applauding" / "yt-aa_1.mp4")
    _touch(videos / "training" / "barking" / "getty-b.mp4")
    _touch(videos / "validation" / "barking" / "yt-cc_2.mp4")
    (tmp_path / "trainingSet.csv").write_text("applauding/yt-aa_1.mp4,applauding,3,0\n"
                                              "barking/getty-b.mp4,barking,2,1\n"
                                              "barking/yt-gone.mp4,barking,3,0\n")
    (tmp_path / "validationSet.csv").write_text("barking/yt-cc_2.mp4,barking,3,0\n")
    (tmp_path / "moments_categories.txt").write_text("applauding,0\narching,1\nbarking,2\n")
    out = tmp_path / "mit"
    assert load_tool("convert_kinetics").main([
        "--format", "mit", "--videos", str(videos), "--train", str(tmp_path / "trainingSet.csv"),
        "--val", str(tmp_path / "validationSet.csv"), "--classnames", str(tmp_path / "moments_categories.txt"),
        "--out", str(out)]) == 0
    assert _lines(out / "classnames.txt") == ["applauding", "arching", "barking"]
    assert _lines(out / "train.txt") == ["videos/training/applauding/yt-aa_1.mp4 0",
                                         "videos/training/barking/getty-b.mp4 2"]
    assert _lines(out / "val.txt") == ["videos/validation/barking/yt-cc_2.mp4 2"]
    assert "train.txt: 2 clips (1 not downloaded, left out)" in capsys.readouterr().out
    assert len(VideoClassificationDataset(str(out / "val.txt"), str(out), is_train=False)) == 1


MSRVTT_TRAIN_VAL = {
    "info": {}, "videos": [
        {"category": 9, "url": "u", "video_id": "video0", "start time": 1.0, "end time": 2.0, "split": "train"},
        {"category": 1, "url": "u", "video_id": "video1", "start time": 1.0, "end time": 2.0, "split": "validate"},
        {"category": 1, "url": "u", "video_id": "video2", "start time": 1.0, "end time": 2.0, "split": "train"},
    ], "sentences": [
        {"caption": "a man is  cooking", "video_id": "video0", "sen_id": 0},
        {"caption": "someone cooks", "video_id": "video0", "sen_id": 1},
        {"caption": "a car drives", "video_id": "video1", "sen_id": 2},
        {"caption": "a dog runs", "video_id": "video2", "sen_id": 3},
        {"caption": "   ", "video_id": "video2", "sen_id": 4},
        {"caption": "orphan", "video_id": "video99", "sen_id": 5},
    ]}
MSRVTT_TEST = {"videos": [{"video_id": "video7010", "split": "test", "id": 7010}],
               "sentences": [{"caption": "people dance", "video_id": "video7010", "sen_id": 180000},
                             {"caption": "a party", "video_id": "video7010"}]}


def test_convert_msrvtt(tmp_path, capsys):
    (tmp_path / "train_val_videodatainfo.json").write_text(json.dumps(MSRVTT_TRAIN_VAL))
    (tmp_path / "test_videodatainfo.json").write_text(json.dumps(MSRVTT_TEST))
    ann = tmp_path / "ann"
    assert load_tool("convert_video_captions").main([
        "--format", "msrvtt", str(tmp_path / "train_val_videodatainfo.json"), str(tmp_path / "test_videodatainfo.json"),
        "--out", str(ann)]) == 0
    train = json.loads((ann / "captions_train.json").read_text())
    assert train["videos"] == [{"id": 0, "file_name": "video0.mp4"}, {"id": 2, "file_name": "video2.mp4"}]
    assert train["annotations"] == [{"id": 0, "video_id": 0, "caption": "a man is cooking"},
                                    {"id": 1, "video_id": 0, "caption": "someone cooks"},
                                    {"id": 3, "video_id": 2, "caption": "a dog runs"}]
    test = json.loads((ann / "captions_test.json").read_text())
    assert test["annotations"] == [{"id": 180000, "video_id": 7010, "caption": "people dance"},
                                   {"id": 180001, "video_id": 7010, "caption": "a party"}]
    assert read_video_captions(str(ann / "captions_val.json")) == [
        {"image": "video1.mp4", "image_id": 1, "captions": ["a car drives"]}]
    assert read_video_captions(str(ann / "captions_test.json"))[0]["captions"] == ["people dance", "a party"]
    assert "left out: 2 captions" in capsys.readouterr().out


MSVD = """# MSVD descriptions
# clip_id caption
-4wsuPCjDBc_5_15 a squirrel is eating a peanut
-4wsuPCjDBc_5_15 A squirrel eats.
b_1_2 a man plays guitar
unknown_0_1 not in the clip list

c_3_4 a woman cuts onions
d_0_9 a cat jumps
d_0_9
"""


def test_convert_msvd_split_by_clip_list_and_first_appearance(tmp_path, capsys):
    (tmp_path / "AllVideoDescriptions.txt").write_text(MSVD)
    (tmp_path / "youtube_mapping.txt").write_text("b_1_2 vid1\n-4wsuPCjDBc_5_15 vid2\nd_0_9 vid3\nc_3_4 vid4\n")
    tool = load_tool("convert_video_captions")
    ann = tmp_path / "ann"
    assert tool.main(["--format", "msvd", str(tmp_path / "AllVideoDescriptions.txt"), "--clip-list",
                      str(tmp_path / "youtube_mapping.txt"), "--split-sizes", "2", "1", "1", "--out", str(ann)]) == 0
    assert read_video_captions(str(ann / "captions_train.json")) == [
        {"image": "b_1_2.avi", "image_id": 1, "captions": ["a man plays guitar"]},
        {"image": "-4wsuPCjDBc_5_15.avi", "image_id": 2,
         "captions": ["a squirrel is eating a peanut", "A squirrel eats."]}]
    val = json.loads((ann / "captions_val.json").read_text())
    assert val["videos"] == [{"id": 3, "file_name": "d_0_9.avi"}]
    assert val["annotations"] == [{"id": 9, "video_id": 3, "caption": "a cat jumps"}]
    assert [r["image_id"] for r in read_video_captions(str(ann / "captions_test.json"))] == [4]
    assert "left out: 2 captions" in capsys.readouterr().out  # the unknown clip and the empty caption
    # no clip list: order of first appearance (5 clips), sizes 3 / 1 / 1
    ann2 = tmp_path / "ann2"
    assert tool.main(["--format", "msvd", str(tmp_path / "AllVideoDescriptions.txt"), "--split-sizes", "3", "1", "1",
                      "--ext", "mp4", "--out", str(ann2)]) == 0
    assert [r["image"] for r in read_video_captions(str(ann2 / "captions_train.json"))] == [
        "-4wsuPCjDBc_5_15.mp4", "b_1_2.mp4", "unknown_0_1.mp4"]
    assert [r["image_id"] for r in read_video_captions(str(ann2 / "captions_test.json"))] == [5]


def test_convert_video_captions_bad_inputs_name_the_file(tmp_path, capsys):
    tool = load_tool("convert_video_captions")
    (tmp_path / "AllVideoDescriptions.txt").write_text(MSVD)
    assert tool.main(["--format", "msvd", str(tmp_path / "AllVideoDescriptions.txt"), "--out", str(tmp_path)]) == 2
    assert "AllVideoDescriptions.txt: 5 clips, but --split-sizes 1200 100 670 add up to 1970" in capsys.readouterr().err
    bad = tmp_path / "videodatainfo.json"
    bad.write_text(json.dumps({"videos": [{"video_id": "video0", "split": "dev"}], "sentences": []}))
    assert tool.main(["--format", "msrvtt", str(bad), "--out", str(tmp_path)]) == 2
    assert f"{bad}: videos[0] needs a 'video_id' 'video<N>' and a 'split'" in capsys.readouterr().err
    bad.write_text('{"videos": [')
    assert tool.main(["--format", "msrvtt", str(bad), "--out", str(tmp_path)]) == 2
    assert f"{bad}:1:" in capsys.readouterr().err
    assert not list(tmp_path.glob("captions_*.json"))
