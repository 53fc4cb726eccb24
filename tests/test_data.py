"""Reading text data: formats, column detection, encodings, validation that names rows, splits."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from graft.config import DataConfig
from graft.data import DataWarning, holdout, read_dataset, read_text_dataset, read_text_inputs
from graft.errors import ContractError, DataError
from tests.conftest import shared


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# -- real files --------------------------------------------------------------------------------


def test_sms_spam_tsv_loads_every_row_despite_unbalanced_quotes():
    ds = read_text_dataset(shared("text", "sms_spam", "SMSSpamCollection.tsv"))
    assert len(ds) == 5574
    assert ds.label_space == ("ham", "spam")
    assert ds.class_counts() == {"ham": 4827, "spam": 747}
    assert ds.report.duplicates == 403
    # a text with a bare quote is kept whole, quote included
    assert any('"' in t for t in ds.examples)
    assert ds.examples[0].startswith("Go until jurong point")


def test_sst2_csv_and_trec_jsonl():
    sst = read_text_dataset(shared("text", "sst2", "train.csv"))
    assert (len(sst), sst.label_space, sst.text_col) == (6920, ("negative", "positive"), "text")
    trec = read_text_dataset(shared("text", "trec", "train.jsonl"))
    assert len(trec) == 5452 and trec.class_counts()["ABBR"] == 86
    assert trec.report.duplicates == 71


def test_headerless_txt_with_integer_labels():
    ds = read_text_dataset(shared("text", "uci_sentiment", "amazon_cells_labelled.txt"))
    assert len(ds) == 1000 and ds.label_space == (0, 1)
    assert ds.examples[0].startswith("So there is no way")


# -- formats and columns -----------------------------------------------------------------------


def test_csv_with_named_columns_and_explicit_choice(tmp_path):
    path = write(
        tmp_path,
        "t.csv",
        'id,body,intent\n1,"hello, world",greet\n2,bye now,leave\n3,hi,greet\n4,see you,leave\n',
    )
    ds = read_text_dataset(path, DataConfig(text_col="body", label_col="intent"))
    assert ds.examples[0] == "hello, world" and ds.label_space == ("greet", "leave")
    assert ds.rows == [2, 3, 4, 5]


def test_unknown_column_names_the_columns(tmp_path):
    path = write(tmp_path, "t.csv", "text,label\na,x\nb,y\n")
    with pytest.raises(DataError, match=r"no text column 'body'.*\['text', 'label'\]"):
        read_text_dataset(path, DataConfig(text_col="body"))


def test_ambiguous_columns_ask_for_text_col(tmp_path):
    path = write(tmp_path, "t.csv", "left,right,label\nfoo bar,long words,x\nbaz,more words,y\n")
    with pytest.raises(DataError, match="--text-col"):
        read_text_dataset(path, DataConfig(label_col="label"))


def test_quoted_tsv_is_parsed_with_quotes(tmp_path):
    path = write(tmp_path, "q.tsv", 'text\tlabel\n"a\ttab inside"\tx\n"plain"\ty\n"more"\tx\n"again"\ty\n')
    ds = read_text_dataset(path)
    assert ds.examples[0] == "a\ttab inside"


def test_jsonl_list_labels_are_multilabel(tmp_path):
    rows = [{"text": f"t{i}", "labels": ["a", "b"] if i % 2 else ["a"]} for i in range(6)]
    path = write(tmp_path, "m.jsonl", "\n".join(json.dumps(r) for r in rows))
    ds = read_text_dataset(path)
    assert ds.task == "multilabel" and ds.label_space == ("a", "b")
    assert ds.targets.tolist()[:2] == [[1.0, 0.0], [1.0, 1.0]]


def test_delimited_multilabel_and_regression(tmp_path):
    path = write(tmp_path, "m.csv", "text,tags\nx,a|b\ny,b\nz,a\nw,a|c\n")
    ds = read_text_dataset(path, DataConfig(label_sep="|"))
    assert ds.task == "multilabel" and ds.label_space == ("a", "b", "c")
    reg = read_text_dataset(write(tmp_path, "r.csv", "text,score\nx,0.5\ny,1.25\nz,3\n"))
    assert reg.task == "regression" and reg.targets.dtype == np.float32
    assert reg.label_space == ()


def test_dataframe_dict_pairs_and_lists_agree():
    texts, labels = ["good", "bad", "fine", "awful"], ["p", "n", "p", "n"]
    a = read_text_dataset(pd.DataFrame({"text": texts, "label": labels}))
    b = read_text_dataset({"text": texts, "label": labels})
    c = read_text_dataset(list(zip(texts, labels, strict=True)))
    d = read_text_dataset(texts, labels=labels)
    assert a.fingerprint() == b.fingerprint() == c.fingerprint() == d.fingerprint()


def test_integer_labels_from_csv_and_json_mean_the_same_class(tmp_path):
    csv_ds = read_text_dataset(write(tmp_path, "a.csv", "text,label\nx,1\ny,0\nz,1\nw,0\n"))
    json_ds = read_text_dataset([("x", 1), ("y", 0), ("z", 1), ("w", 0)])
    assert csv_ds.label_space == json_ds.label_space == (0, 1)


def test_labels_that_denote_one_whole_number_are_one_class_with_a_warning(tmp_path):
    rows = [f"text {i},{label}" for i, label in enumerate(["1", "1.0", " 1", "0", "0.0", " 0"] * 3)]
    ds = read_text_dataset(write(tmp_path, "d.csv", "text,label\n" + "\n".join(rows) + "\n"))
    assert ds.label_space == (0, 1) and ds.class_counts() == {0: 9, 1: 9}
    (warning,) = ds.report.warnings
    assert "'1' (3 rows), '1.0' (3 rows), ' 1' (3 rows) -> 1" in warning and "docs/data.md" in warning
    # evaluation data: a test file's 1.0 is the model's class 1, with no warning (one spelling each)
    test = read_text_dataset(
        write(tmp_path, "t.csv", "text,label\na,1.0\nb,0.0\n"), label_space=(0, 1), task="multiclass"
    )
    assert test.targets.tolist() == [1, 0] and not test.report.warnings
    assert "labels read as '1.0' as 1, '0.0' as 0" in test.report.notes


def test_labels_that_only_look_alike_stay_apart_with_a_warning():
    labels = ["Positive", "positive", "0.5", "0.50"] * 2
    ds = read_text_dataset([f"text {i}" for i in range(8)], labels=labels)
    assert ds.label_space == ("0.5", "0.50", "Positive", "positive")
    (warning,) = ds.report.warnings
    assert "'Positive' (2 rows) and 'positive' (2 rows)" in warning and "'0.5' (2 rows) and '0.50'" in warning


def test_regression_targets_are_read_as_numbers_whatever_their_spelling():
    ds = read_text_dataset(["a", "b", "c"], DataConfig(task="regression"), labels=["1", " 1.0", "2.5"])
    assert ds.targets.tolist() == [1.0, 1.0, 2.5] and not ds.report.warnings


def test_csv_cell_of_a_megabyte_reads_like_jsonl(tmp_path):
    big = "word " * 200_000
    rows = [(big, "a"), ("short", "b"), ("other", "a"), ("more", "b")]
    jsonl = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows)
    csv_text = "text,label\n" + "".join(f"{t},{y}\n" for t, y in rows)
    from_csv = read_text_dataset(write(tmp_path, "big.csv", csv_text))
    from_jsonl = read_text_dataset(write(tmp_path, "big.jsonl", jsonl))
    assert len(from_csv.examples[0]) == 1_000_000
    assert from_csv.fingerprint() == from_jsonl.fingerprint()


# -- encodings ---------------------------------------------------------------------------------


def test_cp1252_fallback_is_reported_once(tmp_path):
    raw = "text,label\ncaf\u00e9 ok,a\nplain,b\n".encode() + "na\u00efve,a\nok,b\n".encode("cp1252")
    path = write(tmp_path, "enc.csv", raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a training read only reports it: `graft fit` prints the report
        ds = read_text_dataset(path)
    assert ds.examples[2] == "na\u00efve"
    assert len(ds.report.warnings) == 1 and "cp1252" in ds.report.warnings[0]
    assert "lines 4)" in ds.report.warnings[0]
    # prediction inputs have no report to show: one DataWarning instead
    txt = write(tmp_path, "in.txt", "caf\u00e9 au lait\n".encode("cp1252") + b"plain\n")
    with pytest.warns(DataWarning, match=r"lines 1\)") as record:
        assert read_text_inputs(txt) == ["caf\u00e9 au lait", "plain"]
    assert len(record) == 1
    with pytest.warns(DataWarning, match=r"lines 4\)") as record:
        assert read_text_inputs(path) == ["caf\u00e9 ok", "plain", "na\u00efve", "ok"]
    assert len(record) == 1


WIDE = "text,label\r\ncaf\u00e9 ok,a\r\nplain,b\r\nmore,a\r\nlast,b\r\n"
BOMS = {
    "utf-16-le": b"\xff\xfe",
    "utf-16-be": b"\xfe\xff",
    "utf-32-le": b"\xff\xfe\0\0",
    "utf-32-be": b"\0\0\xfe\xff",
}


@pytest.mark.parametrize("encoding", list(BOMS))
def test_utf16_and_utf32_with_a_bom_are_decoded(tmp_path, encoding):
    path = write(tmp_path, "wide.csv", BOMS[encoding] + WIDE.encode(encoding))
    ds = read_text_dataset(path)
    assert ds.examples == ["caf\u00e9 ok", "plain", "more", "last"] and ds.label_space == ("a", "b")


@pytest.mark.parametrize("encoding", list(BOMS))
def test_utf16_and_utf32_without_a_bom_name_the_encoding(tmp_path, encoding):
    path = write(tmp_path, "wide.csv", WIDE.encode(encoding))
    with pytest.raises(DataError, match=rf"wide\.csv: .*NUL bytes.*{encoding}.*--encoding {encoding}"):
        read_text_dataset(path)
    ds = read_text_dataset(path, DataConfig(encoding=encoding))
    assert ds.examples[0] == "caf\u00e9 ok"


def test_stray_nul_bytes_are_refused(tmp_path):
    path = write(tmp_path, "nul.csv", b"text,label\nok,a\nbro\0ken,b\nfine,a\nyes,b\n")
    with pytest.raises(DataError, match=r"nul\.csv: line 3 holds NUL bytes.*--encoding"):
        read_text_dataset(path)


def test_undecodable_bytes_name_the_line(tmp_path):
    path = write(tmp_path, "bad.csv", b"text,label\nok,a\nbad \x81 byte,b\n")
    with pytest.raises(DataError, match=r"line 3: byte 0x81"):
        read_text_dataset(path)


def test_explicit_wrong_encoding_names_the_line(tmp_path):
    path = write(tmp_path, "bad.csv", "text,label\nok,a\ncaf\u00e9,b\n".encode())
    with pytest.raises(DataError, match=r"line 3 is not valid ascii"):
        read_text_dataset(path, DataConfig(encoding="ascii"))


def test_utf8_bom_is_stripped(tmp_path):
    path = write(tmp_path, "bom.csv", b"\xef\xbb\xbftext,label\nx,a\ny,b\nz,a\nw,b\n")
    assert read_text_dataset(path).text_col == "text"


# -- validation: every problem, once, with rows ------------------------------------------------


def test_every_bad_row_is_reported_at_once(tmp_path):
    path = write(tmp_path, "bad.csv", "text,label\ngood,a\n,a\nfine,\n  ,b\nok,b\nyes,a\n")
    with pytest.raises(DataError) as info:
        read_text_dataset(path)
    message = str(info.value)
    assert "3 problems" in message
    assert "line 3: empty text" in message
    assert "line 4: missing label" in message
    assert "line 5: empty text" in message


def test_a_text_of_invisible_characters_is_empty(tmp_path):
    path = write(tmp_path, "d.csv", "text,label\ngood,p\n\u200b\u200d\ufeff,n\nbad,n\nfine,p\n")
    with pytest.raises(DataError, match=r"line 3: empty text: only invisible characters"):
        read_text_dataset(path)


def test_an_empty_or_invisible_prediction_input_is_refused(tmp_path):
    with pytest.raises(ContractError, match=r"input 1: empty text \(only invisible characters '\\u200b'\)"):
        read_text_inputs(["good film", "\u200b", "fine"])
    path = write(tmp_path, "new.csv", "id,text\n1,good film\n2,\n")
    with pytest.raises(ContractError, match=r"line 3: empty text"):
        read_text_inputs(path, text_col="text")


def test_two_columns_of_one_name_are_refused(tmp_path):
    path = write(tmp_path, "d.csv", "text,label,text\ngood,p,x\nbad,n,y\n")
    with pytest.raises(DataError, match=r"d.csv: two columns are named 'text' \(columns 1 and 3\)"):
        read_text_dataset(path)
    frame = pd.DataFrame([["good", "p", "x"], ["bad", "n", "y"]], columns=["text", "label", "text"])
    with pytest.raises(DataError, match="two columns are named 'text'"):
        read_text_dataset(frame)
    lines = '{"text": "good", "label": "p", "text": "x"}\n{"text": "bad", "label": "n"}\n'
    jsonl = write(tmp_path, "d.jsonl", lines)
    with pytest.raises(DataError, match=r"line 1: field 'text' appears twice in one object"):
        read_text_dataset(jsonl)


def test_one_class_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"only one class \('a'\)"):
        read_text_dataset(write(tmp_path, "one.csv", "text,label\nx,a\ny,a\n"))


def test_class_with_one_example_names_class_and_line(tmp_path):
    path = write(tmp_path, "small.csv", "text,label\nx,a\ny,a\nz,b\nw,b\nv,c\n")
    with pytest.raises(DataError, match=r"class 'c' has only 1 example \(line 6\)"):
        read_text_dataset(path)


def test_wrong_field_count_names_lines(tmp_path):
    path = write(tmp_path, "f.csv", "text,label\nx,a\ny,b,extra\nz,a\nq\n")
    with pytest.raises(DataError) as info:
        read_text_dataset(path)
    assert "line 3: expected 2 fields, found 3" in str(info.value)
    assert "line 5: expected 2 fields, found 1" in str(info.value)


def test_bad_json_lines_are_all_named(tmp_path):
    path = write(tmp_path, "b.jsonl", '{"text": "x", "label": "a"}\n{bad\n{"text": "y", "label": "b"}\n[1]\n')
    with pytest.raises(DataError) as info:
        read_text_dataset(path)
    assert "line 2: not valid JSON" in str(info.value) and "line 4: expected a JSON object" in str(info.value)


def test_regression_label_that_is_not_a_number(tmp_path):
    path = write(tmp_path, "r.csv", "text,y\na,1.5\nb,lots\nc,2.5\n")
    with pytest.raises(DataError, match=r"line 3: label 'lots' is not a finite number"):
        read_text_dataset(path, DataConfig(task="regression"))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_text_dataset(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="is a folder"):
        read_text_dataset(tmp_path)


def test_conflicting_duplicates_are_counted(tmp_path):
    ds = read_text_dataset(write(tmp_path, "d.csv", "text,label\nx,a\nx,a\nx,b\ny,b\n"))
    assert (ds.report.duplicates, ds.report.conflicting_duplicates) == (2, 1)


def test_unknown_label_in_evaluation_data(tmp_path):
    path = write(tmp_path, "e.csv", "text,label\nx,a\ny,zzz\n")
    with pytest.raises(DataError, match=r"line 3: label 'zzz' is not one the model was trained on"):
        read_text_dataset(path, label_space=("a", "b"), task="multiclass", require_min_per_class=False)


def test_bad_rows_point_to_skip_bad_which_leaves_them_out(tmp_path):
    path = write(tmp_path, "rows.csv", "text,label\ngood,a\n,a\nfine,\nok,b\nyes,a\nno,b\n")
    with pytest.raises(DataError) as info:
        read_text_dataset(path)
    message = str(info.value)
    assert "line 3: empty text" in message and "line 4: missing label" in message
    assert "--skip-bad" in message.splitlines()[-1]
    ds = read_dataset(path, DataConfig(skip_bad=True))
    assert len(ds) == 4 and ds.examples == ["good", "ok", "yes", "no"] and ds.rows == [2, 5, 6, 7]
    assert ds.report.skipped == ["line 3: empty text", "line 4: missing label"]
    assert "skipped 2 bad rows (--skip-bad): see skipped" in ds.report.warnings
    assert "2 skipped" in ds.report.summary()


def test_skip_bad_still_checks_the_rows_it_keeps(tmp_path):
    path = write(tmp_path, "rows.csv", "text,label\nx,a\ny,a\nz,b\n,b\n")
    with pytest.raises(DataError, match=r"class 'b' has only 1 example \(line 4\)"):
        read_text_dataset(path, DataConfig(skip_bad=True))
    every_row_bad = write(tmp_path, "empty.csv", "text,label\n,a\n,b\n")
    with pytest.raises(DataError, match="line 2: empty text"):
        read_text_dataset(every_row_bad, DataConfig(skip_bad=True))


def test_skip_bad_leaves_out_unparsable_lines(tmp_path):
    csv_path = write(tmp_path, "f.csv", "text,label\nx,a\ny,b,extra\nz,a\nq\nw,b\nv,b\n")
    ds = read_text_dataset(csv_path, DataConfig(skip_bad=True))
    assert ds.examples == ["x", "z", "w", "v"]
    assert ds.report.skipped == ["line 3: expected 2 fields, found 3", "line 5: expected 2 fields, found 1"]
    lines = ['{"text": "x", "label": "a"}', "{bad", '{"text": "y", "label": "b"}', "[1]"]
    lines += ['{"text": "z", "label": "a"}', '{"text": "w", "label": "b"}']
    jsonl = write(tmp_path, "b.jsonl", "\n".join(lines) + "\n")
    ds = read_text_dataset(jsonl, DataConfig(skip_bad=True))
    assert ds.examples == ["x", "y", "z", "w"] and ds.rows == [1, 3, 5, 6]
    assert [s.split(":")[0] for s in ds.report.skipped] == ["line 2", "line 4"]
    assert any("skipped 2" in w and "--skip-bad" in w for w in ds.report.warnings)


def test_skip_bad_leaves_out_labels_unknown_to_the_model(tmp_path):
    path = write(tmp_path, "e.csv", "text,label\nx,a\ny,zzz\nz,b\n")
    ds = read_dataset(
        path,
        DataConfig(skip_bad=True),
        label_space=("a", "b"),
        task="multiclass",
        require_min_per_class=False,
    )
    assert ds.examples == ["x", "z"] and ds.label_space == ("a", "b") and list(ds.targets) == [0, 1]
    assert ds.report.skipped == ["line 3: label 'zzz' is not one the model was trained on ('a', 'b')"]


# -- inputs for prediction (the contract) -------------------------------------------------------


def test_inputs_of_another_modality_are_refused(tmp_path):
    with pytest.raises(ContractError, match=r"takes text .* inputs are image files"):
        read_text_inputs(["cat.jpg", "dog.png"])
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / "imgs" / f"{i}.wav").write_bytes(b"RIFF")
    with pytest.raises(ContractError, match="holds audio files"):
        read_text_inputs(tmp_path / "imgs")


def test_missing_text_column_names_expected_column(tmp_path):
    path = write(tmp_path, "in.csv", "body,other\nhello,1\n")
    with pytest.raises(ContractError, match=r"expected a text column 'text'.*\['body', 'other'\]"):
        read_text_inputs(path, text_col="text")


def test_non_text_inputs_name_the_item():
    with pytest.raises(ContractError, match="input 1 is int"):
        read_text_inputs(["fine", 3])


def test_txt_inputs_one_per_line(tmp_path):
    path = write(tmp_path, "in.txt", "first text\n\nsecond, with comma\n")
    assert read_text_inputs(path) == ["first text", "second, with comma"]


# -- splits ------------------------------------------------------------------------------------


def test_holdout_is_stratified_disjoint_and_seeded():
    texts = [f"t{i}" for i in range(200)]
    labels = ["a"] * 150 + ["b"] * 50
    ds = read_text_dataset(texts, labels=labels)
    keep, out, how = holdout(ds, 0.2, seed=3, name="test")
    assert set(keep).isdisjoint(out) and len(keep) + len(out) == 200 and how == "stratified"
    assert np.array_equal(out, holdout(ds, 0.2, seed=3, name="test")[1])
    assert ds.subset(out).class_counts() == {"a": 30, "b": 10}


def test_holdout_keeps_copies_of_one_text_on_one_side():
    # every text has a trivial variant (case, punctuation, spacing, a full-width letter)
    base = [f"question number {i} ?" for i in range(60)]
    variants = [t.upper().replace(" ?", "?") for t in base[:30]] + [
        f"Ｑuestion  number {i}" for i in range(30, 60)
    ]
    labels = ["a" if i % 3 else "b" for i in range(60)]
    ds = read_text_dataset(base + variants, labels=labels + labels)
    for seed in range(5):
        _, out, how = holdout(ds, 0.2, seed=seed, name="test")
        assert how == "stratified, duplicate-grouped"
        for i in range(60):  # text i and its variant (row 60 + i) on the same side
            assert (i in out) == (60 + i in out)
        assert 20 <= len(out) <= 28


def test_holdout_never_divides_a_users_group():
    ds = read_text_dataset([f"clip {i}" for i in range(60)], labels=[f"d{i % 3}" for i in range(60)])
    ds.groups = np.array([f"speaker{i % 6}" for i in range(60)])
    keep, out, _ = holdout(ds, 0.2, seed=0, name="test")
    assert set(ds.groups[out]).isdisjoint(ds.groups[keep]) and len(set(ds.groups[out])) == 1


def test_identical_image_files_are_one_group(tmp_path):
    from PIL import Image

    from graft.data.splits import leakage_groups

    for k, colour in enumerate(["red", "blue", "green", "red"]):
        Image.new("RGB", (8, 8), colour).save(tmp_path / f"{k}.png")
    ds = read_dataset([str(tmp_path / f"{k}.png") for k in range(4)], labels=["x", "y", "x", "y"])
    groups = leakage_groups(ds)
    assert groups is not None and groups[0] == groups[3] and len(set(groups.tolist())) == 3


def test_positional_text_column_from_headerless_training_data(tmp_path):
    headerless = write(tmp_path, "in.tsv", "ham\thello there\nspam\twin a prize now\nham\tok\n")
    assert read_text_inputs(headerless, text_col="1") == ["hello there", "win a prize now", "ok"]
    named = write(tmp_path, "in.csv", "id,text\n1,hello there\n")
    assert read_text_inputs(named, text_col="1") == ["hello there"]


def test_group_col_keeps_each_speaker_on_one_side(tmp_path):
    from graft.protocols import make_protocol

    lines = ["text,label,speaker"] + [f"clip number {i},d{i % 3},s{i % 6}" for i in range(90)]
    path = write(tmp_path, "clips.csv", "\n".join(lines) + "\n")
    ds = read_dataset(path, DataConfig(group_col="speaker"))
    assert sorted(set(ds.groups)) == [f"s{k}" for k in range(6)]
    p = make_protocol(ds, seed=0, estimate="holdout")
    train_speakers = {ds.groups[ds.examples.index(t)] for t in p.pool.examples}
    test_speakers = {ds.groups[ds.examples.index(t)] for t in p.test.examples}
    assert train_speakers.isdisjoint(test_speakers) and test_speakers
    for tr, va in p.folds:
        assert set(p.pool.groups[tr]).isdisjoint(p.pool.groups[va])
    with pytest.raises(DataError, match="no group column 'nope'"):
        read_dataset(path, DataConfig(group_col="nope"))
    with pytest.raises(DataError, match="groups come from a column"):
        read_dataset(["a", "b", "c", "d"], DataConfig(group_col="speaker"), labels=["x", "y", "x", "y"])
